package iptables

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

// TestOneShot checks with real TCP connections through the gateway, with
// iptables-nft and iptables-legacy, that a mapping admits one data
// connection, the first: while that one keeps flowing, a second
// connection from the same client to the same public port (another
// source port) is refused, with and without SNAT, as is one from another
// address. A first packet that the host's FORWARD drops does not use the
// mapping up. Remove of a used mapping, and of one never used, succeeds
// without a warning and leaves no rule and no xt_recent list behind.
func TestOneShot(t *testing.T) {
	netns.RequireRoot(t)
	forEachBinary(t, func(t *testing.T, path string) {
		for _, fam := range []struct {
			name string
			a    labAddrs
		}{{"IPv4", lab4}, {"IPv6", lab6}} {
			t.Run(fam.name, func(t *testing.T) { testOneShot(t, path, fam.a) })
		}
	})
}

func testOneShot(t *testing.T, path string, a labAddrs) {
	ctx := context.Background()
	l := newLab(t, path)
	rec := &warnings{}
	l.b = newBackend(t, l.gw, path, Config{Logger: slog.New(rec)})
	if err := l.b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	v4, v6, _ := deriveBinaries(path)
	bin := v4
	if a.public.Is6() {
		bin = v6
	}
	base := dump(t, l.gw, path)
	target := netip.AddrPortFrom(a.server, serverPort)
	mk := func(id string, q uint16, snat bool) rules.Mapping {
		m := rules.Mapping{ID: id, Source: a.client, Public: netip.AddrPortFrom(a.public, q), Target: target, Created: time.Now()}
		if snat {
			m.SNAT = a.gwInside
		}
		return m
	}

	for _, m := range []rules.Mapping{mk("m-snat", 40001, true), mk("m-nosnat", 40002, false)} {
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatalf("Install %v: %v", m, err)
		}
		seen := a.client
		if m.SNAT.IsValid() {
			seen = a.gwInside
			// The host firewall drops the first attempt in FORWARD,
			// after DNAT: that does not use the mapping up.
			drop := []string{"-I", "FORWARD", "-s", a.client.String(), "-j", "DROP"}
			l.gw.MustRun(t, bin.iptables, append([]string{"-w"}, drop...)...)
			l.refused(t, a.client, m.Public)
			drop[0] = "-D"
			l.gw.MustRun(t, bin.iptables, append([]string{"-w"}, drop...)...)
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

	unused := mk("m-unused", 40003, true)
	if err := l.b.Install(ctx, unused); err != nil {
		t.Fatal(err)
	}
	if err := l.b.Remove(ctx, unused); err != nil {
		t.Errorf("Remove of an unused mapping = %v, want nil", err)
	}
	l.refused(t, a.client, unused.Public)

	// Someone flushes the whole nat table, pasvgate's chains included:
	// the xt_recent lists go with their rules, so the repair cannot tell
	// a used mapping from one not used yet, and puts both back admitting
	// nothing. Mappings whose rules were kept keep what they knew (see
	// TestTraffic).
	used, pending := mk("m-used", 40004, false), mk("m-pending", 40005, false)
	for _, m := range []rules.Mapping{used, pending} {
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	l.connects(t, a.client, used.Public, a.client)
	l.gw.MustRun(t, bin.iptables, "-w", "-t", "nat", "-F")
	after := mk("m-after", 40006, false)
	if err := l.b.Install(ctx, after); err != nil {
		t.Fatalf("Install after the nat table was flushed: %v", err)
	}
	l.refused(t, a.client, used.Public)
	l.refused(t, a.client, pending.Public)
	l.connects(t, a.client, after.Public, a.client)
	l.refused(t, a.client, after.Public)
	if ms, err := l.b.List(ctx); err != nil || len(ms) != 3 {
		t.Errorf("List after the repair = %v, %v; want 3 mappings", ms, err)
	}
	for _, m := range []rules.Mapping{used, pending, after} {
		if err := l.b.Remove(ctx, m); err != nil {
			t.Errorf("Remove %s after the repair = %v, want nil", m.ID, err)
		}
	}

	if got := dump(t, l.gw, path); got != base {
		t.Errorf("rules after the mappings were removed:\n%s\nwant:\n%s", got, base)
	}
	if lists := strings.TrimSpace(l.gw.MustRun(t, "ls", "/proc/net/xt_recent")); lists != "" {
		t.Errorf("xt_recent lists left: %s", lists)
	}
	for _, w := range rec.get() {
		if !strings.Contains(w, "changed from outside") {
			t.Errorf("the backend warned: %s", w)
		}
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
// gateway itself, whose data connection goes to INPUT and never reaches
// POSTROUTING.
func TestOneShotLocalTarget(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		l := newLab(t, path)
		for _, a := range []labAddrs{lab4, lab6} {
			target := netip.AddrPortFrom(a.gwInside, serverPort+1)
			ln, err := l.gw.Listen("tcp", target.String())
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
				}
			}()
			t.Cleanup(func() { ln.Close(); <-done })

			m := rules.Mapping{ID: "m-local", Source: a.client, Public: netip.AddrPortFrom(a.public, 40001),
				Target: target, Created: time.Now()}
			if err := l.b.Install(ctx, m); err != nil {
				t.Fatal(err)
			}
			first, err := l.g.Dial(t, a.client, m.Public, 3*time.Second)
			if err != nil {
				t.Fatalf("%v: first connection: %v", a.public, err)
			}
			if err := netns.Echo(first, "to the gateway"); err != nil {
				t.Fatalf("%v: first connection: %v", a.public, err)
			}
			if c, err := l.g.Dial(t, a.client, m.Public, time.Second); err == nil {
				c.Close()
				t.Errorf("%v: a second connection to a used mapping got through", a.public)
			}
			if err := netns.Echo(first, "still flowing"); err != nil {
				t.Errorf("%v: first connection after a second was refused: %v", a.public, err)
			}
			if err := l.b.Remove(ctx, m); err != nil {
				t.Errorf("%v: Remove = %v, want nil", a.public, err)
			}
		}
	})
}

// TestOneShotWindow measures, with PASVGATE_MEASURE_ONESHOT=1, what is
// left of the one-shot window: how often a second connection from the
// client, started a given time after the first, gets through too.
func TestOneShotWindow(t *testing.T) {
	netns.RequireRoot(t)
	rulestest.RequireMeasure(t)
	forEachBinary(t, func(t *testing.T, path string) {
		l := newLab(t, path)
		mk := func(id string, q uint16) rules.Mapping {
			return rules.Mapping{ID: id, Source: lab4.client, Public: netip.AddrPortFrom(lab4.public, q),
				Target: netip.AddrPortFrom(lab4.server, serverPort), SNAT: lab4.gwInside, Created: time.Now()}
		}
		rulestest.MeasureWindow(t, l.b, l.g, lab4.client, mk,
			rulestest.WindowDelays, 200)
	})
}
