// Package hostfw is what pasvgate knows of, and does to, the host's own
// firewall: it reads the forward chains (nf_tables over netlink, which
// covers native nftables and iptables-nft; iptables-legacy with
// `iptables-legacy -S`), decides which kernel backend `--backend auto`
// runs (Decide, a pure function, and Choose, which gathers the state it
// needs), and, for the nftables backend, keeps the one accept rule that
// lets its data connections through a forward chain that drops by
// default (Manager).
//
// Its callers are cmd/pasvgate's run (Choose, then Manager.Ensure and
// Manager.Run for as long as it serves) and `pasvgate rules flush`
// (Manager.Remove).
//
// # Why the nftables backend needs it
//
// Every base chain on a hook sees the packet, whatever table it is in; an
// accept ends only its own chain, and a drop anywhere is final. So nothing
// in pasvgate's own nftables tables can let a data connection through a
// host forward chain whose policy is drop. The nftables backend sets a
// conntrack mark bit on each connection it DNATs; an accept of that mark,
// at the top of the host's forward chain, lets those connections through
// (both directions, for their whole life) and nothing else.
//
// # What it adds to the host's firewall
//
// Only to a forward chain whose policy drops and that has no rule of its
// own accepting the mark (or every DNATed connection):
//
//   - iptables (iptables-nft, whose FORWARD is a base chain in nf_tables
//     table ip/ip6 filter, or iptables-legacy), each family: a chain of
//     pasvgate's own, ChainName, holding the accept, and one jump into it
//     at the top of FORWARD, both made with go-iptables and tagged with
//     Comment:
//
//     -A PASVGATE-HOSTFW -m connmark --mark 0x10000000/0x10000000 -m comment --comment "pasvgate host-firewall" -j ACCEPT
//     -I FORWARD 1 -m comment --comment "pasvgate host-firewall" -j PASVGATE-HOSTFW
//
//   - native nftables (any other base chain on the forward hook, of
//     family ip, ip6 or inet, for example inet filter forward): one rule at
//     its top, added over netlink, carrying Comment:
//
//     ct mark & 0x10000000 == 0x10000000 accept comment "pasvgate host-firewall"
//
// ChainName and Comment are an interface with every installed system:
// Remove finds what to delete by them, so they never change.
//
// A firewall reload (iptables-restore of a saved ruleset, nft -f) removes
// them. Manager.Run checks again periodically and puts back what is
// missing, and logs it.
package hostfw

import (
	"fmt"
	"strings"
)

// ChainName is pasvgate's own chain in the host's iptables filter table,
// jumped to from the top of FORWARD. Frozen.
const ChainName = "PASVGATE-HOSTFW"

// Comment tags every rule this package adds to the host's firewall.
// Frozen.
const Comment = "pasvgate host-firewall"

// Backend names, as --backend takes them.
const (
	Nftables = "nftables"
	Iptables = "iptables"
)

// Kind is the kind of firewall a forward chain belongs to, which decides
// how pasvgate's accept is added to it.
type Kind int

// Kinds of forward chains.
const (
	// Native is an nftables base chain on the forward hook that is not
	// iptables-nft's.
	Native Kind = iota
	// IptablesNFT is iptables-nft's FORWARD, a base chain of nf_tables
	// table ip (or ip6) filter.
	IptablesNFT
	// IptablesLegacy is iptables-legacy's FORWARD (x_tables, not
	// nf_tables).
	IptablesLegacy
)

// String names the kind, and the tool pasvgate writes it with.
func (k Kind) String() string {
	switch k {
	case IptablesNFT:
		return "iptables-nft"
	case IptablesLegacy:
		return "iptables-legacy"
	}
	return "nftables"
}

// Chain is a forward chain of the host's firewall, as read from the
// kernel.
type Chain struct {
	Kind Kind
	// Family is "ip", "ip6" or "inet".
	Family string
	Table  string
	Name   string
	// Drops: the chain's policy is drop.
	Drops bool
	// Accepts: a rule of the host's own (not pasvgate's) in the chain
	// accepts connections that carry the mark (any of its bits), or
	// every DNATed connection (`ct status dnat`, `--ctstate DNAT`).
	Accepts bool
	// Ours: pasvgate's accept is in place (for iptables, the jump and
	// the accept in ChainName).
	Ours bool
}

