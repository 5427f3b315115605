package hostfw

import (
	"context"

	"github.com/pasvgate/pasvgate/rules/nftables"
)

// Choose is --backend auto on this host: it gathers the State (whether
// the kernel runs the nftables backend, and its interception with method
// if method is not empty; the host's forward chains; the tools to write
// them) and returns Decide's answer. manage is --host-firewall auto. It
// changes nothing (nftables.Available builds and drops a table no one
// sees). A forward chain it cannot read is logged and counts as none.
func (m *Manager) Choose(ctx context.Context, method string, manage bool) Decision {
	s := State{NFTables: nftables.Available(), Manage: manage, Mark: m.cfg.Mark, Tools: Tools()}
	if s.NFTables != nil {
		return Decide(s)
	}
	if method != "" {
		s.Intercept = nftables.AvailableIntercept(method)
	}
	chains, err := m.Inspect(ctx)
	if err != nil {
		m.log.Warn("could not read the host's forward chains", "err", err)
	}
	s.Chains = chains
	return Decide(s)
}

// Blocking returns the host's forward chains that would drop the
// nftables backend's data connections as they are now, for a warning
// under --host-firewall leave: Chain.Blocks, and pasvgate's accept not
// there.
func (m *Manager) Blocking(ctx context.Context) []Chain {
	chains, err := m.Inspect(ctx)
	if err != nil {
		m.log.Warn("could not read the host's forward chains", "err", err)
	}
	var out []Chain
	for _, c := range chains {
		if c.Blocks() && !c.Ours {
			out = append(out, c)
		}
	}
	return out
}
