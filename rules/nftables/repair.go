package nftables

import (
	"context"
	"fmt"
)

// Repair rebuilds pasvgate's tables if they were deleted from outside
// (`nft flush ruleset`, a firewall reload whose file starts with it),
// with this process's live mappings and interceptions, as Install does
// when it meets the missing table, and reports whether it rebuilt any.
// pasvgate run calls it periodically, before it checks the host
// firewall's accept (rules/hostfw), so that transfers in flight resume
// without waiting for the next Install: their NAT runs in the kernel's
// nat hooks, which went with the last nat chain. Before Setup, or after
// Flush, it does nothing.
func (b *Backend) Repair(ctx context.Context) (bool, error) {
	if err := b.lock(ctx); err != nil {
		return false, fmt.Errorf("repairing: %w", err)
	}
	defer b.unlock()
	if !b.setUp {
		return false, nil
	}
	for _, o := range b.fams {
		ok, err := b.tableExists(ctx, o)
		if err != nil {
			return false, fmt.Errorf("repairing: %w", err)
		}
		if !ok {
			// rebuild puts back every missing table, o's first.
			if err := b.rebuild(ctx, o); err != nil {
				return false, fmt.Errorf("repairing: %w", err)
			}
			return true, nil
		}
	}
	return false, nil
}
