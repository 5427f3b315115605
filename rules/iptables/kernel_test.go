package iptables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestConcurrent installs and removes from many goroutines at once: every
// call succeeds and the ruleset ends as Setup left it.
func TestConcurrent(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, nsPrefix)
		b := newBackend(t, ns, path, Config{})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		base := dump(t, ns, path)
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for g := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 5 {
					m := rulestest.Sample(fmt.Sprintf("m-%d-%d", g, i), uint16(41000+10*g+i))
					if i%2 == 1 {
						m = rulestest.Sample6(m.ID, m.Public.Port())
					}
					if err := b.Install(ctx, m); err != nil {
						errs <- err
						continue
					}
					if err := b.Remove(ctx, m); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := dump(t, ns, path); got != base {
			t.Errorf("ruleset after concurrent installs and removes:\n%s", lineDiff(base, got))
		}
	})
}

// TestDisableIPv6 checks that with IPv6 off nothing is done to ip6tables
// and IPv6 mappings are refused.
func TestDisableIPv6(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, nsPrefix)
		b := newBackend(t, ns, path, Config{DisableIPv6: true})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Install(ctx, rulestest.Sample6("m-6", 40001)); !errors.Is(err, ErrNoIPv6) {
			t.Errorf("Install of an IPv6 mapping = %v, want ErrNoIPv6", err)
		}
		if err := b.Install(ctx, rulestest.Sample("m-4", 40001)); err != nil {
			t.Fatal(err)
		}
		_, v6, _ := deriveBinaries(path)
		if out := ns.MustRun(t, v6.save); strings.Contains(out, "PASVGATE") {
			t.Errorf("ip6tables touched with IPv6 off:\n%s", out)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestNotSetUp checks that Install and Remove refuse to run before Setup
// and after Flush, as the fake does.
func TestNotSetUp(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, nsPrefix)
		b := newBackend(t, ns, path, Config{})
		m := rulestest.Sample("m-1", 40001)
		if err := b.Install(ctx, m); !errors.Is(err, ErrNotSetUp) {
			t.Errorf("Install before Setup = %v, want ErrNotSetUp", err)
		}
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Remove(ctx, m); !errors.Is(err, ErrNotSetUp) {
			t.Errorf("Remove after Flush = %v, want ErrNotSetUp", err)
		}
		var _ rules.Backend = b
	})
}
