package nftables

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/intercept"
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
)

// Intercept makes the kernel hand TCP connections that arrive on ic.Iface
// for port ic.Port, and are not addressed to the gateway itself, to
// pasvgate's listener on ic.ListenPort, in every enabled family.
//
// For rules.Redirect that is one rule in ChainIntercept (see
// redirectRule):
//
//	iifname IFACE tcp dport PORT fib daddr type != local redirect to :LISTENPORT
//
// For rules.TProxy it is one rule in ChainTProxy, after the chain's
// static rules for established connections (see tproxyStaticRules and
// tproxyRule):
//
//	iifname IFACE tcp dport PORT fib daddr type != local tproxy to :LISTENPORT meta mark set meta mark | MARK accept
//
// plus, per family, the same policy routing as the iptables backend
// makes: a rule at Config.TProxyPriority, "fwmark MARK/MARK lookup
// TABLE", and in Config.TProxyTable the route "local 0.0.0.0/0 dev lo"
// (or "local ::/0 dev lo"), so that marked packets are delivered locally
// instead of forwarded. MARK is Config.TProxyMark.
//
// Each rule carries the comment "pasvgate intercept IFACE tcp/PORT ->
// :LISTENPORT (METHOD)". The chains exist only while an interception of
// their method is installed, inside pasvgate's tables, so Setup sweeps an
// earlier process's and Flush removes them with everything else.
//
// Intercept is idempotent, and calling it again puts back whatever of the
// interception was removed from outside. It tells rules apart by their
// comments, which name all that a rule does: a rule changed by hand under
// its comment is not noticed. Per family it reads the
// interception chains (one dump of the family's chains, one of each
// interception chain's rules) and, when they are not what they must be,
// rewrites them in one netlink batch, one transaction, so a packet sees
// either the old rules or the new ones; TPROXY adds a few rtnetlink calls.
// It is all or nothing: if a step fails, the steps before it are undone.
// If pasvgate's table is gone (`nft flush ruleset`), Intercept rebuilds
// it, with this process's mappings and interceptions, as Install does. An
// interception for the same interface and port as an installed one, with
// another method or listening port, is refused with rules.ErrExists, as
// only one of them could take effect. Intercept needs Setup first, as
// Install does.
func (b *Backend) Intercept(ctx context.Context, ic rules.Interception) error {
	return b.interceptor().Intercept(ctx, ic)
}

// StopIntercept removes ic, in the same steps as Intercept in the reverse
// order, leaving the other interceptions of this process in place; a
// chain and the policy routing go with the last interception that needs
// them. Removing what is not installed is not an error. It does not need
// Setup, and it never creates pasvgate's tables. It goes on after a
// failed step, so as to remove as much as it can, and reports what
// failed; Setup and Flush remove what is left.
func (b *Backend) StopIntercept(ctx context.Context, ic rules.Interception) error {
	return b.interceptor().StopIntercept(ctx, ic)
}

// interceptor is Intercept and StopIntercept over this backend's checks,
// lock and steps.
func (b *Backend) interceptor() intercept.Backend {
	return intercept.Backend{
		Check:  checkInterception,
		Lock:   b.lock,
		Unlock: b.unlock,
		Ready: func() error {
			if !b.setUp {
				return ErrNotSetUp
			}
			return nil
		},
		Set:   func() intercept.Set { return b.ics },
		Apply: b.applyIntercepts,
	}
}

// policy is the backend's TPROXY policy routing, in its network
// namespace.
func (b *Backend) policy() policyroute.Config {
	return policyConfig(b.cfg, b.nsfd)
}

func policyConfig(cfg Config, nsfd int) policyroute.Config {
	return policyroute.Config{Mark: cfg.TProxyMark, Table: cfg.TProxyTable, Priority: cfg.TProxyPriority,
		Timeout: cfg.OpTimeout, NetNS: nsfd}
}