// String names the chain the way its own tool lists it, for logs:
// "inet filter forward", "ip filter FORWARD" (iptables-nft),
// "iptables-legacy filter FORWARD", "ip6tables-legacy filter FORWARD".
func (c Chain) String() string {
	if c.Kind == IptablesLegacy {
		bin := "iptables-legacy"
		if c.Family == "ip6" {
			bin = "ip6tables-legacy"
		}
		return fmt.Sprintf("%s %s %s", bin, c.Table, c.Name)
	}
	return fmt.Sprintf("%s %s %s", c.Family, c.Table, c.Name)
}

// Blocks reports whether the chain, left as it is, would drop the
// nftables backend's data connections without pasvgate's accept.
func (c Chain) Blocks() bool { return c.Drops && !c.Accepts }

// State is what Decide looks at.
type State struct {
	// NFTables is why the kernel cannot run the nftables backend, or nil.
	NFTables error
	// Intercept is why the kernel cannot run the nftables backend's
	// interception as --intercept asks, or nil (also when none is asked).
	Intercept error
	// Chains are the host's forward chains (Inspect).
	Chains []Chain
	// Tools says, per kind, why pasvgate could not add its accept to a
	// chain of that kind (a missing binary), or nil.
	Tools map[Kind]error
	// Manage is --host-firewall auto: pasvgate may add its accept to
	// the host's forward chains. False (leave): it never touches them.
	Manage bool
	// Mark is the conntrack mark (--connmark), for the reasons.
	Mark uint32
}

// Decision is what --backend auto runs, and why.
type Decision struct {
	// Backend is Nftables or Iptables.
	Backend string
	// Reason is a sentence for the start-up log.
	Reason string
	// Accept lists the chains that need pasvgate's accept, when Backend
	// is Nftables: Manager.Ensure adds it there.
	Accept []Chain
}

// Decide is --backend auto: nftables whenever the kernel can run it (and
// its interception, if asked for) and every forward chain that would drop
// its data connections can get pasvgate's accept, which --host-firewall
// leave forbids; iptables otherwise, whose jump into FORWARD needs no
// accept. It reads only s.
func Decide(s State) Decision {
	if s.NFTables != nil {
		return Decision{Backend: Iptables, Reason: s.NFTables.Error()}
	}
	if s.Intercept != nil {
		return Decision{Backend: Iptables, Reason: "--intercept: " + s.Intercept.Error()}
	}
	var accept []Chain
	var blocked, noTool []string
	for _, c := range s.Chains {
		if !c.Blocks() {
			continue
		}
		switch {
		case !s.Manage:
			blocked = append(blocked, c.String())
		case s.Tools[c.Kind] != nil:
			noTool = append(noTool, fmt.Sprintf("%s (%v)", c, s.Tools[c.Kind]))
		default:
			accept = append(accept, c)
		}
	}
	switch {
	case len(blocked) > 0:
		return Decision{Backend: Iptables, Reason: fmt.Sprintf(
			"the host firewall's forward chain %s drops by default and has no rule accepting conntrack mark 0x%x, "+
				"and --host-firewall leave keeps pasvgate from adding one", strings.Join(blocked, ", "), s.Mark)}
	case len(noTool) > 0:
		return Decision{Backend: Iptables, Reason: fmt.Sprintf(
			"the host firewall's forward chain %s drops by default and pasvgate cannot add its accept there",
			strings.Join(noTool, ", "))}
	case len(accept) > 0:
		names := make([]string, len(accept))
		for i, c := range accept {
			names[i] = c.String()
		}
		return Decision{Backend: Nftables, Accept: accept, Reason: fmt.Sprintf(
			"the kernel supports it; pasvgate accepts conntrack mark 0x%x at the top of the host firewall's forward chain %s",
			s.Mark, strings.Join(names, ", "))}
	}
	return Decision{Backend: Nftables, Reason: "the kernel supports it and the host firewall's forward chains let its data connections through"}
}
