// Package policyroute makes and removes the policy routing that TPROXY
// interception needs, for both of pasvgate's kernel backends
// (rules/iptables and rules/nftables), so that the two install exactly the
// same routing and each can sweep what the other left.
//
// TPROXY leaves an intercepted packet addressed to the server, so the
// routing decision would forward it. The policy routing made here sends
// every packet that carries Config.Mark to Config.Table, whose only route
// says that every address is local: the packet goes up the local stack to
// the transparent socket TPROXY chose.
//
// Everything is done over rtnetlink, in the network namespace of
// Config.NetNS or of the calling thread.
package policyroute

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults shared by both backends. An operator's host firewall and
// routing are written against them, so both backends use the same ones.
const (
	// DefaultMark is bit 29 of the packet mark. It is a bit of its own,
	// next to the backends' default conntrack mark (bit 28), so that a
	// rule that copies conntrack marks into packet marks (CONNMARK
	// --restore-mark, `meta mark set ct mark`) cannot make a packet look
	// intercepted, and it stays clear of the bits that common neighbours
	// keep in marks (kube-proxy 0x4000 and 0x8000, Cilium 0x0f00-0xff00,
	// Tailscale 0xff0000, mwan3 0x3f00).
	DefaultMark uint32 = 0x20000000
	// DefaultTable is a routing table number that iproute2 does not name
	// and that the common neighbours do not use (Tailscale 52, Cilium
	// 2004 and 2005, wg-quick 51820).
	DefaultTable = 2121
	// DefaultPriority is before the main table (32766) and before the
	// rules that Tailscale (5210 and up) and most VPN clients add, so
	// that an intercepted packet is delivered locally whatever they
	// route.
	DefaultPriority = 2121
)

// Config names pasvgate's policy routing: the rule "fwmark Mark/Mark
// lookup Table" at Priority, and the route "local 0.0.0.0/0 dev lo" (or
// "local ::/0 dev lo") in Table.
type Config struct {
	// Mark is the packet mark bit (or bits) that interception sets.
	Mark uint32
	// Table holds the local default routes. Those routes (type local,
	// default destination, on lo) are pasvgate's; anything else in the
	// table is left alone.
	Table int
	// Priority is the priority of the rule. Every rule at this priority
	// that looks up Table is pasvgate's.
	Priority int
	// Timeout bounds every netlink call, so that a stuck socket is a
	// failed call, not a hang.
	Timeout time.Duration
	// NetNS is a file descriptor of the network namespace to work in,
	// which the caller keeps open; 0 is the calling thread's.
	NetNS int
}

// Check refuses a table or priority that would not work or would take
// over someone else's: the reserved tables (0 unspec, 253 default, 254
// main, 255 local), and priorities outside 1-32765 (0 is the local
// table's rule, and from 32766 on the main table would have routed the
// packet already). The messages name the backends' Config fields.
func (c Config) Check() error {
	switch {
	case c.Table < 1 || c.Table > 1<<31-1 ||
		c.Table >= unix.RT_TABLE_DEFAULT && c.Table <= unix.RT_TABLE_LOCAL:
		return fmt.Errorf("TProxyTable %d: want a routing table number other than 253-255", c.Table)
	case c.Priority < 1 || c.Priority > 32765:
		return fmt.Errorf("TProxyPriority %d: want 1-32765", c.Priority)
	}
	return nil
}

// maxDumpRetries bounds the retries of a netlink dump that the kernel
// interrupted because the table changed under it.
const maxDumpRetries = 5

// RetryDump runs a netlink dump again while the kernel reports it
// interrupted (netlink.ErrDumpInterrupted, whose partial result must not
// be trusted), a bounded number of times.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < maxDumpRetries {
			continue
		}
		return out, err
	}
}

// family is the netlink family of IPv4 or IPv6.
func family(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// rule is "fwmark MARK/MARK lookup TABLE" at the configured priority. It
// starts from netlink.NewRule so that the fields it leaves unset are sent
// as unset, not as zero (suppress_prefixlength 0 would make the rule do
// nothing).
func (c Config) rule(v6 bool) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family(v6)
	r.Priority = c.Priority
	r.Table = c.Table
	r.Mark = c.Mark
	mask := c.Mark
	r.Mask = &mask
	return r
}