// applyIntercepts moves the kernel's interception state from old to want
// (see intercept.Change): one rules step and one policy routing step per
// family, each bounded by Config.OpTimeout.
func (b *Backend) applyIntercepts(ctx context.Context, old, want []rules.Interception, rollback bool) error {
	var ruleSteps, policySteps []intercept.Step
	for _, o := range b.fams {
		ruleSteps = append(ruleSteps, intercept.Step{Name: o.f.name + " rules", Apply: func(ctx context.Context, ics []rules.Interception) error {
			return b.syncIntercepts(ctx, o, ics)
		}})
		policySteps = append(policySteps, intercept.Step{Name: o.f.name + " policy routing", Apply: func(_ context.Context, ics []rules.Interception) error {
			_, err := policyroute.Sync(b.policy(), o.f.v6, rules.HasTProxy(ics))
			return err
		}})
	}
	return intercept.Change(ctx, ruleSteps, policySteps, old, want, rollback, b.log)
}

// syncIntercepts makes o's interception chains what ics asks for: each
// chain whose rules' comments are not those ics wants is rewritten whole
// (created or flushed, then filled), each chain that ics does not need is
// deleted with its rules, all in one batch, and nothing is sent when
// nothing must change. If o's table is gone and ics needs a chain, the
// table is rebuilt first, as Install does; a missing table with nothing
// to install is left missing.
//
// A batch that fails because something it deletes is already gone (a
// change from outside between the reading and the writing, or a batch
// that was committed although its answer was lost) is tried once more
// from a fresh reading.
func (b *Backend) syncIntercepts(ctx context.Context, o *objects, ics []rules.Interception) error {
	want := o.interceptChains(ics, b.cfg.TProxyMark)
	needed := slices.ContainsFunc(want, func(c interceptChain) bool { return len(c.rules) > 0 })
	for attempt := 1; ; attempt++ {
		ok, err := b.tableExists(ctx, o)
		if err != nil {
			return fmt.Errorf("looking up table %s %s: %w", o.f.nft, TableName, err)
		}
		if !ok {
			if !needed {
				return nil
			}
			if !b.setUp {
				return ErrNotSetUp
			}
			if err := b.rebuild(ctx, o); err != nil {
				return fmt.Errorf("rebuilding the tables: %w", err)
			}
		}
		have, err := b.interceptState(ctx, o)
		if err != nil {
			return err
		}
		ops := interceptOps(want, have)
		if len(ops) == 0 {
			return nil
		}
		// google/nftables reads the kernel's echo of every rule it adds
		// (see addRules). The few rules of the interception chains fit
		// one echo datagram, so the chains are rewritten in one
		// transaction.
		err = b.do(ctx, func(c *nftables.Conn) error {
			for _, op := range ops {
				op(c)
			}
			return c.Flush()
		})
		if IsNotExist(err) && attempt < 2 {
			continue
		}
		if err != nil {
			return fmt.Errorf("writing the interception chains of %s %s: %w", o.f.nft, TableName, err)
		}
		return nil
	}
}

// interceptOps are the batch operations that take the interception
// chains from have (the comments of the rules of each chain that exists)
// to want.
func interceptOps(want []interceptChain, have map[string][]string) []func(c *nftables.Conn) {
	var ops []func(c *nftables.Conn)
	for _, w := range want {
		comments, exists := have[w.chain.Name]
		switch {
		case len(w.rules) == 0 && !exists:
		case len(w.rules) == 0:
			ops = append(ops, func(c *nftables.Conn) { c.DelChain(w.chain) })
		case exists && slices.Equal(comments, w.comments()):
		default:
			ops = append(ops, func(c *nftables.Conn) {
				// Adding a chain that is there changes nothing, so one
				// batch creates or empties it.
				c.AddChain(w.chain)
				c.FlushChain(w.chain)
				for _, r := range w.rules {
					c.AddRule(r)
				}
			})
		}
	}
	return ops
}

