// Package intercept is what the kernel backends share of rules.Interceptor:
// the set of a process's interceptions, and the order in which an
// interception change is applied and rolled back. What a step writes (an
// iptables-restore script, an nftables batch, policy routing) is each
// backend's own.
package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/pasvgate/pasvgate/rules"
)

// Set holds the interceptions a process installed since Setup. A backend
// makes the kernel's interception state exactly this set.
type Set map[rules.Interception]bool

// Sorted returns the set in rules.CompareInterceptions order.
func (s Set) Sorted() []rules.Interception {
	return slices.SortedFunc(maps.Keys(s), rules.CompareInterceptions)
}

// Adding returns the set before and after installing ic. An interception
// for the same interface and port as an installed one, with another method
// or listening port, is refused with rules.ErrExists, as only one of them
// could take effect. Installing ic again gives want == old, so that the
// steps put back whatever was removed from outside.
func (s Set) Adding(ic rules.Interception) (old, want []rules.Interception, err error) {
	for o := range s {
		if o != ic && o.Iface == ic.Iface && o.Port == ic.Port {
			return nil, nil, fmt.Errorf("%w (as %s)", rules.ErrExists, o)
		}
	}
	old = s.Sorted()
	want = old
	if !s[ic] {
		want = append(slices.Clone(old), ic)
	}
	return old, want, nil
}

// Removing returns the set before and after removing ic.
func (s Set) Removing(ic rules.Interception) (old, want []rules.Interception) {
	old = s.Sorted()
	want = slices.DeleteFunc(slices.Clone(old), func(o rules.Interception) bool { return o == ic })
	return old, want
}

// Step is one step of an interception change. Apply makes its part of the
// kernel's state what ics asks for, whatever it was, so the same call
// does, undoes and redoes the step.
type Step struct {
	Name  string
	Apply func(ctx context.Context, ics []rules.Interception) error
}

// Change moves the kernel's interception state from old to want with the
// backend's rule steps (one per family) and, when TPROXY is involved,
// its policy routing steps. The policy routing goes in before the first
// TPROXY rule and out after the last one, so that no packet is ever
// marked for a route that is not there.
//
// With rollback, a failed step and the steps before it are set back to
// old, even when ctx has ended (each step is still bounded by the
// backend's own timeout), and a successful rollback is logged. Without
// it, the other steps still run and every failure is reported.
func Change(ctx context.Context, ruleSteps, policySteps []Step, old, want []rules.Interception, rollback bool, log *slog.Logger) error {
	var steps []Step
	switch {
	case rules.HasTProxy(want) && !rules.HasTProxy(old):
		steps = append(slices.Clone(policySteps), ruleSteps...)
	case rules.HasTProxy(want) || rules.HasTProxy(old):
		steps = append(slices.Clone(ruleSteps), policySteps...)
	default:
		steps = ruleSteps
	}
	var errs []error
	for i, s := range steps {
		err := s.Apply(ctx, want)
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s: %w", s.Name, err)
		if !rollback {
			errs = append(errs, err)
			continue
		}
		rctx := context.WithoutCancel(ctx)
		var rerrs []error
		for j := i; j >= 0; j-- {
			if rerr := steps[j].Apply(rctx, old); rerr != nil {
				rerrs = append(rerrs, fmt.Errorf("%s: %w", steps[j].Name, rerr))
			}
		}
		if len(rerrs) > 0 {
			return fmt.Errorf("%w; rolling back: %w", err, errors.Join(rerrs...))
		}
		log.Warn("rolled back a half-done interception change", "failed", s.Name, "err", err)
		return err
	}
	return errors.Join(errs...)
}

// Backend is what Intercept and StopIntercept need of a kernel backend;
// both backends' rules.Interceptor methods are these two, over their own
// checks, lock and steps.
type Backend struct {
	// Check validates an interception for this backend, before the lock.
	Check func(rules.Interception) error
	// Lock takes the backend's lock, waiting no longer than ctx, and
	// Unlock releases it.
	Lock   func(ctx context.Context) error
	Unlock func()
	// Ready returns the error for a backend that Intercept may not use
	// (not set up), nil otherwise. It is called under the lock.
	Ready func() error
	// Set returns the backend's interceptions; called under the lock,
	// and changed under it.
	Set func() Set
	// Apply moves the kernel's interception state from old to want (the
	// backend's steps through Change).
	Apply func(ctx context.Context, old, want []rules.Interception, rollback bool) error
}

// Intercept installs ic: all or nothing, and again puts back what was
// removed from outside (see Set.Adding). It needs Ready.
func (b Backend) Intercept(ctx context.Context, ic rules.Interception) error {
	if err := b.Check(ic); err != nil {
		return err
	}
	if err := b.Lock(ctx); err != nil {
		return fmt.Errorf("intercepting %s: %w", ic, err)
	}
	defer b.Unlock()
	if err := b.Ready(); err != nil {
		return fmt.Errorf("intercepting %s: %w", ic, err)
	}
	s := b.Set()
	old, want, err := s.Adding(ic)
	if err == nil {
		err = b.Apply(ctx, old, want, true)
	}
	if err != nil {
		return fmt.Errorf("intercepting %s: %w", ic, err)
	}
	s[ic] = true
	return nil
}

// StopIntercept removes ic, going on after a failed step so as to remove
// as much as it can, and reporting what failed. Removing what is not
// installed is not an error, and it does not need Ready.
func (b Backend) StopIntercept(ctx context.Context, ic rules.Interception) error {
	if err := b.Check(ic); err != nil {
		return err
	}
	if err := b.Lock(ctx); err != nil {
		return fmt.Errorf("stopping interception %s: %w", ic, err)
	}
	defer b.Unlock()
	s := b.Set()
	old, want := s.Removing(ic)
	delete(s, ic)
	if err := b.Apply(ctx, old, want, false); err != nil {
		return fmt.Errorf("stopping interception %s: %w", ic, err)
	}
	return nil
}
