package iptables

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// lab is three namespaces: a client side with the client and an intruder
// (203.0.113.10 and .11, 2001:db8:1::10 and ::11), a gateway that forwards
// under a FORWARD policy of DROP with pasvgate's backend (203.0.113.1 and
// 192.0.2.1, 2001:db8:1::1 and 2001:db8:2::1), and a server behind it
// (192.0.2.10, 2001:db8:2::10) whose default route is the gateway.
type lab struct {
	client, gw, server *netns.NS
	path               string
	b                  nsBackend
	seen               chan netip.AddrPort // remote address of each connection the server accepts
	g                  *netns.GatewayLab
}

// Addresses of the lab, per family.
type labAddrs struct {
	client, intruder, public, gwInside, server netip.Addr
}

var (
	lab4 = labAddrs{
		client: netip.MustParseAddr("203.0.113.10"), intruder: netip.MustParseAddr("203.0.113.11"),
		public: netip.MustParseAddr("203.0.113.1"), gwInside: netip.MustParseAddr("192.0.2.1"),
		server: netip.MustParseAddr("192.0.2.10"),
	}
	lab6 = labAddrs{
		client: netip.MustParseAddr("2001:db8:1::10"), intruder: netip.MustParseAddr("2001:db8:1::11"),
		public: netip.MustParseAddr("2001:db8:1::1"), gwInside: netip.MustParseAddr("2001:db8:2::1"),
		server: netip.MustParseAddr("2001:db8:2::10"),
	}
)

// serverPort is the port the server listens on in both families.
const serverPort = netns.GatewayServerPort

func newLab(t *testing.T, path string) *lab {
	t.Helper()
	g := netns.NewGatewayLab(t, nsPrefix)
	l := &lab{g: g, client: g.Client, gw: g.GW, server: g.Server, path: path, seen: g.Seen}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	v4, v6, err := deriveBinaries(path)
	must(err)
	l.gw.MustRun(t, v4.iptables, "-P", "FORWARD", "DROP")
	l.gw.MustRun(t, v6.iptables, "-P", "FORWARD", "DROP")

	l.b = newBackend(t, l.gw, path, Config{Logger: testLogger(t)})
	if err := l.b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return l
}

// connects and refused use this backend's time bounds.
func (l *lab) connects(t *testing.T, from netip.Addr, to netip.AddrPort, seenFrom netip.Addr) net.Conn {
	t.Helper()
	return l.g.Connects(t, from, to, seenFrom, 5*time.Second)
}

func (l *lab) refused(t *testing.T, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	l.g.Refused(t, from, to, time.Second)
}

// TestTraffic checks with real TCP connections through a gateway with a
// FORWARD policy of DROP that a mapping admits exactly its client, that
// SNAT is applied exactly when asked, that an established connection
// outlives its mapping while new ones are refused, and that jumps flushed
// from outside are put back by the next Install.
func TestTraffic(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		for _, fam := range []struct {
			name string
			a    labAddrs
		}{{"IPv4", lab4}, {"IPv6", lab6}} {
			t.Run(fam.name, func(t *testing.T) {
				l := newLab(t, path)
				a := fam.a
				target := netip.AddrPortFrom(a.server, serverPort)
				mk := func(id string, q uint16, snat bool) rules.Mapping {
					m := rules.Mapping{ID: id, Source: a.client, Public: netip.AddrPortFrom(a.public, q), Target: target, Created: time.Now()}
					if snat {
						m.SNAT = a.gwInside
					}
					return m
				}
				withSNAT, without := mk("m-snat", 40001, true), mk("m-nosnat", 40002, false)
				for _, m := range []rules.Mapping{withSNAT, without} {
					if err := l.b.Install(ctx, m); err != nil {
						t.Fatalf("Install %v: %v", m, err)
					}
				}

				c1 := l.connects(t, a.client, withSNAT.Public, a.gwInside)
				c2 := l.connects(t, a.client, without.Public, a.client)
				l.refused(t, a.intruder, withSNAT.Public)
				l.refused(t, a.intruder, without.Public)
				// The server itself is not reachable straight through the
				// gateway: only the mapped connection is forwarded.
				l.refused(t, a.client, target)

				if err := l.b.Remove(ctx, withSNAT); err != nil {
					t.Fatalf("Remove: %v", err)
				}
				if err := netns.Echo(c1, "still flowing after Remove"); err != nil {
					t.Errorf("established connection after Remove: %v", err)
				}
				l.refused(t, a.client, withSNAT.Public)

				// Someone flushes the built-in chains: the jumps go, and
				// with them the mapping that is still installed.
				v4, v6, _ := deriveBinaries(path)
				bin := v4.iptables
				if fam.a.public.Is6() {
					bin = v6.iptables
				}
				l.gw.MustRun(t, bin, "-F", "FORWARD")
				for _, c := range []string{"PREROUTING", "OUTPUT", "POSTROUTING"} {
					l.gw.MustRun(t, bin, "-t", "nat", "-F", c)
				}
				l.refused(t, a.client, without.Public)
				if err := netns.Echo(c2, "x"); err == nil {
					t.Errorf("established connection kept flowing without the FORWARD jump: the test proves nothing")
				}

				again := mk("m-again", 40003, true)
				if err := l.b.Install(ctx, again); err != nil {
					t.Fatalf("Install after the jumps were flushed: %v", err)
				}
				l.connects(t, a.client, again.Public, a.gwInside)
				// The repair kept pasvgate's own chains, so it knows that
				// without admitted its connection already.
				l.refused(t, a.client, without.Public)
				if err := netns.EchoAfter(c2, "x", "flowing again after the repair"); err != nil {
					t.Errorf("established connection after the repair: %v", err)
				}
				for _, m := range []rules.Mapping{without, again} {
					if err := l.b.Remove(ctx, m); err != nil {
						t.Fatalf("Remove %v: %v", m, err)
					}
				}
				if ms, err := l.b.List(ctx); err != nil || len(ms) != 0 {
					t.Fatalf("List after removing all = %v, %v; want none", ms, err)
				}
			})
		}
	})
}