// interceptState reads which of o's interception chains exist and the
// comments of their rules, in order: one dump of the family's chains, and
// one of each interception chain's rules.
func (b *Backend) interceptState(ctx context.Context, o *objects) (map[string][]string, error) {
	have := map[string][]string{}
	err := b.do(ctx, func(c *nftables.Conn) error {
		clear(have)
		chains, err := c.ListChainsOfTableFamily(o.table.Family)
		if err != nil {
			return fmt.Errorf("listing chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != o.table.Name || (ch.Name != ChainIntercept && ch.Name != ChainTProxy) {
				continue
			}
			rs, err := c.GetRules(o.table, ch)
			if err != nil {
				return fmt.Errorf("reading chain %s: %w", ch.Name, err)
			}
			comments := []string{}
			for _, r := range rs {
				s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				comments = append(comments, s)
			}
			have[ch.Name] = comments
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", o.f.nft, TableName, err)
	}
	return have, nil
}

// writeIntercepts adds o's interception chains for ics to a table that
// build has just made, in one batch.
func (b *Backend) writeIntercepts(ctx context.Context, o *objects, ics []rules.Interception) error {
	err := b.do(ctx, func(c *nftables.Conn) error {
		for _, w := range o.interceptChains(ics, b.cfg.TProxyMark) {
			if len(w.rules) == 0 {
				continue
			}
			c.AddChain(w.chain)
			c.FlushChain(w.chain)
			for _, r := range w.rules {
				c.AddRule(r)
			}
		}
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("adding %d interceptions: %w", len(ics), err)
	}
	return nil
}

// hasInterceptChains reports whether any of pasvgate's tables holds an
// interception chain, for Setup's log.
func (b *Backend) hasInterceptChains(ctx context.Context) bool {
	for _, o := range b.fams {
		if ok, err := b.tableExists(ctx, o); err != nil || !ok {
			continue
		}
		if have, err := b.interceptState(ctx, o); err == nil && len(have) > 0 {
			return true
		}
	}
	return false
}

// AvailableIntercept reports whether the kernel of the calling process's
// network namespace can run this backend's interception by method
// (rules.Redirect or rules.TProxy), and why not: base chains of its type
// and every expression its rules use (fib and redir; socket and tproxy),
// in both families. Available does not check these, as a gateway in
// reverse mode needs none of them.
//
// It needs CAP_NET_ADMIN. Like Available, it builds the chains in a table
// of its own ("pasvgate-check-PID") and deletes that table in the same
// batch, so it touches neither pasvgate's tables nor anybody else's.
func AvailableIntercept(method string) error {
	return availableIntercept(0, method, false)
}

// availableIntercept is AvailableIntercept in the network namespace nsfd
// (0: the calling thread's), with IPv6 skipped if noIPv6.
func availableIntercept(nsfd int, method string, noIPv6 bool) error {
	ic := rules.Interception{Iface: "lo", Port: 21, ListenPort: 2121, Method: method}
	if err := ic.Validate(); err != nil {
		return err
	}
	x, err := dial(nsfd)
	if err != nil {
		return fmt.Errorf("nftables interception unavailable: %w", err)
	}
	defer x.close()
	if err := x.nl.SetDeadline(time.Now().Add(DefaultOpTimeout)); err != nil {
		return fmt.Errorf("nftables interception unavailable: %w", err)
	}
	fams := []*family{fam4, fam6}
	if noIPv6 {
		fams = fams[:1]
	}
	for _, f := range fams {
		o := newObjects(f, fmt.Sprintf("%s-check-%d", TableName, os.Getpid()), time.Second)
		x.c.AddTable(o.table)
		for _, w := range o.interceptChains([]rules.Interception{ic}, DefaultTProxyMark) {
			if len(w.rules) == 0 {
				continue
			}
			x.c.AddChain(w.chain)
			for _, r := range w.rules {
				x.c.AddRule(r)
			}
		}
		x.c.DelTable(o.table)
		if err := x.c.Flush(); err != nil {
			return fmt.Errorf("nftables interception unavailable: %s %s: %w", f.name, method, err)
		}
	}
	return nil
}
