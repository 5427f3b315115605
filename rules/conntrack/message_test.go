package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
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

func tcp(src, dst string, sport, dport uint16) tuple {
	return tuple{proto: unix.IPPROTO_TCP, src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst), sport: sport, dport: dport}
}

// TestMatches checks, without root, the userspace half of the filter:
// exactly the original tuple of the mapping's data connections.
func TestMatches(t *testing.T) {
	m4 := mapping("203.0.113.10", "203.0.113.2:40001")
	m6 := mapping("2001:db8:1::10", "[2001:db8:1::2]:40001")
	udp := tcp("203.0.113.10", "203.0.113.2", 51000, 40001)
	udp.proto = unix.IPPROTO_UDP
	for _, tc := range []struct {
		name string
		m    rules.Mapping
		t    tuple
		want bool
	}{
		{"the data connection", m4, tcp("203.0.113.10", "203.0.113.2", 51000, 40001), true},
		{"any source port", m4, tcp("203.0.113.10", "203.0.113.2", 1, 40001), true},
		{"other client", m4, tcp("203.0.113.11", "203.0.113.2", 51000, 40001), false},
		{"other public port", m4, tcp("203.0.113.10", "203.0.113.2", 51000, 40002), false},
		{"other public address", m4, tcp("203.0.113.10", "203.0.113.3", 51000, 40001), false},
		{"udp", m4, udp, false},
		// The server's own connection back to the client has the mapping's
		// addresses only in its reply tuple.
		{"reverse direction", m4, tcp("203.0.113.2", "203.0.113.10", 40001, 51000), false},
		{"ipv6", m6, tcp("2001:db8:1::10", "2001:db8:1::2", 51000, 40001), true},
		{"ipv6 other client", m6, tcp("2001:db8:1::11", "2001:db8:1::2", 51000, 40001), false},
	} {
		if got := tc.t.matches(tc.m); got != tc.want {
			t.Errorf("%s: match %v, want %v", tc.name, got, tc.want)
		}
	}
}

// body returns a request's message without its netlink header, as the
// kernel's parser (and parseEntry) sees it.
func body(t *testing.T, req *nl.NetlinkRequest) []byte {
	t.Helper()
	b := req.Serialize()
	if int(binary.NativeEndian.Uint32(b)) != len(b) {
		t.Fatalf("header length %d, message %d bytes", binary.NativeEndian.Uint32(b), len(b))
	}
	return b[unix.SizeofNlMsghdr:]
}

// TestDumpRequest checks the filter the kernel is asked to apply: the
// mapping's source, public address and port, TCP, and no source port.
func TestDumpRequest(t *testing.T) {
	for _, m := range []rules.Mapping{
		mapping("203.0.113.10", "203.0.113.2:40001"),
		mapping("2001:db8:1::10", "[2001:db8:1::2]:40001"),
	} {
		req := dumpRequest(m)
		if req.Type != unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET || req.Flags != unix.NLM_F_REQUEST|unix.NLM_F_DUMP {
			t.Errorf("%s: type %#x flags %#x, want a ctnetlink GET dump", m.Source, req.Type, req.Flags)
		}
		b := body(t, req)
		if b[0] != family(m) {
			t.Errorf("%s: family %d", m.Source, b[0])
		}
		e, err := parseEntry(b)
		if err != nil {
			t.Fatal(err)
		}
		want := tuple{proto: unix.IPPROTO_TCP, src: m.Source, dst: m.Public.Addr(), dport: m.Public.Port()}
		if e.orig != want || e.hasID || e.hasZone {
			t.Errorf("%s: request tuple %+v, want %+v", m.Source, e, want)
		}
		attrs, err := parseAttrs(b[nl.SizeofNfgenmsg:])
		if err != nil {
			t.Fatal(err)
		}
		var flags uint32
		for _, a := range attrs {
			if a.typ == ctaFilter {
				inner, err := parseAttrs(a.val)
				if err != nil || len(inner) != 1 || inner[0].typ != ctaFilterOrigFlags {
					t.Fatalf("CTA_FILTER = %v, %v", inner, err)
				}
				flags = binary.NativeEndian.Uint32(inner[0].val)
			}
		}
		want4, want6 := uint32(1<<0|1<<1|1<<3|1<<5), uint32(1<<3|1<<5)
		if !m.Is6() && flags != want4 {
			t.Errorf("%s: CTA_FILTER_ORIG_FLAGS %#x, want src, dst, protocol and destination port", m.Source, flags)
		}
		if m.Is6() && flags != want6 {
			t.Errorf("%s: CTA_FILTER_ORIG_FLAGS %#x, want protocol and destination port", m.Source, flags)
		}
	}
}

// TestDeleteRequest checks that a delete names the entry exactly: its
// whole tuple, source port included, its id, and its zones.
func TestDeleteRequest(t *testing.T) {
	for _, e := range []entry{
		{orig: tcp("203.0.113.10", "203.0.113.2", 51000, 40001), id: 0xdeadbeef, hasID: true},
		{orig: tcp("2001:db8:1::10", "2001:db8:1::2", 51000, 40001), id: 7, hasID: true, zone: 3, hasZone: true},
		{orig: tuple{proto: unix.IPPROTO_TCP, src: netip.MustParseAddr("203.0.113.10"), dst: netip.MustParseAddr("203.0.113.2"), sport: 1, dport: 2, zone: 9, hasZone: true}},
	} {
		req := deleteRequest(family(rules.Mapping{Public: netip.AddrPortFrom(e.orig.dst, 1)}), e)
		if req.Type != unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_DELETE || req.Flags&unix.NLM_F_ACK == 0 || req.Flags&unix.NLM_F_DUMP != 0 {
			t.Errorf("type %#x flags %#x, want an acknowledged ctnetlink DELETE", req.Type, req.Flags)
		}
		got, err := parseEntry(body(t, req))
		if err != nil {
			t.Fatal(err)
		}
		if got != e {
			t.Errorf("delete request carries %+v, want %+v", got, e)
		}
	}
}

// TestParseEntryTruncated feeds every prefix of a valid message: each must
// fail or parse, never panic.
func TestParseEntryTruncated(t *testing.T) {
	b := body(t, deleteRequest(unix.AF_INET6, entry{orig: tcp("2001:db8:1::10", "2001:db8:1::2", 1, 2), id: 1, hasID: true, zone: 1, hasZone: true}))
	for n := range len(b) {
		_, _ = parseEntry(b[:n])
	}
	if _, err := parseEntry(b[:nl.SizeofNfgenmsg]); err == nil {
		t.Error("an entry without a tuple parsed")
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
	err := retryInterrupted(context.Background(), func() error { n++; return nl.ErrDumpInterrupted })
	if n != maxDumpAttempts || !errors.Is(err, nl.ErrDumpInterrupted) {
		t.Errorf("always interrupted: %d calls, %v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	err = retryInterrupted(ctx, func() error { n++; cancel(); return nl.ErrDumpInterrupted })
	if n != 1 || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %d calls, %v; want 1 call and context.Canceled", n, err)
	}
}
