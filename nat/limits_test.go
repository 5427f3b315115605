package nat

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

func TestClientKey(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"203.0.113.10", "203.0.113.10", true},
		{"203.0.113.10", "203.0.113.11", false},           // IPv4: every address is a client
		{"::ffff:203.0.113.10", "203.0.113.10", true},     // a dual-stack listener's IPv4 client
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true}, // one /64: one client
		{"2001:db8:1:2::1", "2001:db8:1:3::1", false},     // the next /64: another
		{"fe80::1%eth0", "fe80::2%eth1", true},            // zones do not make clients
	} {
		a, b := ClientKey(netip.MustParseAddr(tc.a)), ClientKey(netip.MustParseAddr(tc.b))
		if (a == b) != tc.same {
			t.Errorf("ClientKey(%s) = %v, ClientKey(%s) = %v: same client %v, want %v", tc.a, a, tc.b, b, a == b, tc.same)
		}
	}
	if got := ClientKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); got != netip.MustParsePrefix("2001:db8:1:2::/64") {
		t.Errorf("ClientKey of an IPv6 address = %v, want its /64", got)
	}
}

// limitedTable is a table whose clients may hold max mappings each.
func limitedTable(t *testing.T, b rules.Backend, max int, install time.Duration) *Table {
	t.Helper()
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	tb, err := New(b, Config{Ports: PortRange{40000, 40999}, ConnectTimeout: time.Minute, InstallTimeout: install, MaxPerClient: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	return tb
}

func from(client string) Request {
	r := req()
	r.Source = netip.MustParseAddr(client)
	if r.Source.Is6() {
		r.Public = netip.MustParseAddr("2001:db8:ff::2")
		r.Target = netip.MustParseAddrPort("[2001:db8:aa::10]:30000")
		r.SNAT = netip.MustParseAddr("2001:db8:aa::1")
	}
	return r
}

// TestMaxPerClient: a client at its limit is refused while every other
// client still gets ports; IPv6 clients are counted by /64; an active-mode
// mapping (whose Source is the server) counts against the control client;
// a port given back makes room; a reload lifts the limit.
func TestMaxPerClient(t *testing.T) {
	b := &fake.Backend{}
	tb := limitedTable(t, b, 2, 0)
	ctx := context.Background()
	open := func(r Request) (*Mapping, error) { return tb.Open(ctx, r) }
	mustOpen := func(r Request) *Mapping {
		t.Helper()
		m, err := open(r)
		if err != nil {
			t.Fatalf("Open for %v (client %v): %v", r.Source, r.Client, err)
		}
		return m
	}

	a1 := mustOpen(from("203.0.113.10"))
	// Active mode: the server is the source, the control client is charged.
	active := from("192.0.2.10")
	active.Client = netip.MustParseAddr("203.0.113.10")
	mustOpen(active)
	if _, err := open(from("203.0.113.10")); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("a third mapping for one client: %v, want ErrClientLimit", err)
	}
	if _, err := open(active); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("a third mapping for one client in active mode: %v, want ErrClientLimit", err)
	}
	// Others are not affected, the server's own address included.
	mustOpen(from("203.0.113.11"))
	mustOpen(from("192.0.2.10"))

	// IPv6: two addresses of one /64 are one client; the next /64 another.
	mustOpen(from("2001:db8:1:2::1"))
	mustOpen(from("2001:db8:1:2::2"))
	if _, err := open(from("2001:db8:1:2:aaaa::3")); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("a third mapping from one /64: %v, want ErrClientLimit", err)
	}
	mustOpen(from("2001:db8:1:3::1"))
	if n := b.Len(); n != 7 {
		t.Fatalf("%d mappings installed, want 7: refusals install nothing", n)
	}

	// Once a port is back in the pool, its client may use one again.
	a1.Release(ReasonTransferDone)
	waitLen(t, b, 6)
	mustOpen(from("203.0.113.10"))
	if _, err := open(from("203.0.113.10")); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("over the limit again: %v, want ErrClientLimit", err)
	}
	tb.SetMaxPerClient(0)
	mustOpen(from("203.0.113.10"))
}

// gatedRemoves holds every Remove until the test lets it go, as a busy
// iptables would.
type gatedRemoves struct {
	*fake.Backend
	gate chan struct{}
}

func (g *gatedRemoves) Remove(ctx context.Context, m rules.Mapping) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Backend.Remove(ctx, m)
}

// RemoveBatch holds each removal too (the embedded fake's would not).
func (g *gatedRemoves) RemoveBatch(ctx context.Context, ms []rules.Mapping) []error {
	errs := make([]error, len(ms))
	for i, m := range ms {
		errs[i] = g.Remove(ctx, m)
	}
	return errs
}

// TestMaxPerClientCountsLeaving: a released mapping counts against its
// client until its rules are gone (its port is no one else's before), so a
// client at the limit waits for its own removals rather than growing the
// removal backlog, and is refused if they take longer than an install may.
func TestMaxPerClientCountsLeaving(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		install time.Duration
		open    bool // the removal completes while Open waits
	}{
		{"removal done: Open goes on", 10 * time.Second, true},
		{"removal too slow: refused", 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &gatedRemoves{Backend: &fake.Backend{}, gate: make(chan struct{})}
			tb := limitedTable(t, g, 1, tc.install)
			t.Cleanup(func() {
				select {
				case <-g.gate:
				default:
					close(g.gate) // before the table's Close waits for removals
				}
			})
			m, err := tb.Open(ctx, from("203.0.113.10"))
			if err != nil {
				t.Fatal(err)
			}
			m.Release(ReasonTransferDone)
			if tc.open {
				time.AfterFunc(50*time.Millisecond, func() { close(g.gate) })
			}
			_, err = tb.Open(ctx, from("203.0.113.10"))
			switch {
			case tc.open && err != nil:
				t.Fatalf("Open once the client's own removal is done: %v", err)
			case !tc.open && !errors.Is(err, ErrClientLimit):
				t.Fatalf("Open while the client's one port is still being removed, past the install timeout: %v, want ErrClientLimit", err)
			}
			want := 1
			if tc.open {
				want = 2
			}
			if n := g.Count("install"); n != want {
				t.Fatalf("%d installs, want %d", n, want)
			}
		})
	}
}
