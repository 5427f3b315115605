package iptables

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TPROXY leaves an intercepted packet addressed to the server, so the
// routing decision would forward it. The policy routing below makes every
// packet that carries Config.TProxyMark look up Config.TProxyTable, whose
// only route says that every address is local: the packet goes up the
// local stack to the transparent socket TPROXY chose.
//
// It is made over netlink (rtnetlink), in the network namespace of the
// calling thread, as the iptables binaries are run there too.

// checkTProxyConfig refuses a table or priority that would not work or
// would take over someone else's: the reserved tables (0 unspec, 253
// default, 254 main, 255 local), and priorities outside 1-32765 (0 is the
// local table's rule, and from 32766 on the main table would have routed
// the packet already).
func checkTProxyConfig(cfg Config) error {
	switch {
	case cfg.TProxyTable < 1 || cfg.TProxyTable > 1<<31-1 ||
		cfg.TProxyTable >= unix.RT_TABLE_DEFAULT && cfg.TProxyTable <= unix.RT_TABLE_LOCAL:
		return fmt.Errorf("TProxyTable %d: want a routing table number other than 253-255", cfg.TProxyTable)
	case cfg.TProxyPriority < 1 || cfg.TProxyPriority > 32765:
		return fmt.Errorf("TProxyPriority %d: want 1-32765", cfg.TProxyPriority)
	}
	return nil
}

// maxDumpRetries bounds the retries of a netlink dump that the kernel
// interrupted because the table changed under it.
const maxDumpRetries = 5

// retryDump runs a netlink dump again while the kernel reports it
// interrupted (netlink.ErrDumpInterrupted, whose partial result must not
// be trusted), a bounded number of times.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < maxDumpRetries {
			continue
		}
		return out, err
	}
}

// policyFamily is the netlink family of IPv4 or IPv6.
func policyFamily(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// policyRule is the rule "fwmark MARK/MARK lookup TABLE" at the configured
// priority. It starts from netlink.NewRule so that the fields it leaves
// unset are sent as unset, not as zero (suppress_prefixlength 0 would
// make the rule do nothing).
func (b *Backend) policyRule(v6 bool) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = policyFamily(v6)
	r.Priority = b.cfg.TProxyPriority
	r.Table = b.cfg.TProxyTable
	r.Mark = b.cfg.TProxyMark
	mask := b.cfg.TProxyMark
	r.Mask = &mask
	return r
}

// isPolicyRule reports whether r, listed at our priority and table, is
// exactly the rule policyRule makes.
func (b *Backend) isPolicyRule(r netlink.Rule) bool {
	return r.Mark == b.cfg.TProxyMark && r.Mask != nil && *r.Mask == b.cfg.TProxyMark &&
		!r.Invert && r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" && r.Goto < 0
}

// localRoute is the route "local 0.0.0.0/0 dev lo" (or ::/0) in the
// configured table.
func (b *Backend) localRoute(v6 bool, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if v6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    policyFamily(v6),
		Table:     b.cfg.TProxyTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		LinkIndex: lo,
		Dst:       dst,
	}
}

// isLocalRoute reports whether r, listed in our table, is a route that
// localRoute makes: pasvgate's, whatever else is in the table.
func isLocalRoute(r netlink.Route, lo int) bool {
	if r.Type != unix.RTN_LOCAL || r.LinkIndex != lo || r.Dst == nil {
		return false
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// syncPolicy makes one family's TPROXY policy routing present (on) or
// absent: exactly one rule at Config.TProxyPriority looking up
// Config.TProxyTable with Config.TProxyMark, and the local default route
// on lo in that table. Every other rule at that priority and table is
// removed either way: pasvgate owns the pair, and such a rule can only be
// an earlier process's, made with another mark. Routes in the table other
// than the local default on lo are left alone. It reports how many rules
// and routes it removed.
func (b *Backend) syncPolicy(v6 bool, on bool) (removed int, err error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return 0, fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	// A stuck netlink socket must fail the call, not hang it.
	if err := h.SetSocketTimeout(b.cfg.ExecTimeout); err != nil {
		return 0, fmt.Errorf("setting the netlink timeout: %w", err)
	}
	fam := policyFamily(v6)
	lo, err := h.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("finding lo: %w", err)
	}
	loIdx := lo.Attrs().Index

	filter := netlink.NewRule()
	filter.Table, filter.Priority = b.cfg.TProxyTable, b.cfg.TProxyPriority
	rs, err := retryDump(func() ([]netlink.Rule, error) {
		return h.RuleListFiltered(fam, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	})
	if err != nil {
		return 0, fmt.Errorf("listing policy routing rules: %w", err)
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(fam, &netlink.Route{Table: b.cfg.TProxyTable}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("listing routes of table %d: %w", b.cfg.TProxyTable, err)
	}

	// On: the route before the rule, so that the rule never sends a
	// packet to an empty table. Off: the rule first.
	syncRoute := func() error {
		have := false
		for _, r := range routes {
			if !isLocalRoute(r, loIdx) {
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
			if err := h.RouteAdd(b.localRoute(v6, loIdx)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding the local route to table %d: %w", b.cfg.TProxyTable, err)
			}
		}
		return nil
	}
	syncRule := func() error {
		have := false
		for _, r := range rs {
			if on && !have && b.isPolicyRule(r) {
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
			if err := h.RuleAdd(b.policyRule(v6)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding policy routing rule fwmark %s lookup %d: %w", markArg(b.cfg.TProxyMark), b.cfg.TProxyTable, err)
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
