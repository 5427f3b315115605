// Package rulestest is the behaviour every rules.Backend must share, as a
// test suite that each backend's tests run against their own backend: the
// fake without root, the kernel backends inside a network namespace. A
// difference between the fake and a kernel backend is then a failing test,
// not a surprise in production.
package rulestest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// Sample returns a valid IPv4 mapping with the given id and public port,
// using documentation addresses only.
func Sample(id string, port uint16) rules.Mapping {
	return rules.Mapping{
		ID:      id,
		Source:  netip.MustParseAddr("203.0.113.10"),
		Public:  netip.AddrPortFrom(netip.MustParseAddr("203.0.113.2"), port),
		Target:  netip.MustParseAddrPort("192.0.2.10:30000"),
		SNAT:    netip.MustParseAddr("192.0.2.1"),
		Created: time.Unix(1700000000, 0),
	}
}

// Sample6 is Sample for IPv6, in 2001:db8::/32.
func Sample6(id string, port uint16) rules.Mapping {
	return rules.Mapping{
		ID:      id,
		Source:  netip.MustParseAddr("2001:db8:1::10"),
		Public:  netip.AddrPortFrom(netip.MustParseAddr("2001:db8:1::2"), port),
		Target:  netip.MustParseAddrPort("[2001:db8:2::10]:30000"),
		Created: time.Unix(1700000000, 0),
	}
}

// Options says which optional parts of the contract a backend supports.
type Options struct {
	// IPv6 runs the IPv6 cases too.
	IPv6 bool
	// KeepsCreated: List reports Created as installed (to the second).
	KeepsCreated bool
}

