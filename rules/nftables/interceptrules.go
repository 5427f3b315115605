package nftables

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
)

// The base chains of transparent mode's interception (see
// Backend.Intercept), in pasvgate's tables. Like the other names they are
// an interface with installed systems and are never renamed. Unlike the
// other chains they exist only while an interception of their method is
// installed, so that a gateway in reverse mode has nothing more on the
// prerouting hook than before.
const (
	// ChainIntercept (type nat, hook prerouting, priority dstnat - 1)
	// holds one redirect rule per interception of method
	// rules.Redirect. It runs just before the dstnat chains, the
	// iptables nat PREROUTING among them, so that the first NAT decision
	// of an intercepted connection, the one the kernel keeps, is
	// pasvgate's, as the iptables backend's jump at the top of nat
	// PREROUTING makes it.
	ChainIntercept = "intercept"
	// ChainTProxy (type filter, hook prerouting, priority mangle + 1)
	// holds the rules that send the packets of connections already
	// handed to a transparent socket straight to it (see
	// tproxyStaticRules), then one tproxy rule per interception of
	// method rules.TProxy. It runs just after the mangle chains (the
	// iptables mangle PREROUTING among them), so that a host rule there
	// that sets the whole packet mark (for multi-WAN routing, say)
	// cannot take away the mark bit that the policy route needs: in
	// nftables an accept ends only its own chain, so pasvgate's chain
	// cannot keep the later ones from running, as the iptables
	// backend's ACCEPT in mangle PREROUTING does. (Plain "tproxy" is an
	// nft keyword: nft could neither list nor load a chain named so.)
	ChainTProxy = "intercept_tproxy"
)

// Priorities of the interception chains; see ChainIntercept and
// ChainTProxy.
var (
	priorityIntercept = nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 1)
	priorityTProxy    = nftables.ChainPriorityRef(*nftables.ChainPriorityMangle + 1)
)

// commentTag starts every interception rule's comment. An interception
// rule is known by its comment, which names everything the rule does
// (see interceptComment): Intercept compares the comments in a chain
// with the ones it wants to tell whether the chain must be rewritten.
const commentTag = "pasvgate"

// interceptComment is the comment of ic's rule, as ic.String formats ic.
func interceptComment(ic rules.Interception) string {
	return commentTag + " intercept " + ic.String()
}

// checkInterception is rules.Interception.Validate plus what this backend
// needs of an interface name: one that `nft list ruleset` prints back so
// that nft loads it again as the same exact name. A quote or a backslash
// would break the quoted string, and nft reads a trailing '*' as a
// wildcard.
func checkInterception(ic rules.Interception) error {
	if err := ic.Validate(); err != nil {
		return err
	}
	if strings.ContainsAny(ic.Iface, "\"\\*") {
		return fmt.Errorf("%w: interface name %q: the nftables backend takes no quote, backslash or '*'", rules.ErrInvalid, ic.Iface)
	}
	return nil
}

// interceptChain is one interception method's base chain and the rules it
// must hold; no rules means that the chain must not exist.
type interceptChain struct {
	method string
	chain  *nftables.Chain
	rules  []*nftables.Rule
}

// comments are the comments of c's rules, in order.
func (c interceptChain) comments() []string {
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i], _ = userdata.GetString(r.UserData, userdata.TypeComment)
	}
	return out
}

// interceptChains are o's interception chains with the rules they must
// hold for ics: the redirect chain, then the tproxy chain.
func (o *objects) interceptChains(ics []rules.Interception, mark uint32) []interceptChain {
	ics = slices.SortedFunc(slices.Values(ics), rules.CompareInterceptions)
	accept := nftables.ChainPolicyAccept
	redir := &nftables.Chain{Name: ChainIntercept, Table: o.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: priorityIntercept, Policy: &accept}
	tproxy := &nftables.Chain{Name: ChainTProxy, Table: o.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: priorityTProxy, Policy: &accept}
	out := []interceptChain{{method: rules.Redirect, chain: redir}, {method: rules.TProxy, chain: tproxy}}
	var ports []uint16
	for _, ic := range ics {
		switch ic.Method {
		case rules.Redirect:
			out[0].rules = append(out[0].rules, o.redirectRule(redir, ic))
		case rules.TProxy:
			out[1].rules = append(out[1].rules, o.tproxyRule(tproxy, ic, mark))
			ports = append(ports, ic.Port)
		}
	}
	if len(ports) > 0 {
		slices.Sort(ports)
		out[1].rules = append(o.tproxyStaticRules(tproxy, mark, slices.Compact(ports)), out[1].rules...)
	}
	return out
}

// ruleComment is the user data that carries a rule's comment.
func ruleComment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// interceptMatch is the match part of ic's rule: TCP to ic.Port arriving
// on ic.Iface, and not addressed to the gateway itself:
//
//	iifname IFACE meta l4proto tcp tcp dport PORT fib daddr type != local
//
// Leaving out the gateway's own addresses keeps an FTP server on the
// router reachable from the LAN and, above all, keeps a client from
// making pasvgate connect to itself: a connection to the router's own
// address would reach pasvgate with that address as its original
// destination, and pasvgate would dial it back into its own
// interception. Only forwarded connections are intercepted.
func interceptMatch(ic rules.Interception) []expr.Any {
	// The name is compared whole, NUL-padded to IFNAMSIZ, as nft
	// encodes `iifname "lan0"`: an exact match, not a prefix.
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, ic.Iface)
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: name},
	}
	e = append(e, tcpPort(ic.Port, true)...)
	return append(e,
		&expr.Fib{Register: unix.NFT_REG_1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: unix.NFT_REG_1, Data: ne(unix.RTN_LOCAL)},
	)
}

