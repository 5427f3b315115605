package iptables

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
	l := &lab{client: g.Client, gw: g.GW, server: g.Server, path: path, seen: g.Seen}
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

// dial connects from the client namespace, from address from, to to,
// giving up after timeout.
func (l *lab) dial(t *testing.T, from netip.Addr, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := l.client.Dial(ctx, "tcp", netip.AddrPortFrom(from, 0).String(), to.String())
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// echo sends msg over c and checks that the server sends it back.
func echo(c net.Conn, msg string) error { return echoAfter(c, "", msg) }

// echoAfter is echo on a connection where pending was sent earlier without
// its echo arriving: the server sends pending back first.
func echoAfter(c net.Conn, pending, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	msg = pending + msg
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if !bytes.Equal(buf, []byte(msg)) {
		return fmt.Errorf("echo = %q, want %q", buf, msg)
	}
	return nil
}

// expectSeen checks the source address the server saw for the latest
// connection.
func (l *lab) expectSeen(t *testing.T, want netip.Addr) {
	t.Helper()
	select {
	case ap := <-l.seen:
		if ap.Addr() != want {
			t.Errorf("server saw the connection from %s, want %s", ap.Addr(), want)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("server saw no connection")
	}
}

// connects checks that a connection from from to to is made and carries
// bytes, and that the server sees it coming from seenFrom; it returns it.
func (l *lab) connects(t *testing.T, from netip.Addr, to netip.AddrPort, seenFrom netip.Addr) net.Conn {
	t.Helper()
	c, err := l.dial(t, from, to, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting from %s to %s: %v", from, to, err)
	}
	if err := echo(c, "data from "+from.String()); err != nil {
		t.Fatalf("connection from %s to %s: %v", from, to, err)
	}
	l.expectSeen(t, seenFrom)
	return c
}

// refused checks that no connection from from to to gets through within
// a second: on veths an answer takes well under a millisecond.
func (l *lab) refused(t *testing.T, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	c, err := l.dial(t, from, to, time.Second)
	if err == nil {
		// Even if something answered, the server must not have.
		err = echo(c, "x")
		c.Close()
		if err == nil {
			t.Fatalf("connection from %s to %s got through", from, to)
		}
	}
	select {
	case ap := <-l.seen:
		t.Fatalf("server accepted a connection from %s, which must not get through", ap)
	default:
	}
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
				if err := echo(c1, "still flowing after Remove"); err != nil {
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
				if err := echo(c2, "x"); err == nil {
					t.Errorf("established connection kept flowing without the FORWARD jump: the test proves nothing")
				}

				again := mk("m-again", 40003, true)
				if err := l.b.Install(ctx, again); err != nil {
					t.Fatalf("Install after the jumps were flushed: %v", err)
				}
				l.connects(t, a.client, again.Public, a.gwInside)
				l.connects(t, a.client, without.Public, a.client)
				if err := echoAfter(c2, "x", "flowing again after the repair"); err != nil {
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
