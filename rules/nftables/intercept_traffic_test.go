package nftables

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// icLab is a LAN, a router and a server, each a namespace: the LAN
// client's default route is the router, which forwards between its LAN
// interface "lan0" and its WAN interface "wan0" and runs the backend and
// two stand-ins for pasvgate's listener (plain for redirect,
// IP_TRANSPARENT for tproxy), and the server listens on ports 21 and 22.
// It is the iptables backend's interception lab, rebuilt here because
// test packages cannot share code.
type icLab struct {
	lan, router, server *netns.NS
	b                   *Backend
	accepted            chan routerConn // each connection a router listener accepts
	served              chan net.Conn   // each connection the server accepts
}

// routerConn is a connection a router listener accepted.
type routerConn struct {
	method string // the listener's: rules.Redirect or rules.TProxy
	c      net.Conn
}

// icAddrs are a family's addresses in the lab.
type icAddrs struct {
	name, nft                            string
	client, routerLAN, routerWAN, server netip.Addr
	bits                                 int
}

var (
	icLab4 = icAddrs{name: "IPv4", nft: "ip", bits: 24,
		client: netip.MustParseAddr("198.51.100.10"), routerLAN: netip.MustParseAddr("198.51.100.1"),
		routerWAN: netip.MustParseAddr("203.0.113.1"), server: netip.MustParseAddr("203.0.113.20")}
	icLab6 = icAddrs{name: "IPv6", nft: "ip6", bits: 64,
		client: netip.MustParseAddr("2001:db8:1::10"), routerLAN: netip.MustParseAddr("2001:db8:1::1"),
		routerWAN: netip.MustParseAddr("2001:db8:2::1"), server: netip.MustParseAddr("2001:db8:2::20")}
)

// The router listeners' ports.
const (
	redirectPort = 2121
	tproxyPort   = 2122
)

