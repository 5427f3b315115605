package iptables

import (
	"slices"
	"strconv"
	"strings"

	"github.com/pasvgate/pasvgate/rules"
)

// The chains of transparent mode's interception (see Backend.Intercept).
// Like the mapping chains they are an interface with installed systems and
// are never renamed. Unlike them they exist only while an interception of
// their method is installed, so that a gateway in reverse mode has no hook
// in the mangle table and nothing more in nat PREROUTING than before.
const (
	// ChainIntercept (nat table) holds one REDIRECT rule per interception
	// of method rules.Redirect. nat PREROUTING jumps to it.
	ChainIntercept = "PASVGATE-INTERCEPT"
	// ChainTProxy (mangle table) holds static rules that send the packets
	// of connections already handed to a transparent socket straight to
	// it (see tproxyStaticRules), then one TPROXY rule per interception of
	// method rules.TProxy. mangle PREROUTING jumps to it.
	ChainTProxy = "PASVGATE-TPROXY"
)

const tableMangle = "mangle"

// Comments of the interception rules. They carry no id: an interception is
// not a mapping, so List and the mapping sweeps never see one.
const (
	commentIntercept = commentTag + " intercept"
	commentTProxy    = commentTag + " tproxy"
)

// interceptHook is where one interception method lives: its table and
// chain, jumped to from that table's PREROUTING.
type interceptHook struct {
	method, table, chain string
}

// interceptHooks are the interception methods, in the order their tables
// are written.
var interceptHooks = []interceptHook{
	{rules.Redirect, tableNAT, ChainIntercept},
	{rules.TProxy, tableMangle, ChainTProxy},
}

func (h interceptHook) jump() jump { return jump{h.table, "PREROUTING", h.chain} }

// restoreSafeIface reports whether an interface name, already checked by
// rules.ValidIface, can be written into iptables-restore input as one bare
// token that iptables-save prints back unchanged. Linux allows quotes,
// backslashes and the like in names, but iptables-restore's tokenizer
// gives them a meaning, and iptables reads a leading '!' or '-' as
// syntax, so such names are refused rather than escaped.
func restoreSafeIface(name string) bool {
	if name == "" || name[0] == '-' || name[0] == '!' {
		return false
	}
	return !strings.ContainsAny(name, "\"'\\!#")
}

// interceptMatch is the match part of ic's rule: TCP to ic.Port arriving on
// ic.Iface, and not addressed to the gateway itself.
//
// Leaving out the gateway's own addresses (addrtype LOCAL) keeps an FTP
// server on the router reachable from the LAN and, above all, keeps a
// client from making pasvgate connect to itself: a connection to the
// router's own address would reach pasvgate with that address as its
// original destination, and pasvgate would dial it back into its own
// interception. Only forwarded connections are intercepted.
func interceptMatch(ic rules.Interception) []string {
	return []string{"-i", ic.Iface, "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(ic.Port)),
		"-m", "addrtype", "!", "--dst-type", "LOCAL",
		"-m", "comment", "--comment", commentIntercept}
}

// interceptRule is ic's one rule, in the form iptables-save prints it back.
// ic must be valid.
//
// REDIRECT rewrites the destination to the address of the interface the
// connection came in on, at ic.ListenPort; conntrack keeps the original,
// which the listener reads with SO_ORIGINAL_DST. TPROXY leaves the packet
// as it is, hands it to the transparent listener on ic.ListenPort (bound to
// the wildcard address, which --on-ip 0.0.0.0 or :: finds) and marks it so
// that the policy route delivers it locally.
func interceptRule(ic rules.Interception, v6 bool, mark uint32) rule {
	args := interceptMatch(ic)
	lport := strconv.Itoa(int(ic.ListenPort))
	if ic.Method == rules.Redirect {
		return rule{tableNAT, ChainIntercept, append(args, "-j", "REDIRECT", "--to-ports", lport)}
	}
	onIP := "0.0.0.0"
	if v6 {
		onIP = "::"
	}
	return rule{tableMangle, ChainTProxy, append(args,
		"-j", "TPROXY", "--on-port", lport, "--on-ip", onIP, "--tproxy-mark", markArg(mark))}
}

