package iptables

import (
	"context"
	"fmt"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/intercept"
)

// checkInterception is rules.Interception.Validate plus what this backend
// needs of an interface name to write it into iptables-restore input.
func checkInterception(ic rules.Interception) error {
	if err := ic.Validate(); err != nil {
		return err
	}
	if !restoreSafeIface(ic.Iface) {
		return fmt.Errorf("%w: interface name %q: the iptables backend takes no quote, backslash, '!' or '#', nor a leading '-'", rules.ErrInvalid, ic.Iface)
	}
	return nil
}

// Intercept makes the kernel hand TCP connections that arrive on ic.Iface
// for port ic.Port, and are not addressed to the gateway itself, to
// pasvgate's listener on ic.ListenPort, in every enabled family.
//
// For rules.Redirect that is one rule in ChainIntercept (nat), which nat
// PREROUTING jumps to:
//
//	-i IFACE -p tcp -m tcp --dport PORT -m addrtype ! --dst-type LOCAL -m comment --comment "pasvgate intercept" -j REDIRECT --to-ports LISTENPORT
//
// For rules.TProxy it is one rule in ChainTProxy (mangle), which mangle
// PREROUTING jumps to, after the chain's static rules (see
// tproxyStaticRules: per intercepted port, "-p tcp -m multiport --ports
// PORT -m socket --transparent ... -j MARK --set-xmark MARK/MARK", then
// "-p tcp -m mark --mark MARK/MARK ... -j ACCEPT"):
//
//	-i IFACE -p tcp -m tcp --dport PORT -m addrtype ! --dst-type LOCAL -m comment --comment "pasvgate intercept" -j TPROXY --on-port LISTENPORT --on-ip 0.0.0.0 --tproxy-mark MARK/MARK
//
// plus, per family, a policy routing rule at Config.TProxyPriority,
// "fwmark MARK/MARK lookup TABLE", and in Config.TProxyTable the route
// "local 0.0.0.0/0 dev lo" (or "local ::/0 dev lo"), so that marked packets
// are delivered locally instead of forwarded. MARK is Config.TProxyMark.
//
// The chains and their jumps exist only while an interception of their
// method is installed. Intercept is idempotent, and calling it again puts
// back whatever of the interception was removed from outside. It is all
// or nothing: if a step fails, the steps before it are undone. Per family
// it costs one iptables-save and, when something must change, one
// iptables-restore; TPROXY adds a few netlink calls. An interception for
// the same interface and port as an installed one, with another method or
// listening port, is refused with rules.ErrExists, as only one of them
// could take effect. Intercept needs Setup first, as Install does.
func (b *Backend) Intercept(ctx context.Context, ic rules.Interception) error {
	return b.interceptor().Intercept(ctx, ic)
}

// StopIntercept removes ic, in the same steps as Intercept in the reverse
// order, leaving the other interceptions of this process in place; a
// chain, its jump and the policy routing go with the last interception
// that needs them. Removing what is not installed is not an error. It
// does not need Setup. It goes on after a failed step, so as to remove as
// much as it can, and reports what failed; Setup and Flush remove what is
// left.
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

// applyIntercepts moves the kernel's interception state from old to want
// (see intercept.Change): one rules step and one policy routing step per
// family, each bounded by ExecTimeout.
func (b *Backend) applyIntercepts(ctx context.Context, old, want []rules.Interception, rollback bool) error {
	var ruleSteps, policySteps []intercept.Step
	for _, f := range b.families() {
		ruleSteps = append(ruleSteps, intercept.Step{Name: f.name + " rules", Apply: func(ctx context.Context, ics []rules.Interception) error {
			return b.syncInterceptRules(ctx, f, ics)
		}})
		policySteps = append(policySteps, intercept.Step{Name: f.name + " policy routing", Apply: func(_ context.Context, ics []rules.Interception) error {
			_, err := b.syncPolicy(f.v6, rules.HasTProxy(ics))
			return err
		}})
	}
	return intercept.Change(ctx, ruleSteps, policySteps, old, want, rollback, b.log)
}

// syncInterceptRules makes one family's interception chains and jumps
// what ics asks for: one iptables-save, and one iptables-restore when
// something must change.
func (b *Backend) syncInterceptRules(ctx context.Context, f *family, ics []rules.Interception) error {
	st, err := b.save(ctx, f)
	if err != nil {
		return fmt.Errorf("reading rules: %w", err)
	}
	text := interceptScript(st, ics, f.v6, b.cfg.TProxyMark)
	if text == "" {
		return nil
	}
	return b.restore(ctx, f, text)
}

// repairIntercept puts this process's interceptions back into one family
// after Install repaired pasvgate's chains: the firewall reload or flush
// that removed the mapping jumps will have taken the interception jump
// with it. st is what the family held before that repair, which did not
// touch the interception chains or their jumps. It costs one more
// iptables-restore only when something is missing. A failure is logged,
// not returned: the mapping itself was installed.
func (b *Backend) repairIntercept(ctx context.Context, f *family, st *saved) {
	if len(b.ics) == 0 {
		return
	}
	text := interceptScript(st, b.ics.Sorted(), f.v6, b.cfg.TProxyMark)
	if text == "" {
		return
	}
	if err := b.restore(ctx, f, text); err != nil {
		b.log.Warn("could not put the interception back; it stays off until Intercept runs again", "family", f.name, "err", err)
		return
	}
	b.log.Warn("interception was removed from outside; put it back", "family", f.name, "interceptions", len(b.ics))
}

// sweepIntercept removes the interception chains and jumps that st shows
// in one family, for Setup: an earlier process's leftovers. It costs an
// exec only when there are some.
func (b *Backend) sweepIntercept(ctx context.Context, f *family, st *saved) error {
	text := interceptScript(st, nil, f.v6, b.cfg.TProxyMark)
	if text == "" {
		return nil
	}
	b.log.Info("removing interception left by an earlier process", "family", f.name)
	return b.restore(ctx, f, text)
}
