package conntrack

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// nsPrefix names the namespaces of this package's kernel tests.
const nsPrefix = "ntf-ct"

// labFamily is one address family of netns.GatewayLab.
type labFamily struct {
	name                         string
	client, other, gwPub, server netip.Addr
	filler                       func(i int) netip.Addr
	iptables                     string
	inet                         netlink.InetFamily
}

var labFamilies = []labFamily{
	{
		name:   "ipv4",
		client: netip.MustParseAddr("203.0.113.10"), other: netip.MustParseAddr("203.0.113.11"),
		gwPub: netip.MustParseAddr("203.0.113.1"), server: netip.MustParseAddr("192.0.2.10"),
		filler:   func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%250)}) },
		iptables: "iptables", inet: unix.AF_INET,
	},
	{
		name:   "ipv6",
		client: netip.MustParseAddr("2001:db8:1::10"), other: netip.MustParseAddr("2001:db8:1::11"),
		gwPub: netip.MustParseAddr("2001:db8:1::1"), server: netip.MustParseAddr("2001:db8:2::10"),
		filler: func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 3, 14: byte(i >> 8), 15: byte(i)})
		},
		iptables: "ip6tables", inet: unix.AF_INET6,
	},
}

// key names a conntrack entry by its original tuple, for whole-table
// comparisons.
func key(f *netlink.ConntrackFlow) string {
	src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
	dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
	return fmt.Sprintf("%d %s -> %s", f.Forward.Protocol,
		netip.AddrPortFrom(src.Unmap(), f.Forward.SrcPort), netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort))
}

// table lists the gateway's conntrack entries of the family with an
// implementation other than the one under test.
func table(t testing.TB, h *netlink.Handle, inet netlink.InetFamily) map[string]bool {
	t.Helper()
	all, err := h.ConntrackTableList(netlink.ConntrackTable, inet)
	if err != nil {
		t.Fatalf("listing conntrack: %v", err)
	}
	out := map[string]bool{}
	for _, f := range all {
		out[key(f)] = true
	}
	return out
}

// fabricate adds an established TCP (or other proto) entry to the table
// without any traffic, with a reply tuple that is the plain reverse.
func fabricate(t testing.TB, h *netlink.Handle, inet netlink.InetFamily, proto uint8, src, dst netip.AddrPort) {
	t.Helper()
	fabricateTCPState(t, h, inet, proto, src, dst, nl.TCP_CONNTRACK_ESTABLISHED)
}

// fabricateTCPState is fabricate with the TCP state given.
func fabricateTCPState(t testing.TB, h *netlink.Handle, inet netlink.InetFamily, proto uint8, src, dst netip.AddrPort, state uint8) {
	t.Helper()
	f := &netlink.ConntrackFlow{FamilyType: uint8(inet), TimeOut: 600}
	f.Forward = netlink.IPTuple{Protocol: proto, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), SrcPort: src.Port(), DstPort: dst.Port()}
	f.Reverse = netlink.IPTuple{Protocol: proto, SrcIP: dst.Addr().AsSlice(), DstIP: src.Addr().AsSlice(), SrcPort: dst.Port(), DstPort: src.Port()}
	if proto == unix.IPPROTO_TCP {
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: state}
	}
	if err := h.ConntrackCreate(netlink.ConntrackTable, inet, f); err != nil {
		t.Fatalf("creating conntrack entry %s: %v", key(f), err)
	}
}

func TestFlushFlowsKernel(t *testing.T) {
	for _, fam := range labFamilies {
		t.Run(fam.name, func(t *testing.T) { testFlushFlows(t, fam) })
	}
}

