package netns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// GatewayServerPort is the port the echo servers of a gateway lab listen
// on, in both families.
const GatewayServerPort = 30000

// GatewayLab is the three-namespace topology of the kernel backends'
// traffic tests: a client side with a client and an intruder
// (203.0.113.10 and .11, 2001:db8:1::10 and ::11) on interface c0; a
// gateway that forwards (203.0.113.1 and 2001:db8:1::1 on g0, 192.0.2.1
// and 2001:db8:2::1 on g1) with no firewall of its own; and a server
// behind it (192.0.2.10, 2001:db8:2::10 on s0) running TCP echo servers
// on GatewayServerPort. Client and server route everything through the
// gateway, so that a connection straight to the server reaches the
// gateway's forward hook instead of failing in the client.
type GatewayLab struct {
	Client, GW, Server *NS
	// Seen receives the remote address of each connection the echo
	// servers accept (dropped when nobody reads).
	Seen chan netip.AddrPort
}

// NewGatewayLab builds the topology with namespaces named after prefix;
// everything is removed when the test ends.
func NewGatewayLab(t *testing.T, prefix string) *GatewayLab {
	t.Helper()
	l := &GatewayLab{Client: New(t, prefix), GW: New(t, prefix), Server: New(t, prefix), Seen: make(chan netip.AddrPort, 16)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Without duplicate address detection on the veths' link-local
	// addresses, the first IPv6 connection does not wait for it.
	for _, ns := range []*NS{l.Client, l.GW, l.Server} {
		must(ns.Sysctl("net.ipv6.conf.default.accept_dad", "0"))
	}
	must(Veth(l.Client, "c0", l.GW, "g0"))
	must(Veth(l.GW, "g1", l.Server, "s0"))
	for _, a := range []struct {
		ns  *NS
		dev string
		p   string
	}{
		{l.Client, "c0", "203.0.113.10/24"}, {l.Client, "c0", "203.0.113.11/24"},
		{l.Client, "c0", "2001:db8:1::10/64"}, {l.Client, "c0", "2001:db8:1::11/64"},
		{l.GW, "g0", "203.0.113.1/24"}, {l.GW, "g1", "192.0.2.1/24"},
		{l.GW, "g0", "2001:db8:1::1/64"}, {l.GW, "g1", "2001:db8:2::1/64"},
		{l.Server, "s0", "192.0.2.10/24"}, {l.Server, "s0", "2001:db8:2::10/64"},
	} {
		must(a.ns.AddAddr(a.dev, netip.MustParsePrefix(a.p)))
	}
	must(l.Client.AddDefaultRoute(netip.MustParseAddr("203.0.113.1")))
	must(l.Client.AddDefaultRoute(netip.MustParseAddr("2001:db8:1::1")))
	must(l.Server.AddDefaultRoute(netip.MustParseAddr("192.0.2.1")))
	must(l.Server.AddDefaultRoute(netip.MustParseAddr("2001:db8:2::1")))
	must(l.GW.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.GW.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	for _, a := range []string{"192.0.2.10", "2001:db8:2::10"} {
		ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr(a), GatewayServerPort).String())
		must(err)
		l.serve(t, ln)
	}
	return l
}

// serve runs an echo server on ln until the test ends, reporting each
// connection's remote address on l.Seen.
func (l *GatewayLab) serve(t *testing.T, ln net.Listener) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case l.Seen <- netip.MustParseAddrPort(c.RemoteAddr().String()):
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// Dial connects from the client namespace, from address from, to to,
// giving up after timeout. The connection is closed when the test ends.
func (l *GatewayLab) Dial(t *testing.T, from netip.Addr, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := l.Client.Dial(ctx, "tcp", netip.AddrPortFrom(from, 0).String(), to.String())
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// Echo sends msg over c and checks that the echo server sends it back.
func Echo(c net.Conn, msg string) error { return EchoAfter(c, "", msg) }

// EchoAfter is Echo on a connection where pending was sent earlier without
// its echo arriving: the server sends pending back first.
func EchoAfter(c net.Conn, pending, msg string) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
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

// ExpectSeen checks the source address the server saw for the latest
// connection.
func (l *GatewayLab) ExpectSeen(t *testing.T, want netip.Addr) {
	t.Helper()
	select {
	case ap := <-l.Seen:
		if ap.Addr() != want {
			t.Errorf("server saw the connection from %s, want %s", ap.Addr(), want)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("server saw no connection")
	}
}

// Connects checks that a connection from from to to is made within
// connectWithin and carries bytes, and that the server sees it coming from
// seenFrom; it returns the connection.
func (l *GatewayLab) Connects(t *testing.T, from netip.Addr, to netip.AddrPort, seenFrom netip.Addr, connectWithin time.Duration) net.Conn {
	t.Helper()
	c, err := l.Dial(t, from, to, connectWithin)
	if err != nil {
		t.Fatalf("connecting from %s to %s: %v", from, to, err)
	}
	if err := Echo(c, "data from "+from.String()); err != nil {
		t.Fatalf("connection from %s to %s: %v", from, to, err)
	}
	l.ExpectSeen(t, seenFrom)
	return c
}

// Refused checks that no connection from from to to gets through within
// within (on veths an answer takes well under a millisecond), and that the
// server accepted none.
func (l *GatewayLab) Refused(t *testing.T, from netip.Addr, to netip.AddrPort, within time.Duration) {
	t.Helper()
	c, err := l.Dial(t, from, to, within)
	if err == nil {
		// Even if something answered, the server must not have.
		err = Echo(c, "x")
		c.Close()
		if err == nil {
			t.Fatalf("connection from %s to %s got through", from, to)
		}
	}
	select {
	case ap := <-l.Seen:
		t.Fatalf("server accepted a connection from %s, which must not get through", ap)
	default:
	}
}