// Run runs the shared contract against backends made by newBackend. Each
// subtest gets a fresh backend on which Setup has not been called yet.
func Run(t *testing.T, newBackend func(t *testing.T) rules.Backend, opt Options) {
	ctx := context.Background()
	ready := func(t *testing.T) rules.Backend {
		b := newBackend(t)
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup: %v", err)
		}
		// Setup is idempotent.
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("second Setup: %v", err)
		}
		return b
	}
	list := func(t *testing.T, b rules.Backend) []rules.Mapping {
		t.Helper()
		ms, err := b.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		return ms
	}

	t.Run("InstallListRemove", func(t *testing.T) {
		b := ready(t)
		m := Sample("m-a1", 40001)
		if err := b.Install(ctx, m); err != nil {
			t.Fatalf("Install: %v", err)
		}
		got := list(t, b)
		if len(got) != 1 {
			t.Fatalf("List after install = %v, want one mapping", got)
		}
		g := got[0]
		if g.ID != m.ID || g.Source != m.Source || g.Public != m.Public || g.Target != m.Target || g.SNAT != m.SNAT {
			t.Fatalf("List returned %v, want %v", g, m)
		}
		if opt.KeepsCreated && !g.Created.Equal(m.Created) {
			t.Errorf("List Created = %v, want %v", g.Created, m.Created)
		}
		if err := b.Remove(ctx, m); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after remove = %v, want none", got)
		}
	})

	t.Run("NoSNAT", func(t *testing.T) {
		b := ready(t)
		m := Sample("m-b1", 40002)
		m.SNAT = netip.Addr{}
		if err := b.Install(ctx, m); err != nil {
			t.Fatalf("Install: %v", err)
		}
		if got := list(t, b); len(got) != 1 || got[0].SNAT.IsValid() {
			t.Fatalf("List = %v, want one mapping without SNAT", got)
		}
		if err := b.Remove(ctx, m); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	})

	t.Run("Dialed", func(t *testing.T) {
		b := ready(t)
		m := Sample("m-d1", 40005)
		m.Dialed = netip.MustParseAddr("203.0.113.1")
		if err := b.Install(ctx, m); err != nil {
			t.Fatalf("Install: %v", err)
		}
		if got := list(t, b); len(got) != 1 || got[0].Dialed != m.Dialed || got[0].Public != m.Public {
			t.Fatalf("List = %v, want [%v]", got, m)
		}
		// Another mapping announcing m's dialed address for the same
		// client and port would admit the same connections.
		dup := Sample("m-d2", 40005)
		dup.Public = netip.AddrPortFrom(m.Dialed, m.Public.Port())
		if err := b.Install(ctx, dup); !errors.Is(err, rules.ErrExists) {
			t.Errorf("Install on another mapping's dialed address = %v, want ErrExists", err)
		}
		bad := Sample("m-d3", 40006)
		bad.Dialed = bad.Public.Addr()
		if err := b.Install(ctx, bad); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Install with Dialed equal to Public = %v, want ErrInvalid", err)
		}
		if err := b.Remove(ctx, m); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after remove = %v, want none", got)
		}
	})

	t.Run("Duplicates", func(t *testing.T) {
		b := ready(t)
		m := Sample("m-c1", 40003)
		if err := b.Install(ctx, m); err != nil {
			t.Fatalf("Install: %v", err)
		}
		sameID := Sample("m-c1", 40004)
		if err := b.Install(ctx, sameID); !errors.Is(err, rules.ErrExists) {
			t.Errorf("Install with a used ID = %v, want ErrExists", err)
		}
		samePort := Sample("m-c2", 40003)
		if err := b.Install(ctx, samePort); !errors.Is(err, rules.ErrExists) {
			t.Errorf("Install of the same source and public port = %v, want ErrExists", err)
		}
		if got := list(t, b); len(got) != 1 {
			t.Errorf("List after refused duplicates = %v, want the first mapping only", got)
		}
		if err := b.Remove(ctx, m); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after remove = %v, want none", got)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		b := ready(t)
		bad := []rules.Mapping{
			func() rules.Mapping { m := Sample("Bad ID", 40005); return m }(),
			func() rules.Mapping { m := Sample("m-d1", 40005); m.Target = netip.AddrPort{}; return m }(),
			func() rules.Mapping {
				m := Sample("m-d2", 40005)
				m.Target = netip.MustParseAddrPort("[2001:db8::1]:21")
				return m
			}(),
			func() rules.Mapping { m := Sample("m-d3", 0); return m }(),
			func() rules.Mapping {
				m := Sample("m-d4", 40005)
				m.Source = netip.MustParseAddr("::ffff:203.0.113.10")
				return m
			}(),
		}
		for _, m := range bad {
			if err := b.Install(ctx, m); !errors.Is(err, rules.ErrInvalid) {
				t.Errorf("Install(%v) = %v, want ErrInvalid", m, err)
			}
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after invalid installs = %v, want none", got)
		}
	})

	t.Run("RemoveNotInstalled", func(t *testing.T) {
		b := ready(t)
		if err := b.Remove(ctx, Sample("m-e1", 40006)); !errors.Is(err, rules.ErrNotInstalled) {
			t.Fatalf("Remove of nothing = %v, want ErrNotInstalled", err)
		}
	})

	t.Run("SetupSweeps", func(t *testing.T) {
		b := ready(t)
		if err := b.Install(ctx, Sample("m-f1", 40007)); err != nil {
			t.Fatalf("Install: %v", err)
		}
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup: %v", err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after Setup = %v, want leftovers swept", got)
		}
	})

	t.Run("Flush", func(t *testing.T) {
		b := newBackend(t)
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("Flush of a clean system: %v", err)
		}
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup: %v", err)
		}
		for i, p := range []uint16{40010, 40011, 40012} {
			if err := b.Install(ctx, Sample("m-g"+string(rune('a'+i)), p)); err != nil {
				t.Fatalf("Install: %v", err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("second Flush: %v", err)
		}
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup after Flush: %v", err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after Flush = %v, want none", got)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		// nat installs and removes from many sessions at once: a backend
		// may overlap them (the iptables one runs a removal beside an
		// install), but none may fail or leave anything behind.
		b := ready(t)
		const workers, each = 6, 10
		errs := make(chan error, workers*each*2)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					m := Sample(fmt.Sprintf("m-c%d-%d", w, i), uint16(41000+100*w+i))
					if opt.IPv6 && i%2 == 1 {
						m = Sample6(m.ID, m.Public.Port())
					}
					if err := b.Install(ctx, m); err != nil {
						errs <- fmt.Errorf("installing %s: %w", m.ID, err)
						continue
					}
					if err := b.Remove(ctx, m); err != nil {
						errs <- fmt.Errorf("removing %s: %w", m.ID, err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := list(t, b); len(got) != 0 {
			t.Fatalf("List after concurrent installs and removals = %v, want none", got)
		}
	})

	if opt.IPv6 {
		t.Run("IPv6", func(t *testing.T) {
			b := ready(t)
			m4, m6 := Sample("m-h4", 40020), Sample6("m-h6", 40020)
			for _, m := range []rules.Mapping{m4, m6} {
				if err := b.Install(ctx, m); err != nil {
					t.Fatalf("Install %v: %v", m, err)
				}
			}
			if got := list(t, b); len(got) != 2 {
				t.Fatalf("List = %v, want both families", got)
			}
			for _, m := range []rules.Mapping{m6, m4} {
				if err := b.Remove(ctx, m); err != nil {
					t.Fatalf("Remove %v: %v", m, err)
				}
			}
			if got := list(t, b); len(got) != 0 {
				t.Fatalf("List after remove = %v, want none", got)
			}
		})
	}
}
