package netns

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
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