// tproxyStaticRules come first in ChainTProxy while it exists: one rule
// per port intercepted with TPROXY (ports sorted, without duplicates),
// then one more.
//
// The first kind marks every TCP packet from or to an intercepted port
// that belongs to a transparent socket (xt_socket --transparent: an
// established connection that TPROXY handed over, or one that pasvgate
// opened with IP_TRANSPARENT from a client's address) so that the policy
// route delivers it locally; listeners bound to the wildcard address are
// left out by xt_socket itself, so a new connection is never caught here.
// The port match (either end, so that it covers the replies to a
// connection pasvgate opens upstream, which come from port 21 on the other
// interface) comes first because it is cheap: without it every TCP packet
// the router forwards would cost a socket lookup, and another transparent
// proxy's connections on the router would be taken over. The last rule
// accepts what carries the mark: those packets skip the TPROXY rules,
// which would only repeat the lookup, and the rest of mangle PREROUTING,
// as TPROXY's own accept does for a connection's first packet. It matches
// the mark instead of running the socket lookup a second time.
func tproxyStaticRules(mark uint32, ports []uint16) []rule {
	var out []rule
	for _, p := range ports {
		out = append(out, rule{tableMangle, ChainTProxy, []string{"-p", "tcp", "-m", "multiport", "--ports", strconv.Itoa(int(p)),
			"-m", "socket", "--transparent",
			"-m", "comment", "--comment", commentTProxy, "-j", "MARK", "--set-xmark", markArg(mark)}})
	}
	return append(out, rule{tableMangle, ChainTProxy, []string{"-p", "tcp", "-m", "mark", "--mark", markArg(mark),
		"-m", "comment", "--comment", commentTProxy, "-j", "ACCEPT"}})
}

// interceptChainRules are the rules chain h.chain must hold for ics, in
// order; none when ics has no interception of h's method, and then the
// chain must not exist.
func interceptChainRules(h interceptHook, ics []rules.Interception, v6 bool, mark uint32) []rule {
	var out []rule
	var ports []uint16
	for _, ic := range ics {
		if ic.Method == h.method {
			out = append(out, interceptRule(ic, v6, mark))
			ports = append(ports, ic.Port)
		}
	}
	if len(out) > 0 && h.method == rules.TProxy {
		slices.Sort(ports)
		out = append(tproxyStaticRules(mark, slices.Compact(ports)), out...)
	}
	return out
}

// chainRules returns the rules of one chain as st shows them, in order.
func (st *saved) chainRules(table, chain string) []savedRule {
	t := st.tables[table]
	if t == nil {
		return nil
	}
	var out []savedRule
	for _, r := range t.rules {
		if r.chain == chain {
			out = append(out, r)
		}
	}
	return out
}

// interceptScript is the batch that makes the interception part of one
// family's rules exactly what ics asks for, whatever st (that family's
// iptables-save) shows. For each method that ics uses, its chain holds
// exactly that method's rules and its table's PREROUTING jumps to it
// exactly once; for each method that ics does not use, the chain and every
// jump to it are gone. A table is written only when it must change, and
// then in one commit, so a packet sees either the old rules or the new
// ones. It returns "" when nothing must change.
//
// A chain that must change is rewritten whole: declaring it empties it
// under --noflush, or creates it. A missing or duplicated jump is put back
// at the top of PREROUTING; one that is there is left where it is, as it
// shares the top of nat PREROUTING with the ChainDNAT jump.
//
// The same function installs (ics with the new interception), removes (ics
// without it), rolls back (the set from before), sweeps (no interceptions)
// and repairs, so that these cannot drift apart.
func interceptScript(st *saved, ics []rules.Interception, v6 bool, mark uint32) string {
	ics = slices.SortedFunc(slices.Values(ics), rules.CompareInterceptions)
	var s script
	for _, h := range interceptHooks {
		want := interceptChainRules(h, ics, v6, mark)
		tab := st.tables[h.table]
		if len(want) == 0 {
			if tab == nil {
				continue
			}
			for _, r := range tab.rules {
				if r.chain != h.chain && r.jumpsTo() == h.chain {
					s.add(h.table, "-D "+r.chain+" "+r.raw)
				}
			}
			if tab.chains[h.chain] {
				s.add(h.table, "-F "+h.chain)
				s.add(h.table, "-X "+h.chain)
			}
			continue
		}
		have := st.chainRules(h.table, h.chain)
		chainOK := st.hasChain(h.table, h.chain) && slices.EqualFunc(have, want,
			func(a savedRule, b rule) bool { return slices.Equal(a.args, b.args) })
		jr := h.jump().rule()
		n, _ := st.count(jr)
		if !chainOK {
			s.add(h.table, ":"+h.chain+" - [0:0]")
		}
		if n != 1 {
			for range n {
				s.add(h.table, jr.line("-D"))
			}
			s.add(h.table, jr.insertFirst())
		}
		if !chainOK {
			for _, r := range want {
				s.add(h.table, r.line("-A"))
			}
		}
	}
	return s.String()
}
