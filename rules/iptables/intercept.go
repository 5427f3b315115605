package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/pasvgate/pasvgate/rules"
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

// icString formats an interception for errors and logs.
func icString(ic rules.Interception) string {
	return fmt.Sprintf("%s tcp/%d -> :%d (%s)", ic.Iface, ic.Port, ic.ListenPort, ic.Method)
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
	if err := checkInterception(ic); err != nil {
		return err
	}
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("intercepting %s: %w", icString(ic), err)
	}
	defer b.unlock()
	if !b.setUp {
		return fmt.Errorf("intercepting %s: %w", icString(ic), ErrNotSetUp)
	}
	for o := range b.ics {
		if o != ic && o.Iface == ic.Iface && o.Port == ic.Port {
			return fmt.Errorf("intercepting %s: %w (as %s)", icString(ic), rules.ErrExists, icString(o))
		}
	}
	old := b.interceptions()
	want := old
	if !b.ics[ic] {
		want = append(slices.Clone(old), ic)
	}
	if err := b.applyIntercepts(ctx, old, want, true); err != nil {
		return fmt.Errorf("intercepting %s: %w", icString(ic), err)
	}
	b.ics[ic] = true
	return nil
}

// StopIntercept removes ic, in the same steps as Intercept in the reverse
// order, leaving the other interceptions of this process in place; a
// chain, its jump and the policy routing go with the last interception
// that needs them. Removing what is not installed is not an error. It
// does not need Setup. It goes on after a failed step, so as to remove as
// much as it can, and reports what failed; Setup and Flush remove what is
// left.
func (b *Backend) StopIntercept(ctx context.Context, ic rules.Interception) error {
	if err := checkInterception(ic); err != nil {
		return err
	}
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("stopping interception %s: %w", icString(ic), err)
	}
	defer b.unlock()
	old := b.interceptions()
	want := slices.DeleteFunc(slices.Clone(old), func(o rules.Interception) bool { return o == ic })
	delete(b.ics, ic)
	if err := b.applyIntercepts(ctx, old, want, false); err != nil {
		return fmt.Errorf("stopping interception %s: %w", icString(ic), err)
	}
	return nil
}

// interceptions returns the interceptions of this process, in a fixed
// order.
func (b *Backend) interceptions() []rules.Interception {
	return slices.SortedFunc(maps.Keys(b.ics), compareInterceptions)
}

func hasTProxy(ics []rules.Interception) bool {
	return slices.ContainsFunc(ics, func(ic rules.Interception) bool { return ic.Method == rules.TProxy })
}

// interceptStep is one step of an interception change. apply makes its
// part of the kernel's state what ics asks for, whatever it was, so the
// same call does, undoes and redoes the step.
type interceptStep struct {
	name  string
	apply func(ctx context.Context, ics []rules.Interception) error
}

// applyIntercepts moves the kernel's interception state from old to want,
// one step per family for the rules and, when TPROXY is involved, one per
// family for the policy routing. The policy routing goes in before the
// first TPROXY rule and out after the last one, so that no packet is ever
// marked for a route that is not there.
//
// With rollback, a failed step and the steps before it are set back to
// old, even when ctx has ended (each exec is still bounded by
// ExecTimeout). Without it, the other steps still run.
func (b *Backend) applyIntercepts(ctx context.Context, old, want []rules.Interception, rollback bool) error {
	var ipt, policy []interceptStep
	for _, f := range b.families() {
		ipt = append(ipt, interceptStep{f.name + " rules", func(ctx context.Context, ics []rules.Interception) error {
			return b.syncInterceptRules(ctx, f, ics)
		}})
		policy = append(policy, interceptStep{f.name + " policy routing", func(_ context.Context, ics []rules.Interception) error {
			_, err := b.syncPolicy(f.v6, hasTProxy(ics))
			return err
		}})
	}
	var steps []interceptStep
	switch {
	case hasTProxy(want) && !hasTProxy(old):
		steps = append(policy, ipt...)
	case hasTProxy(want) || hasTProxy(old):
		steps = append(ipt, policy...)
	default:
		steps = ipt
	}
	var errs []error
	for i, s := range steps {
		err := s.apply(ctx, want)
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s: %w", s.name, err)
		if !rollback {
			errs = append(errs, err)
			continue
		}
		rctx := context.WithoutCancel(ctx)
		var rerrs []error
		for j := i; j >= 0; j-- {
			if rerr := steps[j].apply(rctx, old); rerr != nil {
				rerrs = append(rerrs, fmt.Errorf("%s: %w", steps[j].name, rerr))
			}
		}
		if len(rerrs) > 0 {
			return fmt.Errorf("%w; rolling back: %w", err, errors.Join(rerrs...))
		}
		b.log.Warn("rolled back a half-done interception change", "failed", s.name, "err", err)
		return err
	}
	return errors.Join(errs...)
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
	text := interceptScript(st, b.interceptions(), f.v6, b.cfg.TProxyMark)
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