func newICLab(t *testing.T) *icLab {
	t.Helper()
	l := &icLab{
		lan: netns.New(t, icPrefix), router: netns.New(t, icPrefix), server: netns.New(t, icPrefix),
		accepted: make(chan routerConn, 16), served: make(chan net.Conn, 16),
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netns.Veth(l.lan, "l0", l.router, "lan0"))
	must(netns.Veth(l.router, "wan0", l.server, "s0"))
	for _, a := range []icAddrs{icLab4, icLab6} {
		must(l.lan.AddAddr("l0", netip.PrefixFrom(a.client, a.bits)))
		must(l.router.AddAddr("lan0", netip.PrefixFrom(a.routerLAN, a.bits)))
		must(l.router.AddAddr("wan0", netip.PrefixFrom(a.routerWAN, a.bits)))
		must(l.server.AddAddr("s0", netip.PrefixFrom(a.server, a.bits)))
		must(l.lan.AddDefaultRoute(a.routerLAN))
		must(l.server.AddDefaultRoute(a.routerWAN))
	}
	must(l.router.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.router.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	// Early demux hands an established connection's packets to their
	// socket before routing, which would deliver them whatever the
	// transparent-socket rules and the policy route do; without it, the
	// test sees whether those deliver them. (Packets that early demux
	// misses, such as the first after the socket's cached route went
	// stale, depend on them on any router.)
	must(l.router.Sysctl("net.ipv4.ip_early_demux", "0"))
	must(l.router.Sysctl("net.ipv4.tcp_early_demux", "0"))

	for _, a := range []icAddrs{icLab4, icLab6} {
		for _, port := range []uint16{21, 22} {
			ln, err := l.server.Listen("tcp", netip.AddrPortFrom(a.server, port).String())
			must(err)
			serveConns(t, ln, func(c net.Conn) bool {
				select {
				case l.served <- c:
					return true
				default:
					return false
				}
			})
		}
	}
	for _, x := range []struct {
		method      string
		transparent bool
		network     string
		addr        string
	}{
		{rules.Redirect, false, "tcp4", fmt.Sprintf("0.0.0.0:%d", redirectPort)},
		{rules.Redirect, false, "tcp6", fmt.Sprintf("[::]:%d", redirectPort)},
		{rules.TProxy, true, "tcp4", fmt.Sprintf("0.0.0.0:%d", tproxyPort)},
		{rules.TProxy, true, "tcp6", fmt.Sprintf("[::]:%d", tproxyPort)},
	} {
		var lc net.ListenConfig
		if x.transparent {
			lc.Control = setTransparent
		}
		var ln net.Listener
		must(l.router.Do(func() (err error) {
			ln, err = lc.Listen(context.Background(), x.network, x.addr)
			return err
		}))
		serveConns(t, ln, func(c net.Conn) bool {
			select {
			case l.accepted <- routerConn{x.method, c}:
				return true
			default:
				return false
			}
		})
	}
	l.b = newBackend(t, l.router, Config{})
	must(l.b.Setup(context.Background()))
	return l
}

// setTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT on tcp6) on a
// listening socket, as tproxy requires of the socket it hands packets to.
func setTransparent(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// serveConns accepts on ln until the test ends, passing each connection
// to got, which must not block; the connections are closed when the test
// ends, and at once when got does not take them.
func serveConns(t *testing.T, ln net.Listener, got func(net.Conn) bool) {
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
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !got(c) {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
}

// soOriginalDst is SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST
// (SOL_IPV6): both 80.
const soOriginalDst = 80

// originalDst reads the destination a redirected connection was made to,
// from conntrack, as pasvgate's listener does.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	sc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	level := unix.SOL_IP
	if netip.MustParseAddrPort(c.LocalAddr().String()).Addr().Is6() {
		level = unix.SOL_IPV6
	}
	var buf [unix.SizeofSockaddrInet6]byte
	var serr error
	err = sc.Control(func(fd uintptr) {
		n := uint32(len(buf))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", serr)
	}
	port := binary.BigEndian.Uint16(buf[2:4])
	switch binary.NativeEndian.Uint16(buf[0:2]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port), nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST: family %d", binary.NativeEndian.Uint16(buf[0:2]))
}

// dial connects from the LAN client to to, giving up after 3 s.
func (l *icLab) dial(t *testing.T, to netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.lan.Dial(ctx, "tcp", "", to.String())
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// routerGot waits for the router's listeners to accept a connection.
func (l *icLab) routerGot(t *testing.T) routerConn {
	t.Helper()
	select {
	case rc := <-l.accepted:
		return rc
	case <-time.After(3 * time.Second):
		t.Fatalf("the router's listeners accepted no connection")
		return routerConn{}
	}
}

// serverGot waits for the server to accept a connection and checks that
// it came from the client itself, to port, untouched by the router.
func (l *icLab) serverGot(t *testing.T, a icAddrs, port uint16) {
	t.Helper()
	select {
	case c := <-l.served:
		local, remote := netip.MustParseAddrPort(c.LocalAddr().String()), netip.MustParseAddrPort(c.RemoteAddr().String())
		if local != netip.AddrPortFrom(a.server, port) || remote.Addr() != a.client {
			t.Errorf("server accepted %s -> %s, want %s -> %s", remote, local, a.client, netip.AddrPortFrom(a.server, port))
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("the server accepted no connection on port %d", port)
	}
}

// nothingElse checks that neither the router nor the server accepted a
// connection that was not waited for.
func (l *icLab) nothingElse(t *testing.T) {
	t.Helper()
	select {
	case rc := <-l.accepted:
		t.Errorf("the router's %s listener accepted %s -> %s unasked", rc.method, rc.c.RemoteAddr(), rc.c.LocalAddr())
	case c := <-l.served:
		t.Errorf("the server accepted %s -> %s unasked", c.RemoteAddr(), c.LocalAddr())
	default:
	}
}

// talk checks that bytes flow both ways between the client's end c and
// the router's end rc: a greeting from the router, a command back.
func talk(t *testing.T, c, rc net.Conn) {
	t.Helper()
	for _, x := range []struct {
		from, to net.Conn
		line     string
	}{{rc, c, "220 pasvgate\r\n"}, {c, rc, "QUIT\r\n"}} {
		x.to.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(x.from, x.line); err != nil {
			t.Fatalf("writing %q: %v", x.line, err)
		}
		got, err := bufio.NewReader(x.to).ReadString('\n')
		if err != nil || got != x.line {
			t.Fatalf("read %q, %v; want %q", got, err, x.line)
		}
	}
}

// TestInterceptTraffic checks with real TCP connections through a router
// that each method, in each family, hands a LAN client's connection to
// port 21 of a server outside to the router's listener, with the original
// destination recoverable (SO_ORIGINAL_DST for redirect, the local address
// for tproxy), and that bytes flow both ways, for tproxy also with the
// tproxy rule gone (so through the transparent-socket rules alone); that
// a connection to another port, or to the router's own address, is not
// intercepted; and that after StopIntercept connections to port 21 reach
// the server again.
func TestInterceptTraffic(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	l := newICLab(t)
	for _, a := range []icAddrs{icLab4, icLab6} {
		for _, method := range []string{rules.Redirect, rules.TProxy} {
			t.Run(a.name+"/"+method, func(t *testing.T) {
				ic := rules.Interception{Iface: "lan0", Port: 21, ListenPort: redirectPort, Method: method}
				if method == rules.TProxy {
					ic.ListenPort = tproxyPort
				}
				ftp := netip.AddrPortFrom(a.server, 21)
				if err := l.b.Intercept(ctx, ic); err != nil {
					t.Fatalf("Intercept: %v", err)
				}
				stopped := false
				defer func() {
					if !stopped {
						l.b.StopIntercept(ctx, ic)
					}
				}()

				c, err := l.dial(t, ftp)
				if err != nil {
					t.Fatalf("dialling %s with interception on: %v", ftp, err)
				}
				rc := l.routerGot(t)
				if rc.method != method {
					t.Fatalf("the router's %s listener got the connection, want the %s one", rc.method, method)
				}
				if remote := netip.MustParseAddrPort(rc.c.RemoteAddr().String()); remote.Addr() != a.client {
					t.Errorf("router accepted a connection from %s, want %s", remote, a.client)
				}
				local := netip.MustParseAddrPort(rc.c.LocalAddr().String())
				if method == rules.Redirect {
					od, err := originalDst(rc.c)
					if err != nil || od != ftp {
						t.Errorf("SO_ORIGINAL_DST = %v, %v; want %s", od, err, ftp)
					}
					if local.Port() != redirectPort {
						t.Errorf("redirected connection's local address %s, want port %d", local, redirectPort)
					}
				} else if local != ftp {
					t.Errorf("transparent connection's local address %s, want %s", local, ftp)
				}
				talk(t, c, rc.c)
				if method == rules.TProxy {
					// Without the tproxy rule, only the transparent-socket
					// rules (and the policy route) can deliver the
					// established connection's packets.
					h := ruleHandle(t, l.router, a.nft, ChainTProxy, interceptComment(ic))
					l.router.MustRun(t, "nft", "delete", "rule", a.nft, TableName, ChainTProxy, "handle", h)
					talk(t, c, rc.c)
					if err := l.b.Intercept(ctx, ic); err != nil {
						t.Fatalf("Intercept to put the rule back: %v", err)
					}
				}

				// Another port goes straight through, untouched.
				if _, err := l.dial(t, netip.AddrPortFrom(a.server, 22)); err != nil {
					t.Fatalf("dialling port 22: %v", err)
				}
				l.serverGot(t, a, 22)
				// The router's own address is not intercepted: nothing
				// listens on its port 21, so the connection is refused.
				own := netip.AddrPortFrom(a.routerLAN, 21)
				if _, err := l.dial(t, own); err == nil {
					t.Errorf("a connection to the router's own %s was accepted", own)
				}
				l.nothingElse(t)

				if err := l.b.StopIntercept(ctx, ic); err != nil {
					t.Fatalf("StopIntercept: %v", err)
				}
				stopped = true
				if _, err := l.dial(t, ftp); err != nil {
					t.Fatalf("dialling %s after StopIntercept: %v", ftp, err)
				}
				l.serverGot(t, a, 21)
				l.nothingElse(t)
				// A redirected connection outlives the interception
				// (conntrack keeps its NAT); for tproxy the socket rules
				// and the policy route are gone with it.
				if method == rules.Redirect {
					talk(t, c, rc.c)
				}
			})
		}
	}
}
