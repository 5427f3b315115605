package netns

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
)

// The ports of an interception lab's router listeners: the stand-ins for
// pasvgate's listener that an Interception's ListenPort names.
const (
	InterceptRedirectPort = 2121
	InterceptTProxyPort   = 2122
)

// InterceptAddrs are one family's addresses in an interception lab; the
// LAN and the WAN are each one subnet of Bits.
type InterceptAddrs struct {
	Name                                 string
	Client, RouterLAN, RouterWAN, Server netip.Addr
	Bits                                 int
}

// The interception lab's two families, documentation addresses only. The
// server is on the router's WAN side, so a client's connection to it is
// forwarded, which is what the backends intercept.
var (
	InterceptV4 = InterceptAddrs{Name: "IPv4", Bits: 24,
		Client: netip.MustParseAddr("198.51.100.10"), RouterLAN: netip.MustParseAddr("198.51.100.1"),
		RouterWAN: netip.MustParseAddr("203.0.113.1"), Server: netip.MustParseAddr("203.0.113.20")}
	InterceptV6 = InterceptAddrs{Name: "IPv6", Bits: 64,
		Client: netip.MustParseAddr("2001:db8:1::10"), RouterLAN: netip.MustParseAddr("2001:db8:1::1"),
		RouterWAN: netip.MustParseAddr("2001:db8:2::1"), Server: netip.MustParseAddr("2001:db8:2::20")}
)

// InterceptLab is the topology of the kernel backends' interception
// traffic tests: a LAN, a router and a server, each a namespace. The LAN
// client's default route is the router, which forwards between its LAN
// interface "lan0" and its WAN interface "wan0" and runs two stand-ins for
// pasvgate's listener, a plain one on InterceptRedirectPort for
// rules.Redirect and an IP_TRANSPARENT one on InterceptTProxyPort for
// rules.TProxy; the server listens on ports 21 and 22. The router has no
// rules: each backend's test installs its own there.
type InterceptLab struct {
	LAN, Router, Server *NS
	// Accepted gets each connection a router listener accepts; one that
	// finds it full is closed, so a test that reads none still ends.
	Accepted chan RouterConn
	// Served gets each connection the server accepts, in the same way.
	Served chan net.Conn
}

// RouterConn is a connection one of the router's listeners accepted.
type RouterConn struct {
	Method string // the listener's: rules.Redirect or rules.TProxy
	Conn   net.Conn
}

// NewInterceptLab builds the topology with namespaces named after prefix,
// in both families; everything is removed when the test ends.
func NewInterceptLab(t *testing.T, prefix string) *InterceptLab {
	t.Helper()
	l := &InterceptLab{
		LAN: New(t, prefix), Router: New(t, prefix), Server: New(t, prefix),
		Accepted: make(chan RouterConn, 16), Served: make(chan net.Conn, 16),
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(Veth(l.LAN, "l0", l.Router, "lan0"))
	must(Veth(l.Router, "wan0", l.Server, "s0"))
	for _, a := range []InterceptAddrs{InterceptV4, InterceptV6} {
		must(l.LAN.AddAddr("l0", netip.PrefixFrom(a.Client, a.Bits)))
		must(l.Router.AddAddr("lan0", netip.PrefixFrom(a.RouterLAN, a.Bits)))
		must(l.Router.AddAddr("wan0", netip.PrefixFrom(a.RouterWAN, a.Bits)))
		must(l.Server.AddAddr("s0", netip.PrefixFrom(a.Server, a.Bits)))
		must(l.LAN.AddDefaultRoute(a.RouterLAN))
		must(l.Server.AddDefaultRoute(a.RouterWAN))
	}
	must(l.Router.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.Router.Sysctl("net.ipv6.conf.all.forwarding", "1"))

	for _, a := range []InterceptAddrs{InterceptV4, InterceptV6} {
		for _, port := range []uint16{21, 22} {
			ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(a.Server, port).String())
			must(err)
			serveConns(t, ln, func(c net.Conn) bool {
				select {
				case l.Served <- c:
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
		{rules.Redirect, false, "tcp4", fmt.Sprintf("0.0.0.0:%d", InterceptRedirectPort)},
		{rules.Redirect, false, "tcp6", fmt.Sprintf("[::]:%d", InterceptRedirectPort)},
		{rules.TProxy, true, "tcp4", fmt.Sprintf("0.0.0.0:%d", InterceptTProxyPort)},
		{rules.TProxy, true, "tcp6", fmt.Sprintf("[::]:%d", InterceptTProxyPort)},
	} {
		var lc net.ListenConfig
		if x.transparent {
			lc.Control = SetTransparent
		}
		var ln net.Listener
		must(l.Router.Do(func() (err error) {
			ln, err = lc.Listen(context.Background(), x.network, x.addr)
			return err
		}))
		serveConns(t, ln, func(c net.Conn) bool {
			select {
			case l.Accepted <- RouterConn{x.method, c}:
				return true
			default:
				return false
			}
		})
	}
	return l
}

// SetTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT on tcp6) on a
// listening socket, as tproxy requires of the socket it hands packets to.
// It is a net.ListenConfig Control function.
func SetTransparent(network, _ string, rc syscall.RawConn) error {
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

// OriginalDst reads the destination a redirected connection was made to,
// from conntrack, as pasvgate's listener does.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
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

// Dial connects from the LAN client to to, giving up after 3 s. The
// connection is closed when the test ends.
func (l *InterceptLab) Dial(t *testing.T, to netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.LAN.Dial(ctx, "tcp", "", to.String())
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// RouterGot waits for the router's listeners to accept a connection.
func (l *InterceptLab) RouterGot(t *testing.T) RouterConn {
	t.Helper()
	select {
	case rc := <-l.Accepted:
		return rc
	case <-time.After(3 * time.Second):
		t.Fatalf("the router's listeners accepted no connection")
		return RouterConn{}
	}
}

// ServerGot waits for the server to accept a connection and checks that
// it came from the client itself, to port, untouched by the router.
func (l *InterceptLab) ServerGot(t *testing.T, a InterceptAddrs, port uint16) {
	t.Helper()
	select {
	case c := <-l.Served:
		local, remote := netip.MustParseAddrPort(c.LocalAddr().String()), netip.MustParseAddrPort(c.RemoteAddr().String())
		if local != netip.AddrPortFrom(a.Server, port) || remote.Addr() != a.Client {
			t.Errorf("server accepted %s -> %s, want %s -> %s", remote, local, a.Client, netip.AddrPortFrom(a.Server, port))
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("the server accepted no connection on port %d", port)
	}
}

// NothingElse checks that neither the router nor the server accepted a
// connection that was not waited for.
func (l *InterceptLab) NothingElse(t *testing.T) {
	t.Helper()
	select {
	case rc := <-l.Accepted:
		t.Errorf("the router's %s listener accepted %s -> %s unasked", rc.Method, rc.Conn.RemoteAddr(), rc.Conn.LocalAddr())
	case c := <-l.Served:
		t.Errorf("the server accepted %s -> %s unasked", c.RemoteAddr(), c.LocalAddr())
	default:
	}
}

// Talk checks that bytes flow both ways between the client's end c and
// the router's end rc: a greeting from the router, a command back.
func Talk(t *testing.T, c, rc net.Conn) {
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