// isRule reports whether r, listed at our priority and table, is exactly
// the rule that rule makes.
func (c Config) isRule(r netlink.Rule) bool {
	return r.Mark == c.Mark && r.Mask != nil && *r.Mask == c.Mark &&
		!r.Invert && r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" && r.Goto < 0
}

// route is "local 0.0.0.0/0 dev lo" (or ::/0) in the configured table.
func (c Config) route(v6 bool, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if v6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    family(v6),
		Table:     c.Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		LinkIndex: lo,
		Dst:       dst,
	}
}

// isRoute reports whether r, listed in our table, is a route that route
// makes: pasvgate's, whatever else is in the table.
func isRoute(r netlink.Route, lo int) bool {
	if r.Type != unix.RTN_LOCAL || r.LinkIndex != lo || r.Dst == nil {
		return false
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// handle opens an rtnetlink handle in the configured namespace.
func (c Config) handle() (*netlink.Handle, error) {
	if c.NetNS != 0 {
		return netlink.NewHandleAt(netns.NsHandle(c.NetNS), unix.NETLINK_ROUTE)
	}
	return netlink.NewHandle(unix.NETLINK_ROUTE)
}

// Sync makes one family's policy routing present (on) or absent: exactly
// one rule at Priority looking up Table with Mark, and the local default
// route on lo in Table. Every other rule at that priority and table is
// removed either way: pasvgate owns the pair, and such a rule can only be
// an earlier process's, made with another mark (or by the other backend).
// Routes in the table other than the local default on lo are left alone.
// It reports how many rules and routes it removed.
//
// Turning on, the route goes in before the rule, so that the rule never
// sends a packet to an empty table; turning off, the rule goes first.
func Sync(c Config, v6, on bool) (removed int, err error) {
	h, err := c.handle()
	if err != nil {
		return 0, fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	if c.Timeout > 0 {
		if err := h.SetSocketTimeout(c.Timeout); err != nil {
			return 0, fmt.Errorf("setting the netlink timeout: %w", err)
		}
	}
	fam := family(v6)
	lo, err := h.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("finding lo: %w", err)
	}
	loIdx := lo.Attrs().Index

	filter := netlink.NewRule()
	filter.Table, filter.Priority = c.Table, c.Priority
	rs, err := RetryDump(func() ([]netlink.Rule, error) {
		return h.RuleListFiltered(fam, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	})
	if err != nil {
		return 0, fmt.Errorf("listing policy routing rules: %w", err)
	}
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(fam, &netlink.Route{Table: c.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("listing routes of table %d: %w", c.Table, err)
	}

	syncRoute := func() error {
		have := false
		for _, r := range routes {
			if !isRoute(r, loIdx) {
				continue
			}
			if on && !have {
				have = true
				continue
			}
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("deleting route %s: %w", r, err)
			}
			removed++
		}
		if on && !have {
			if err := h.RouteAdd(c.route(v6, loIdx)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding the local route to table %d: %w", c.Table, err)
			}
		}
		return nil
	}
	syncRule := func() error {
		have := false
		for _, r := range rs {
			if on && !have && c.isRule(r) {
				have = true
				continue
			}
			del := netlink.NewRule()
			del.Family, del.Priority, del.Table, del.Mark, del.Mask = fam, r.Priority, r.Table, r.Mark, r.Mask
			if err := h.RuleDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("deleting policy routing rule %s: %w", r, err)
			}
			removed++
		}
		if on && !have {
			if err := h.RuleAdd(c.rule(v6)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding policy routing rule fwmark 0x%x/0x%x lookup %d: %w", c.Mark, c.Mark, c.Table, err)
			}
		}
		return nil
	}
	if on {
		if err := syncRoute(); err != nil {
			return removed, err
		}
		return removed, syncRule()
	}
	if err := syncRule(); err != nil {
		return removed, err
	}
	return removed, syncRoute()
}
