package conntrack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

func mapping(src, public string) rules.Mapping {
	m := rules.Mapping{
		ID:     "m1",
		Source: netip.MustParseAddr(src),
		Public: netip.MustParseAddrPort(public),
	}
	if m.Is6() {
		m.Target = netip.MustParseAddrPort("[2001:db8:2::10]:30000")
	} else {
		m.Target = netip.MustParseAddrPort("192.0.2.10:30000")
	}
	return m
}

func flow(proto uint8, src, dst string, dport uint16, replySrc string) *netlink.ConntrackFlow {
	f := &netlink.ConntrackFlow{}
	f.Forward.Protocol = proto
	f.Forward.SrcIP = net.ParseIP(src)
	f.Forward.DstIP = net.ParseIP(dst)
	f.Forward.SrcPort = 51000
	f.Forward.DstPort = dport
	f.Reverse.Protocol = proto
	f.Reverse.SrcIP = net.ParseIP(replySrc)
	f.Reverse.DstIP = net.ParseIP(src)
	f.Reverse.SrcPort = 30000
	f.Reverse.DstPort = 51000
	return f
}

// TestFlowFilter checks, without root, that the filter matches exactly
// the original tuple of the mapping's data connections.
func TestFlowFilter(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    rules.Mapping
		f    *netlink.ConntrackFlow
		want bool
	}{
		{"the data connection", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "203.0.113.10", "203.0.113.2", 40001, "192.0.2.10"), true},
		{"16-byte IPv4 in the entry", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "::ffff:203.0.113.10", "::ffff:203.0.113.2", 40001, "192.0.2.10"), true},
		{"other client", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "203.0.113.11", "203.0.113.2", 40001, "192.0.2.10"), false},
		{"other public port", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "203.0.113.10", "203.0.113.2", 40002, "192.0.2.10"), false},
		{"other public address", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "203.0.113.10", "203.0.113.3", 40001, "192.0.2.10"), false},
		{"udp", mapping("203.0.113.10", "203.0.113.2:40001"), flow(17, "203.0.113.10", "203.0.113.2", 40001, "192.0.2.10"), false},
		// The server's own connection back to the client has the mapping's
		// addresses only in its reply tuple.
		{"reverse direction", mapping("203.0.113.10", "203.0.113.2:40001"), flow(6, "203.0.113.2", "203.0.113.10", 40001, "203.0.113.10"), false},
		{"ipv6", mapping("2001:db8:1::10", "[2001:db8:1::2]:40001"), flow(6, "2001:db8:1::10", "2001:db8:1::2", 40001, "2001:db8:2::10"), true},
		{"ipv6 other client", mapping("2001:db8:1::10", "[2001:db8:1::2]:40001"), flow(6, "2001:db8:1::11", "2001:db8:1::2", 40001, "2001:db8:2::10"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, fam, err := flowFilter(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if want := netlink.InetFamily(unix.AF_INET); tc.m.Is6() {
				if fam != unix.AF_INET6 {
					t.Errorf("family %d, want AF_INET6", fam)
				}
			} else if fam != want {
				t.Errorf("family %d, want AF_INET", fam)
			}
			if got := f.MatchConntrackFlow(tc.f); got != tc.want {
				t.Errorf("match %v, want %v for %s", got, tc.want, tc.f)
			}
		})
	}
}

func TestFlushFlowsRefusesInvalid(t *testing.T) {
	f := &Flusher{} // never reaches the kernel
	m := mapping("203.0.113.10", "203.0.113.2:40001")
	m.Source = netip.Addr{}
	_, err := f.FlushFlows(context.Background(), m)
	if !errors.Is(err, rules.ErrInvalid) || !strings.HasPrefix(err.Error(), "flushing flows of mapping m1: ") {
		t.Errorf("FlushFlows(invalid) = %v, want a wrapped rules.ErrInvalid", err)
	}
	_, err = f.FlushFlows(context.Background(), mapping("203.0.113.10", "203.0.113.2:40001"))
	if !errors.Is(err, ErrClosed) {
		t.Errorf("FlushFlows on a closed Flusher = %v, want ErrClosed", err)
	}
}

