package nftables

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestOneShot checks with real TCP connections through the gateway that a
// mapping admits one data connection, the first: while that one keeps
// flowing, a second connection from the same client to the same public
// port (another source port) is refused, with and without SNAT, as is one
// from another address. Remove of the used mapping then succeeds without
// a warning, and leaves no element behind. A mapping never used is
// still taken out by Remove, and by the kernel timeout.
func TestOneShot(t *testing.T) {
	netns.RequireRoot(t)
	var wg sync.WaitGroup
	for _, a := range []labAddrs{lab4, lab6} {
		wg.Go(func() {
			t.Run(a.name, func(t *testing.T) { testOneShot(t, a) })
		})
	}
	wg.Wait()
}

func testOneShot(t *testing.T, a labAddrs) {
	ctx := context.Background()
	rec := &warnings{}
	l := newLab(t, Config{Timeout: 2 * time.Second, Logger: slog.New(rec)})
	base := stableRuleset(t, l.gw)

	withSNAT, without := a.mapping("m-snat", 40001, true), a.mapping("m-nosnat", 40002, false)
	for _, m := range []rules.Mapping{withSNAT, without} {
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatalf("Install %v: %v", m, err)
		}
		seen := a.client
		if m.SNAT.IsValid() {
			seen = a.gwInside
		}
		first := l.connects(t, a.client, m.Public, seen)
		l.refused(t, a.client, m.Public)
		l.refused(t, a.intruder, m.Public)
		if err := netns.Echo(first, "first connection still flowing"); err != nil {
			t.Errorf("%s: first connection after a second was refused: %v", m.ID, err)
		}
		if err := l.b.Remove(ctx, m); err != nil {
			t.Errorf("Remove of used %s = %v, want nil", m.ID, err)
		}
		if err := netns.Echo(first, "first connection still flowing after Remove"); err != nil {
			t.Errorf("%s: first connection after Remove: %v", m.ID, err)
		}
	}
	if got := stableRuleset(t, l.gw); got != base {
		t.Errorf("ruleset after the used mappings were removed:\n%s\nwant:\n%s", got, base)
	}

	unused := a.mapping("m-unused", 40003, true)
	if err := l.b.Install(ctx, unused); err != nil {
		t.Fatal(err)
	}
	if err := l.b.Remove(ctx, unused); err != nil {
		t.Errorf("Remove of an unused mapping = %v, want nil", err)
	}
	l.refused(t, a.client, unused.Public)
	if got := stableRuleset(t, l.gw); got != base {
		t.Errorf("ruleset after an unused mapping was removed:\n%s\nwant:\n%s", got, base)
	}

	expiring := a.mapping("m-expires", 40004, true)
	start := time.Now()
	if err := l.b.Install(ctx, expiring); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100*time.Millisecond - time.Since(start))
	l.refused(t, a.client, expiring.Public)
	if got := stableRuleset(t, l.gw); got != base {
		t.Errorf("ruleset after an unused mapping expired:\n%s\nwant:\n%s", got, base)
	}
	if err := l.b.Remove(ctx, expiring); err != nil {
		t.Errorf("Remove of an expired mapping = %v, want nil", err)
	}
	if w := rec.get(); len(w) > 0 {
		t.Errorf("the backend warned:\n%s", strings.Join(w, "\n"))
	}
}

// warnings is a slog.Handler that keeps the messages of warnings and
// errors.
type warnings struct {
	mu  sync.Mutex
	got []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, r.Level.String()+" "+r.Message)
	return nil
}

func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.got...)
}

// TestOneShotLocalTarget is TestOneShot for a mapping whose target is the
// gateway itself, whose data connection goes to the input hook and never
// reaches postrouting.
func TestOneShotLocalTarget(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	l := newLab(t, Config{})
	for _, a := range []labAddrs{lab4, lab6} {
		target := netip.AddrPortFrom(a.gwInside, serverPort+1)
		ln, err := l.gw.Listen("tcp", target.String())
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan struct{}, 4)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- struct{}{}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
		t.Cleanup(func() { ln.Close(); <-done })

		m := a.mapping("m-local", 40001, false)
		m.Target = target
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
		first, err := l.g.Dial(t, a.client, m.Public, 3*time.Second)
		if err != nil {
			t.Fatalf("%s: first connection: %v", a.name, err)
		}
		if err := netns.Echo(first, "to the gateway"); err != nil {
			t.Fatalf("%s: first connection: %v", a.name, err)
		}
		<-accepted
		if c, err := l.g.Dial(t, a.client, m.Public, 500*time.Millisecond); err == nil {
			c.Close()
			t.Errorf("%s: a second connection to a used mapping got through", a.name)
		}
		if err := netns.Echo(first, "still flowing"); err != nil {
			t.Errorf("%s: first connection after a second was refused: %v", a.name, err)
		}
		if err := l.b.Remove(ctx, m); err != nil {
			t.Errorf("%s: Remove = %v, want nil", a.name, err)
		}
	}
}

// TestOneShotWindow measures, with PASVGATE_MEASURE_ONESHOT=1, what is
// left of the one-shot window: how often a second connection from the
// client, started a given time after the first, gets through too.
func TestOneShotWindow(t *testing.T) {
	netns.RequireRoot(t)
	rulestest.RequireMeasure(t)
	l := newLab(t, Config{})
	mk := func(id string, q uint16) rules.Mapping { return lab4.mapping(id, q, true) }
	rulestest.MeasureWindow(t, l.b, l.g, lab4.client, mk,
		rulestest.WindowDelays, 200)
}