// testFlushFlows shows that a flush deletes the entries of its mapping's
// data connections and nothing else: not another mapping's, not another
// client's on the same port, not the same client's unrelated flows, and
// not a thousand others, and not its own closed connection in TIME_WAIT;
// that the kernel, not pasvgate, picked them out; and what that does to
// the connections.
func testFlushFlows(t *testing.T, fam labFamily) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath(fam.iptables); err != nil {
		t.Skipf("needs %s", fam.iptables)
	}
	l := netns.NewGatewayLab(t, nsPrefix)
	server := netip.AddrPortFrom(fam.server, netns.GatewayServerPort)
	pub := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(fam.gwPub, port) }
	// What pasvgate installs for mapping 1 (client -> :40001) and mapping 2
	// (client -> :40002), in the built-in chain for brevity, plus another
	// client's DNAT on mapping 1's port.
	dnat := func(op string, from netip.Addr, port uint16) []string {
		return []string{"-w", "-t", "nat", op, "PREROUTING", "-s", from.String(), "-d", fam.gwPub.String(),
			"-p", "tcp", "--dport", fmt.Sprint(port), "-j", "DNAT", "--to-destination", server.String()}
	}
	rulesIn := [][]string{dnat("-A", fam.client, 40001), dnat("-A", fam.client, 40002), dnat("-A", fam.other, 40001)}
	for _, args := range rulesIn {
		l.GW.MustRun(t, fam.iptables, args...)
	}
	// pasvgate's own FORWARD chain matches conntrack state, as this rule
	// does. Without a rule that uses conntrack, removing the last DNAT
	// rule would switch connection tracking off in the namespace, and
	// every established flow would lose its NAT binding, flushed or not.
	l.GW.MustRun(t, fam.iptables, "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	connect := func(from netip.Addr, to netip.AddrPort) net.Conn {
		t.Helper()
		c, err := l.Dial(t, from, to, 5*time.Second)
		if err != nil {
			t.Fatalf("connecting %s -> %s: %v", from, to, err)
		}
		if err := netns.Echo(c, "before"); err != nil {
			t.Fatalf("connection %s -> %s: %v", from, to, err)
		}
		return c
	}
	m1a, m1b := connect(fam.client, pub(40001)), connect(fam.client, pub(40001))
	m2 := connect(fam.client, pub(40002))
	other := connect(fam.other, pub(40001))
	direct := connect(fam.client, server) // routed through the gateway, no NAT

	h, err := netlink.NewHandleAt(l.GW.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	// Entries that share all but one field with mapping 1's filter; 500
	// from elsewhere to the same public port; 500 from the same client to
	// other public ports.
	fabricate(t, h, fam.inet, unix.IPPROTO_UDP, netip.AddrPortFrom(fam.client, 5000), pub(40001))
	fabricate(t, h, fam.inet, unix.IPPROTO_TCP, pub(40001), netip.AddrPortFrom(fam.client, 5000))
	fabricate(t, h, fam.inet, unix.IPPROTO_TCP, netip.AddrPortFrom(fam.client, 5000), pub(40003))
	// An earlier data connection of the client to the port, closed: the
	// flush keeps it, so that the kernel's SNAT does not hand its tuple to
	// a new connection while the server may still hold it in TIME_WAIT
	// (rulestest.SNATPortReuse).
	fabricateTCPState(t, h, fam.inet, unix.IPPROTO_TCP, netip.AddrPortFrom(fam.client, 5001), pub(40001), nl.TCP_CONNTRACK_TIME_WAIT)
	const fillers = 500
	for i := range fillers {
		fabricate(t, h, fam.inet, unix.IPPROTO_TCP, netip.AddrPortFrom(fam.filler(i), uint16(1024+i)), pub(40001))
		fabricate(t, h, fam.inet, unix.IPPROTO_TCP, netip.AddrPortFrom(fam.client, uint16(10000+i)), pub(uint16(41000+i)))
	}

	m1Keys := map[string]bool{}
	for _, c := range []net.Conn{m1a, m1b} {
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		m1Keys[fmt.Sprintf("%d %s -> %s", unix.IPPROTO_TCP, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), pub(40001))] = true
	}
	before := table(t, h, fam.inet)
	for k := range m1Keys {
		if !before[k] {
			t.Fatalf("no entry %s before the flush; table: %v", k, slices.Sorted(maps.Keys(before)))
		}
	}
	if len(before) < 2*fillers+len(m1Keys)+6 {
		t.Fatalf("%d entries before the flush, want at least %d", len(before), 2*fillers+len(m1Keys)+6)
	}

	var f *Flusher
	if err := l.GW.Do(func() error { f, err = New(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m := rules.Mapping{ID: "m1", Source: fam.client, Public: pub(40001), Target: server}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The kernel answers the dump with mapping 1's three entries (two
	// flows and the one in TIME_WAIT) and nothing else of the table's
	// thousand and more. For IPv6 it filters
	// by protocol and port only (see filter6), so the other client's
	// connection and the 500 others to the port come back too, and are
	// left alone.
	wantIgnored := 0
	if fam.inet == unix.AF_INET6 {
		wantIgnored = fillers + 1
	}
	f.mu.Lock()
	es, ignored, err := f.dump(ctx, m)
	f.mu.Unlock()
	if err != nil || len(es) != 3 || ignored != wantIgnored {
		t.Fatalf("dump = %d entries and %d others, %v; want the 3 of mapping 1 and %d others", len(es), ignored, err, wantIgnored)
	}

	// FlushFlows runs on this goroutine, outside the gateway's namespace:
	// the Flusher must act where it was made.
	n, err := f.FlushFlows(ctx, m)
	if err != nil || n != 2 {
		t.Fatalf("FlushFlows = %d, %v; want 2, nil", n, err)
	}
	after := table(t, h, fam.inet)
	want := maps.Clone(before)
	maps.DeleteFunc(want, func(k string, _ bool) bool { return m1Keys[k] })
	if !maps.Equal(after, want) {
		var gone, extra []string
		for k := range want {
			if !after[k] {
				gone = append(gone, k)
			}
		}
		for k := range after {
			if !want[k] {
				extra = append(extra, k)
			}
		}
		t.Errorf("after the flush: deleted %v besides mapping 1's; left %v", gone, extra)
	}
	if n, err := f.FlushFlows(ctx, m); err != nil || n != 0 {
		t.Errorf("second FlushFlows = %d, %v; want 0, nil", n, err)
	}

	// The rules come out, as they do when a session ends.
	for _, args := range rulesIn {
		args[3] = "-D"
		l.GW.MustRun(t, fam.iptables, args...)
	}
	// The connections whose entries were kept keep flowing without their
	// rules: this is why the flush is needed at all.
	for name, c := range map[string]net.Conn{"mapping 2": m2, "other client": other, "direct": direct} {
		if err := netns.EchoAfter(c, "", "after"); err != nil {
			t.Errorf("%s's connection after the flush: %v", name, err)
		}
	}
	// The flushed ones are not pinned: their next segment reaches the
	// gateway itself, which has no socket on the port and resets them.
	for _, c := range []net.Conn{m1a, m1b} {
		if err := netns.Echo(c, "after"); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("flushed connection after its rule was removed: %v, want connection reset by the gateway", err)
		}
	}
}

// BenchmarkFlush measures one flush of a mapping with no entries in a
// gateway table of n other entries: the kernel-filtered dump against the
// whole-table dump matched in userspace that it replaced
// (netlink.ConntrackDeleteFilters).
func BenchmarkFlush(b *testing.B) {
	fam := labFamilies[0]
	for _, n := range []int{1000, 10000, 50000} {
		gw := netns.New(b, nsPrefix+"b")
		h, err := netlink.NewHandleAt(gw.Handle(), unix.NETLINK_NETFILTER)
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			fabricate(b, h, fam.inet, unix.IPPROTO_TCP,
				netip.AddrPortFrom(fam.filler(i), uint16(1024+i/250)), netip.AddrPortFrom(fam.gwPub, 40001))
		}
		var f *Flusher
		if err := gw.Do(func() error { f, err = New(); return err }); err != nil {
			b.Fatal(err)
		}
		m := rules.Mapping{ID: "m1", Source: fam.client, Public: netip.AddrPortFrom(fam.gwPub, 40001),
			Target: netip.AddrPortFrom(fam.server, 30000)}
		b.Run(fmt.Sprintf("entries=%d/filtered", n), func(b *testing.B) {
			for b.Loop() {
				if got, err := f.FlushFlows(context.Background(), m); err != nil || got != 0 {
					b.Fatal(got, err)
				}
			}
		})
		b.Run(fmt.Sprintf("entries=%d/userspace", n), func(b *testing.B) {
			var filter netlink.ConntrackFilter
			_ = filter.AddProtocol(unix.IPPROTO_TCP)
			_ = filter.AddIP(netlink.ConntrackOrigSrcIP, net.IP(fam.client.AsSlice()))
			_ = filter.AddIP(netlink.ConntrackOrigDstIP, net.IP(fam.gwPub.AsSlice()))
			_ = filter.AddPort(netlink.ConntrackOrigDstPort, 40001)
			for b.Loop() {
				if got, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam.inet, &filter); err != nil || got != 0 {
					b.Fatal(got, err)
				}
			}
		})
		f.Close()
		h.Close()
	}
}