func TestRetryInterrupted(t *testing.T) {
	n := 0
	err := retryInterrupted(context.Background(), func() error { n++; return netlink.ErrDumpInterrupted })
	if n != maxDumpAttempts || !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Errorf("always interrupted: %d calls, %v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	err = retryInterrupted(ctx, func() error { n++; cancel(); return netlink.ErrDumpInterrupted })
	if n != 1 || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %d calls, %v; want 1 call and context.Canceled", n, err)
	}
}

// family is one address family's lab plan: client -- gw -- server.
type family struct {
	name                          string
	client, gwPub, gwPriv, server netip.Addr
	bits                          int
	iptables, forwarding          string
	inet                          netlink.InetFamily
}

var families = []family{
	{
		name:   "ipv4",
		client: netip.MustParseAddr("203.0.113.10"), gwPub: netip.MustParseAddr("203.0.113.2"),
		gwPriv: netip.MustParseAddr("192.0.2.1"), server: netip.MustParseAddr("192.0.2.10"),
		bits: 24, iptables: "iptables", forwarding: "net.ipv4.ip_forward", inet: unix.AF_INET,
	},
	{
		name:   "ipv6",
		client: netip.MustParseAddr("2001:db8:1::10"), gwPub: netip.MustParseAddr("2001:db8:1::2"),
		gwPriv: netip.MustParseAddr("2001:db8:2::1"), server: netip.MustParseAddr("2001:db8:2::10"),
		bits: 64, iptables: "ip6tables", forwarding: "net.ipv6.conf.all.forwarding", inet: unix.AF_INET6,
	},
}

// server accepts one connection on a port of the server namespace and
// echoes what it reads, counting the bytes.
type server struct {
	ln    net.Listener
	bytes atomic.Int64
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func (s *server) serve() {
	defer s.wg.Done()
	c, err := s.ln.Accept()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		s.bytes.Add(int64(n))
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echo sends msg over c and reads it back, bounded.
func echo(c net.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// flows returns the gateway's conntrack entries from client to the public
// address and port.
func flows(t *testing.T, h *netlink.Handle, fam family, port uint16) []*netlink.ConntrackFlow {
	t.Helper()
	all, err := h.ConntrackTableList(netlink.ConntrackTable, fam.inet)
	if err != nil {
		t.Fatalf("listing conntrack: %v", err)
	}
	var out []*netlink.ConntrackFlow
	for _, f := range all {
		src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		if f.Forward.Protocol == unix.IPPROTO_TCP && src.Unmap() == fam.client && dst.Unmap() == fam.gwPub && f.Forward.DstPort == port {
			out = append(out, f)
		}
	}
	return out
}

func TestFlushFlowsKernel(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) { testFlushFlows(t, fam) })
	}
}