// tcpPort is `meta l4proto tcp tcp dport PORT`, or `tcp sport PORT`.
func tcpPort(port uint16, dst bool) []expr.Any {
	off := uint32(0)
	if dst {
		off = 2
	}
	return append(tcpOnly(),
		&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

// loadPort is the port of a redirect or tproxy statement, in register 1.
func loadPort(port uint16) expr.Any {
	return &expr.Immediate{Register: unix.NFT_REG_1, Data: binaryutil.BigEndian.PutUint16(port)}
}

// setMarkAccept is `meta mark set meta mark | MARK accept`: only the
// mark's bits are set, and what carries them is done with in this chain.
func setMarkAccept(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG_1},
		// (mark & ^MARK) ^ MARK sets the bits, as nft encodes "|".
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4,
			Mask: ne(^mark), Xor: ne(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG_1, SourceRegister: true},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// redirectRule is ic's one rule in ChainIntercept:
//
//	iifname IFACE tcp dport PORT fib daddr type != local redirect to :LISTENPORT
//
// redirect rewrites the destination to the address of the interface the
// connection came in on, at ic.ListenPort; conntrack keeps the original,
// which the listener reads with SO_ORIGINAL_DST.
func (o *objects) redirectRule(ch *nftables.Chain, ic rules.Interception) *nftables.Rule {
	e := append(interceptMatch(ic), loadPort(ic.ListenPort), &expr.Redir{RegisterProtoMin: unix.NFT_REG_1})
	return &nftables.Rule{Table: o.table, Chain: ch, Exprs: e, UserData: ruleComment(interceptComment(ic))}
}

// tproxyRule is ic's one rule in ChainTProxy:
//
//	iifname IFACE tcp dport PORT fib daddr type != local tproxy to :LISTENPORT meta mark set meta mark | MARK accept
//
// tproxy leaves the packet as it is and hands it to the transparent
// listener on ic.ListenPort (bound to the wildcard address, which a
// tproxy without an address finds); the mark makes the policy route
// deliver it locally. When no transparent socket takes the packet (the
// listener is gone), the rule does not match and the packet goes on, to
// be forwarded.
func (o *objects) tproxyRule(ch *nftables.Chain, ic rules.Interception, mark uint32) *nftables.Rule {
	e := append(interceptMatch(ic), loadPort(ic.ListenPort),
		&expr.TProxy{Family: byte(o.f.proto), TableFamily: byte(o.f.tf), RegPort: unix.NFT_REG_1})
	e = append(e, setMarkAccept(mark)...)
	return &nftables.Rule{Table: o.table, Chain: ch, Exprs: e, UserData: ruleComment(interceptComment(ic))}
}

// tproxyStaticRules come first in ChainTProxy while it exists: per port
// intercepted with TPROXY (ports sorted, without duplicates), two rules,
// one for each end of the connection:
//
//	tcp dport PORT socket transparent 1 socket wildcard 0 meta mark set meta mark | MARK accept
//	tcp sport PORT socket transparent 1 socket wildcard 0 meta mark set meta mark | MARK accept
//
// They mark every TCP packet from or to an intercepted port that belongs
// to a transparent socket (an established connection that tproxy handed
// over, or one that pasvgate opened with IP_TRANSPARENT from a client's
// address, whose replies come from port 21 on the other interface) so
// that the policy route delivers it locally, and accept it, which skips
// the tproxy rules that would only repeat the lookup. `socket wildcard
// 0` leaves out listeners bound to the wildcard address, as the iptables
// socket match does by itself, so that a new connection is never caught
// here. The port match comes first because it is cheap: without it every
// TCP packet the router forwards would cost a socket lookup, and another
// transparent proxy's connections on the router would be taken over.
func (o *objects) tproxyStaticRules(ch *nftables.Chain, mark uint32, ports []uint16) []*nftables.Rule {
	var out []*nftables.Rule
	for _, p := range ports {
		for _, dst := range []bool{true, false} {
			end := "sport"
			if dst {
				end = "dport"
			}
			e := tcpPort(p, dst)
			e = append(e,
				&expr.Socket{Key: expr.SocketKeyTransparent, Register: unix.NFT_REG_1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{1}},
				&expr.Socket{Key: expr.SocketKeyWildcard, Register: unix.NFT_REG_1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{0}},
			)
			e = append(e, setMarkAccept(mark)...)
			out = append(out, &nftables.Rule{Table: o.table, Chain: ch, Exprs: e,
				UserData: ruleComment(fmt.Sprintf("%s tproxy: transparent socket, tcp %s %d", commentTag, end, p))})
		}
	}
	return out
}
