package hostfw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
)

// ipsDstNAT is IPS_DST_NAT, the conntrack status bit of a DNATed
// connection: `ct status dnat`.
const ipsDstNAT = 1 << 5

// ownTable is the nftables backend's table (rules/nftables.TableName),
// which is not the host's firewall.
const ownTable = "pasvgate"

// families are the nf_tables families whose forward hook a routed packet
// passes; bridge, arp and netdev chains are not on its path.
var families = map[nftables.TableFamily]string{
	nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6", nftables.TableFamilyINet: "inet",
}

// nftConn is a netlink connection to nf_tables in the calling thread's
// network namespace, with its socket caught to bound every call.
type nftConn struct {
	c  *nftables.Conn
	nl *netlink.Conn
}

func dialNFT(timeout time.Duration) (*nftConn, error) {
	x := &nftConn{}
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(nl *netlink.Conn) error {
		x.nl = nl
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink socket: %w", err)
	}
	x.c = c
	if x.nl == nil {
		x.close()
		return nil, errors.New("opening nftables netlink socket: no socket")
	}
	if err := x.nl.SetDeadline(time.Now().Add(timeout)); err != nil {
		x.close()
		return nil, fmt.Errorf("setting the netlink deadline: %w", err)
	}
	return x, nil
}

func (x *nftConn) close() { _ = x.c.CloseLasting() }

// isIptablesNFT reports whether an nf_tables chain is iptables-nft's:
// iptables-nft names its tables after the x_tables ones and its base
// chains after the built-in chains, in upper case, in family ip or ip6.
// Native rulesets use inet and lower case by convention; a hand-made
// "ip filter FORWARD" would be taken for iptables-nft's, and written with
// iptables-nft, which reads it fine.
func isIptablesNFT(t *nftables.Table, chain string) bool {
	return (t.Family == nftables.TableFamilyIPv4 || t.Family == nftables.TableFamilyIPv6) &&
		t.Name == "filter" && chain == "FORWARD"
}

