package nftables

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// ipsDstNAT is IPS_DST_NAT, the conntrack status bit of a DNATed
// connection: `ct status dnat`.
const ipsDstNAT = 1 << 5

// ForwardBlockers names the nf_tables forward chains in the calling
// process's network namespace that would drop the data connections this
// backend admits, since nothing in pasvgate's own tables can override
// them (see the package doc, "The host's firewall"): a base chain on the
// forward hook, of family ip, ip6 or inet and in a table other than
// pasvgate's, whose policy is drop and that has no rule of its own that
// accepts connections carrying mark (any of its bits), or every DNATed
// connection. Those rules are recognised in the forms the README gives,
// native (`ct mark and MARK == MARK accept`, `ct status dnat accept`) or
// iptables-nft's (`-m connmark --mark MARK/MARK -j ACCEPT`).
//
// It reads the ruleset and changes nothing. It is a heuristic for a choice
// and a warning, not a proof: a policy-accept chain that ends in an
// unconditional drop, or an accept further down behind a jump, is not
// seen; and iptables-legacy's chains are not nf_tables at all, so the
// caller checks those itself.
func ForwardBlockers(mark uint32) ([]string, error) {
	return forwardBlockers(0, mark)
}

func forwardBlockers(nsfd int, mark uint32) ([]string, error) {
	x, err := dial(nsfd)
	if err != nil {
		return nil, err
	}
	defer x.close()
	if err := x.nl.SetDeadline(time.Now().Add(DefaultOpTimeout)); err != nil {
		return nil, err
	}
	chains, err := x.c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward ||
			ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop || ch.Table == nil ||
			ch.Table.Name == TableName {
			continue
		}
		fam, ok := map[nftables.TableFamily]string{
			nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6", nftables.TableFamilyINet: "inet",
		}[ch.Table.Family]
		if !ok {
			continue // bridge, arp, netdev: not on a routed packet's path
		}
		rs, err := x.c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("listing rules of %s %s %s: %w", fam, ch.Table.Name, ch.Name, err)
		}
		if slices.ContainsFunc(rs, func(r *nftables.Rule) bool { return acceptsMark(r.Exprs, mark) }) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %s", fam, ch.Table.Name, ch.Name))
	}
	slices.Sort(out)
	return out, nil
}

// acceptsMark reports whether a rule's expressions end in accept after
// testing the conntrack mark for a bit of mark, or the DNAT status bit.
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