func testFlushFlows(t *testing.T, fam family) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath(fam.iptables); err != nil {
		t.Skipf("needs %s", fam.iptables)
	}
	client, gw, srv := netns.New(t, "pgnl-ct"), netns.New(t, "pgnl-ct"), netns.New(t, "pgnl-ct")
	for _, n := range []*netns.NS{client, gw, srv} {
		// A tentative link-local address delays neighbour discovery by
		// seconds; the test addresses skip DAD too (AddAddr).
		if err := n.Sysctl("net.ipv6.conf.default.accept_dad", "0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := netns.Veth(client, "c0", gw, "pub0"); err != nil {
		t.Fatal(err)
	}
	if err := netns.Veth(gw, "priv0", srv, "s0"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		n   *netns.NS
		dev string
		a   netip.Addr
	}{{client, "c0", fam.client}, {gw, "pub0", fam.gwPub}, {gw, "priv0", fam.gwPriv}, {srv, "s0", fam.server}} {
		if err := a.n.AddAddr(a.dev, netip.PrefixFrom(a.a, fam.bits)); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.AddDefaultRoute(fam.gwPriv); err != nil {
		t.Fatal(err)
	}
	if err := gw.Sysctl(fam.forwarding, "1"); err != nil {
		t.Fatal(err)
	}
	// What pasvgate installs for two mappings, in the built-in chains for
	// brevity: DNAT from exactly the client, and a FORWARD that admits
	// only the DNATed connections and their replies.
	hostport := func(a netip.Addr, port string) string {
		if a.Is6() {
			return "[" + a.String() + "]:" + port
		}
		return a.String() + ":" + port
	}
	dnat := func(op, pub, priv string) []string {
		return []string{"-w", "-t", "nat", op, "PREROUTING", "-s", fam.client.String(), "-d", fam.gwPub.String(),
			"-p", "tcp", "--dport", pub, "-j", "DNAT", "--to-destination", hostport(fam.server, priv)}
	}
	for _, args := range [][]string{
		dnat("-A", "40001", "30000"),
		dnat("-A", "40002", "30001"),
		{"-w", "-P", "FORWARD", "DROP"},
		{"-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-w", "-A", "FORWARD", "-s", fam.client.String(), "-d", fam.server.String(), "-p", "tcp", "-m", "multiport", "--dports", "30000,30001", "-j", "ACCEPT"},
	} {
		gw.MustRun(t, fam.iptables, args...)
	}

	// Keep-alives are off on both ends: a probe is a packet, and a packet
	// after the flush would re-create the entry this test wants gone.
	var servers [2]*server
	for i, port := range []string{"30000", "30001"} {
		s := &server{}
		err := srv.Do(func() error {
			var err error
			s.ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", hostport(fam.server, port))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.wg.Add(1)
		go s.serve()
		t.Cleanup(s.close)
		servers[i] = s
	}
	dial := func(port string) net.Conn {
		t.Helper()
		var c net.Conn
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := client.Do(func() error {
			var err error
			c, err = (&net.Dialer{KeepAlive: -1}).DialContext(ctx, "tcp", hostport(fam.gwPub, port))
			return err
		})
		if err != nil {
			t.Fatalf("dialing the gateway's port %s: %v", port, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1, c2 := dial("40001"), dial("40002")
	for i, c := range []net.Conn{c1, c2} {
		if err := echo(c, "before"); err != nil {
			t.Fatalf("connection %d through the DNAT: %v", i+1, err)
		}
	}

	h, err := netlink.NewHandleAt(gw.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	for _, port := range []uint16{40001, 40002} {
		fl := flows(t, h, fam, port)
		if len(fl) != 1 {
			t.Fatalf("%d conntrack entries for port %d before the flush, want 1: %v", len(fl), port, fl)
		}
		// The entry carries the DNAT binding: replies come from the server.
		if rs, _ := netip.AddrFromSlice(fl[0].Reverse.SrcIP); rs.Unmap() != fam.server {
			t.Fatalf("entry for port %d not DNATed: %s", port, fl[0])
		}
	}

	var f *Flusher
	if err := gw.Do(func() error { f, err = New(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m := rules.Mapping{
		ID:     "m1",
		Source: fam.client,
		Public: netip.AddrPortFrom(fam.gwPub, 40001),
		Target: netip.AddrPortFrom(fam.server, 30000),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// FlushFlows runs on this goroutine, outside the gateway's namespace:
	// the Flusher must act where it was made.
	n, err := f.FlushFlows(ctx, m)
	if err != nil || n != 1 {
		t.Fatalf("FlushFlows = %d, %v; want 1, nil", n, err)
	}
	if fl := flows(t, h, fam, 40001); len(fl) != 0 {
		t.Errorf("entries left for the flushed mapping: %v", fl)
	}
	if fl := flows(t, h, fam, 40002); len(fl) != 1 {
		t.Errorf("%d entries for the other mapping after the flush, want 1 kept", len(fl))
	}
	if n, err := f.FlushFlows(ctx, m); err != nil || n != 0 {
		t.Errorf("second FlushFlows = %d, %v; want 0, nil", n, err)
	}

	// The mappings' rules come out, as they do when a session ends.
	gw.MustRun(t, fam.iptables, dnat("-D", "40001", "30000")...)
	gw.MustRun(t, fam.iptables, dnat("-D", "40002", "30001")...)

	// The connection whose entry was kept keeps flowing without its rule:
	// this is why the flush is needed at all.
	if err := echo(c2, "after"); err != nil {
		t.Errorf("kept connection after its rule was removed: %v", err)
	}
	if got := servers[1].bytes.Load(); got != int64(len("before")+len("after")) {
		t.Errorf("server 2 read %d bytes, want %d", got, len("before")+len("after"))
	}

	// The flushed one is not pinned: its next segment reaches the gateway
	// itself, which has no socket on the port and resets it.
	err = echo(c1, "after")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("flushed connection after its rule was removed: %v, want connection reset by the gateway", err)
	}
	if got := servers[0].bytes.Load(); got != int64(len("before")) {
		t.Errorf("server 1 read %d bytes, want %d: the flushed connection still reached it", got, len("before"))
	}
}
