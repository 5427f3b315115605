package nftables

import (
	"fmt"
	"os"
	"time"
)

// Available reports whether the kernel of the calling process's network
// namespace can run this backend, and why not: nf_tables, nat chains,
// maps with timeouts and concatenated keys, and every expression the
// rules use, in both families. `pasvgate run` picks this backend by
// default when Available returns nil, and the iptables backend otherwise.
//
// It needs CAP_NET_ADMIN. It builds pasvgate's whole ruleset in a table
// of its own ("pasvgate-check-PID") and deletes that table in the same
// batch, once per rule: the kernel checks everything and commits nothing
// anyone can see, so it touches neither pasvgate's tables nor anybody
// else's.
func Available() error {
	return available(0, false)
}

// available is Available in the network namespace nsfd (0: the calling
// thread's), with IPv6 skipped if noIPv6.
func available(nsfd int, noIPv6 bool) error {
	x, err := dial(nsfd)
	if err != nil {
		return fmt.Errorf("nftables backend unavailable: %w", err)
	}
	defer x.close()
	if err := x.nl.SetDeadline(time.Now().Add(DefaultOpTimeout)); err != nil {
		return fmt.Errorf("nftables backend unavailable: %w", err)
	}
	name := fmt.Sprintf("%s-check-%d", TableName, os.Getpid())
	fams := []*family{fam4, fam6}
	if noIPv6 {
		fams = fams[:1]
	}
	for _, f := range fams {
		o := newObjects(f, name, time.Second)
		// One rule per batch, for the reason addRules gives.
		for _, r := range o.rules(DefaultCtMark) {
			x.c.AddTable(o.table)
			for _, s := range o.sets() {
				if err := x.c.AddSet(s, nil); err != nil {
					return fmt.Errorf("nftables backend unavailable: %w", err)
				}
			}
			for _, ch := range o.chains() {
				x.c.AddChain(ch)
			}
			x.c.AddRule(r)
			x.c.DelTable(o.table)
			if err := x.c.Flush(); err != nil {
				return fmt.Errorf("nftables backend unavailable: %s chain %s: %w", f.name, r.Chain.Name, err)
			}
		}
	}
	return nil
}