// readNFT returns the nf_tables base chains on the forward hook, of
// families ip, ip6 and inet, outside pasvgate's own table.
func (x *nftConn) readNFT(mark uint32) ([]Chain, error) {
	chains, err := x.c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []Chain
	for _, ch := range chains {
		if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward || ch.Table == nil || ch.Table.Name == ownTable {
			continue
		}
		fam, ok := families[ch.Table.Family]
		if !ok {
			continue
		}
		c := Chain{Kind: Native, Family: fam, Table: ch.Table.Name, Name: ch.Name,
			Drops: ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop}
		if isIptablesNFT(ch.Table, ch.Name) {
			c.Kind = IptablesNFT
		}
		rs, err := x.c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("listing rules of %s: %w", c, err)
		}
		for _, r := range rs {
			switch {
			case c.Kind == Native && isOurs(r):
				c.Ours = c.Ours || acceptsMark(r.Exprs, mark)
			case c.Kind == IptablesNFT && jumpsTo(r.Exprs, ChainName):
				c.Ours = c.Ours || x.ownChainAccepts(ch.Table, mark)
			case acceptsMark(r.Exprs, mark):
				c.Accepts = true
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// ownChainAccepts reports whether iptables-nft's ChainName in t holds an
// accept of mark.
func (x *nftConn) ownChainAccepts(t *nftables.Table, mark uint32) bool {
	rs, err := x.c.GetRules(t, &nftables.Chain{Name: ChainName, Table: t})
	if err != nil {
		return false
	}
	return slices.ContainsFunc(rs, func(r *nftables.Rule) bool { return acceptsMark(r.Exprs, mark) })
}

// isOurs reports whether a native rule carries Comment.
func isOurs(r *nftables.Rule) bool {
	s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	return ok && s == Comment
}

// jumpsTo reports whether a rule ends in a jump or goto to chain.
func jumpsTo(es []expr.Any, chain string) bool {
	if len(es) == 0 {
		return false
	}
	v, ok := es[len(es)-1].(*expr.Verdict)
	return ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain == chain
}

// acceptsMark reports whether a rule's expressions end in accept after
// testing the conntrack mark for a bit of mark, or the DNAT status bit,
// in the native forms (`ct mark and MARK == MARK accept`, `ct status dnat
// accept`) or iptables-nft's (`-m connmark --mark MARK/MARK -j ACCEPT`).
// What else the rule tests is not looked at.
func acceptsMark(es []expr.Any, mark uint32) bool {
	if len(es) == 0 {
		return false
	}
	if v, ok := es[len(es)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictAccept {
		return false
	}
	// The key loaded into register 1 before a mask: ct mark or ct status.
	var key expr.CtKey = 0xffffffff
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Ct:
			if !e.SourceRegister {
				key = e.Key
			}
		case *expr.Bitwise:
			if len(e.Mask) != 4 {
				continue
			}
			m := binary.NativeEndian.Uint32(e.Mask)
			if (key == expr.CtKeyMARK && m&mark != 0) || (key == expr.CtKeySTATUS && m&ipsDstNAT != 0) {
				return true
			}
		case *expr.Match:
			// xt_connmark_mtinfo1: mark, mask (host order), invert.
			if u, ok := e.Info.(*xt.Unknown); ok && e.Name == "connmark" && len(*u) >= 9 {
				b := []byte(*u)
				if binary.NativeEndian.Uint32(b[4:])&mark != 0 && b[8] == 0 {
					return true
				}
			}
		}
	}
	return false
}

// legacyTableExists reports whether iptables-legacy's filter table exists
// in the calling thread's network namespace, for IPv6 if v6. Listing a
// table that does not exist would create it (and hook it into the
// stack), so nothing is asked of iptables-legacy unless it is there. The
// file is missing when the kernel has no ip_tables loaded; it is mode 0440
// root, so reading it takes CAP_DAC_READ_SEARCH, which an error says.
func legacyTableExists(v6 bool) (bool, error) {
	name := "/proc/thread-self/net/ip_tables_names"
	if v6 {
		name = "/proc/thread-self/net/ip6_tables_names"
	}
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the iptables-legacy tables: %w", err)
	}
	return strings.Contains("\n"+string(b), "\nfilter\n"), nil
}

// readLegacy reads `iptables-legacy -S FORWARD` (lines) into a Chain of
// family fam; own is `-S PASVGATE-HOSTFW`, or nil if the chain does not
// exist.
func readLegacy(fam string, lines, own []string, mark uint32) Chain {
	c := Chain{Kind: IptablesLegacy, Family: fam, Table: "filter", Name: "FORWARD",
		Drops: slices.Contains(lines, "-P FORWARD DROP")}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "-A FORWARD ") && strings.HasSuffix(l, " -j "+ChainName):
			c.Ours = c.Ours || slices.ContainsFunc(own, func(l string) bool { return legacyAccepts(l, ChainName, mark) })
		case legacyAccepts(l, "FORWARD", mark):
			c.Accepts = true
		}
	}
	return c
}

// legacyAccepts reads one line of `iptables -S`: a rule appended to
// chain that accepts connections whose conntrack mark has a bit of mark
// (`-m connmark --mark X/M`) or every DNATed connection (`--ctstate
// DNAT`), not negated.
func legacyAccepts(l, chain string, mark uint32) bool {
	f := strings.Fields(l)
	if len(f) < 2 || f[0] != "-A" || f[1] != chain || !strings.HasSuffix(l, "-j ACCEPT") || strings.Contains(l, " ! ") {
		return false
	}
	for i := 2; i+1 < len(f); i++ {
		switch f[i] {
		case "--ctstate":
			if strings.Contains(","+f[i+1]+",", ",DNAT,") {
				return true
			}
		case "--mark":
			if f[i-1] != "connmark" {
				continue
			}
			_, m, ok := strings.Cut(f[i+1], "/")
			if !ok {
				m = "0xffffffff"
			}
			if v, err := strconv.ParseUint(m, 0, 32); err == nil && uint32(v)&mark != 0 {
				return true
			}
		}
	}
	return false
}
