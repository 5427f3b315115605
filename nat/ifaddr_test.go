package nat

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules/conntrack"
	"github.com/pasvgate/pasvgate/test/netns"
)

// The conntrack Flusher is what run passes as Config.Flows.
var _ FlowFlusher = (*conntrack.Flusher)(nil)

func nlAddr(s string, flags, scope int) netlink.Addr {
	p := netip.MustParsePrefix(s)
	return netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Flags: flags,
		Scope: scope,
	}
}

func TestPickAddr(t *testing.T) {
	const (
		global = unix.RT_SCOPE_UNIVERSE
		link   = unix.RT_SCOPE_LINK
		host   = unix.RT_SCOPE_HOST
	)
	v4a := nlAddr("203.0.113.5/24", 0, global)
	v4b := nlAddr("203.0.113.6/24", unix.IFA_F_SECONDARY, global)
	v4low := nlAddr("203.0.113.4/24", unix.IFA_F_SECONDARY, global)
	v6a := nlAddr("2001:db8::5/64", unix.IFA_F_PERMANENT, global)
	v6b := nlAddr("2001:db8::8/64", unix.IFA_F_PERMANENT, global)
	for _, tc := range []struct {
		name  string
		addrs []netlink.Addr
		cur   string
		v6    bool
		want  string // "" for none
	}{
		{"empty", nil, "", false, ""},
		{"one", []netlink.Addr{v4a}, "", false, "203.0.113.5"},
		{"lowest when nothing current", []netlink.Addr{v4b, v4a}, "", false, "203.0.113.5"},
		{"keeps current while it stays", []netlink.Addr{v4a, v4b, v4low}, "203.0.113.6", false, "203.0.113.6"},
		{"lowest when current gone", []netlink.Addr{v4b, v4low}, "203.0.113.5", false, "203.0.113.4"},
		// For IPv4 the TEMPORARY bit means secondary: no penalty.
		{"ipv4 secondary is not temporary", []netlink.Addr{v4b, nlAddr("203.0.113.9/24", 0, global)}, "", false, "203.0.113.6"},
		{"family v4 ignores v6", []netlink.Addr{v6a}, "", false, ""},
		{"family v6 ignores v4", []netlink.Addr{v4a, v6b}, "", true, "2001:db8::8"},
		{"loopback", []netlink.Addr{nlAddr("127.0.0.1/8", 0, host)}, "", false, ""},
		{"loopback scope global", []netlink.Addr{nlAddr("127.0.0.2/8", 0, global)}, "", false, ""},
		{"ipv4 link-local", []netlink.Addr{nlAddr("169.254.1.1/16", 0, link)}, "", false, ""},
		{"host scope", []netlink.Addr{nlAddr("203.0.113.5/24", 0, host)}, "", false, ""},
		{"ipv6 link-local", []netlink.Addr{nlAddr("fe80::1/64", unix.IFA_F_PERMANENT, link), v6b}, "", true, "2001:db8::8"},
		{"ipv6 loopback", []netlink.Addr{nlAddr("::1/128", unix.IFA_F_PERMANENT, host)}, "", true, ""},
		{"tentative", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_TENTATIVE, global), v6b}, "", true, "2001:db8::8"},
		{"only tentative", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_TENTATIVE, global)}, "", true, ""},
		{"optimistic is still tentative", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_TENTATIVE|unix.IFA_F_OPTIMISTIC, global)}, "", true, ""},
		{"dadfailed", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_DADFAILED|unix.IFA_F_TENTATIVE, global)}, "", true, ""},
		{"deprecated loses", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_DEPRECATED, global), v6b}, "", true, "2001:db8::8"},
		{"deprecated current is left", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_DEPRECATED, global), v6b}, "2001:db8::1", true, "2001:db8::8"},
		{"deprecated when alone", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_DEPRECATED, global)}, "", true, "2001:db8::1"},
		{"ipv4 deprecated loses", []netlink.Addr{nlAddr("203.0.113.1/24", unix.IFA_F_DEPRECATED, global), v4b}, "", false, "203.0.113.6"},
		{"temporary loses to stable", []netlink.Addr{nlAddr("2001:db8::1/64", unix.IFA_F_TEMPORARY, global), v6b}, "", true, "2001:db8::8"},
		{"temporary beats deprecated", []netlink.Addr{nlAddr("2001:db8::9/64", unix.IFA_F_TEMPORARY, global), nlAddr("2001:db8::1/64", unix.IFA_F_DEPRECATED, global)}, "", true, "2001:db8::9"},
		{"private addresses are global unicast", []netlink.Addr{nlAddr("10.0.0.1/8", 0, global)}, "", false, "10.0.0.1"},
		{"nil IPNet", []netlink.Addr{{}}, "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cur netip.Addr
			if tc.cur != "" {
				cur = netip.MustParseAddr(tc.cur)
			}
			got := pickAddr(tc.addrs, cur, tc.v6)
			if tc.want == "" {
				if got.IsValid() {
					t.Errorf("pickAddr = %v, want none", got)
				}
				return
			}
			if want := netip.MustParseAddr(tc.want); got != want {
				t.Errorf("pickAddr = %v, want %v", got, want)
			}
		})
	}
}

func TestRetryInterrupted(t *testing.T) {
	n := 0
	err := retryInterrupted(func() error { n++; return netlink.ErrDumpInterrupted })
	if n != maxDumpAttempts || err != netlink.ErrDumpInterrupted {
		t.Errorf("always interrupted: %d calls, %v; want %d calls and ErrDumpInterrupted", n, err, maxDumpAttempts)
	}
	n = 0
	err = retryInterrupted(func() error {
		n++
		if n < 3 {
			return netlink.ErrDumpInterrupted
		}
		return nil
	})
	if n != 3 || err != nil {
		t.Errorf("interrupted twice: %d calls, %v; want 3 calls, nil", n, err)
	}
}

func TestWatchInterfaceBadName(t *testing.T) {
	if _, err := WatchInterface(context.Background(), "a/b", false, nil); err == nil {
		t.Error("WatchInterface accepted an invalid interface name")
	}
}

// syncBuffer is a log sink the watcher's goroutine writes to while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lab is one namespace with a veth pair pub0/pub1 inside it, and a
// watcher on pub0.
type lab struct {
	t    *testing.T
	n    *netns.NS
	h    *netlink.Handle
	w    *AddrWatcher
	logs *syncBuffer

	mu     sync.Mutex
	listed []netip.Addr // the latest listing the watcher made
}

// waitFor bounds every wait for the watcher: events arrive in well under
// a millisecond, so this only decides how long a broken watcher takes to
// fail the test.
const waitFor = 5 * time.Second

func newLab(t *testing.T, name string) *lab {
	t.Helper()
	n := netns.New(t, "pgnl-"+name)
	if err := netns.Veth(n, "pub0", n, "pub1"); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(n.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &lab{t: t, n: n, h: h, logs: &syncBuffer{}}
}

// start starts the watcher on pub0 inside the namespace and stops it when
// the test ends.
func (l *lab) start(v6 bool) {
	l.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(l.logs, nil))
	hook := func(a []netip.Addr) {
		l.mu.Lock()
		l.listed = a
		l.mu.Unlock()
	}
	err := l.n.Do(func() error {
		var err error
		l.w, err = watchInterface(ctx, "pub0", v6, log, hook)
		return err
	})
	if err != nil {
		cancel()
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		cancel()
		l.stop()
	})
}

// stop waits, bounded, for the watcher's goroutine to end after its
// context was cancelled.
func (l *lab) stop() {
	l.t.Helper()
	stopped := make(chan struct{})
	go func() { l.w.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(waitFor):
		l.t.Fatal("Wait did not return after the context was cancelled")
	}
}

func (l *lab) link(dev string) netlink.Link {
	l.t.Helper()
	k, err := l.h.LinkByName(dev)
	if err != nil {
		l.t.Fatal(err)
	}
	return k
}

// addr adds (or, with del, deletes) an address; deprecated gives an IPv6
// address a zero preferred lifetime, nodad skips duplicate address
// detection so that it is usable at once.
func (l *lab) addr(dev, prefix string, del, deprecated, nodad bool) {
	l.t.Helper()
	a := nlAddr(prefix, 0, 0)
	a.Scope = 0
	if nodad {
		a.Flags = unix.IFA_F_NODAD
	}
	if deprecated {
		a.PreferedLft, a.ValidLft = 0, 600
	}
	var err error
	if del {
		err = l.h.AddrDel(l.link(dev), &a)
	} else {
		err = l.h.AddrAdd(l.link(dev), &a)
	}
	if err != nil {
		l.t.Fatalf("address %s on %s (delete %v): %v", prefix, dev, del, err)
	}
}

func (l *lab) add(dev, prefix string) { l.t.Helper(); l.addr(dev, prefix, false, false, true) }
func (l *lab) del(dev, prefix string) { l.t.Helper(); l.addr(dev, prefix, true, false, true) }

// waitCurrent polls Current until it is want ("" for none).
func (l *lab) waitCurrent(want string) {
	l.t.Helper()
	var w netip.Addr
	if want != "" {
		w = netip.MustParseAddr(want)
	}
	deadline := time.Now().Add(waitFor)
	for {
		got := l.w.Current()
		if got == w {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("Current = %v after %v, want %v", got, waitFor, fmtAddr(w))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitListed waits until the watcher has made a listing that holds every
// address of with and none of without: from then on, Current reflects it.
func (l *lab) waitListed(with, without []string) {
	l.t.Helper()
	ok := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, s := range with {
			if !slices.Contains(l.listed, netip.MustParseAddr(s)) {
				return false
			}
		}
		for _, s := range without {
			if slices.Contains(l.listed, netip.MustParseAddr(s)) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(waitFor)
	for !ok() {
		if time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.t.Fatalf("no listing with %v and without %v after %v; last %v", with, without, waitFor, l.listed)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitLog waits (bounded) for the log to hold substr: the watcher
// publishes an address before it logs the change.
func (l *lab) waitLog(substr string) bool {
	for i := 0; i < 250; i++ {
		if strings.Contains(l.logs.String(), substr) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func (l *lab) run(args ...string) {
	l.t.Helper()
	l.n.MustRun(l.t, "ip", args...)
}

func TestWatchInterfaceIPv4(t *testing.T) {
	l := newLab(t, "ifaddr4")
	// Deleting an IPv4 primary address deletes its secondaries unless
	// they are promoted; the replacement below relies on promotion, as a
	// DHCP client's renumbering does.
	if err := l.n.Sysctl("net.ipv4.conf.pub0.promote_secondaries", "1"); err != nil {
		t.Fatal(err)
	}
	l.add("pub0", "203.0.113.5/24")
	// An address on another interface never counts, even a lower one.
	l.add("pub1", "203.0.113.1/24")

	l.start(false)
	if got := l.w.Current(); got != netip.MustParseAddr("203.0.113.5") {
		t.Fatalf("Current at start = %v, want 203.0.113.5 (read at once)", got)
	}

	// Replace .5 with .6.
	l.add("pub0", "203.0.113.6/24")
	l.del("pub0", "203.0.113.5/24")
	l.waitCurrent("203.0.113.6")
	if !l.waitLog(`msg="public address changed" old=203.0.113.5 new=203.0.113.6 iface=pub0`) {
		t.Errorf("no change logged:\n%s", l.logs.String())
	}

	// A second, lower address does not move the advertised one.
	l.add("pub0", "203.0.113.4/24")
	l.waitListed([]string{"203.0.113.4", "203.0.113.6"}, nil)
	if got := l.w.Current(); got != netip.MustParseAddr("203.0.113.6") {
		t.Errorf("Current = %v after a lower address was added, want 203.0.113.6 kept", got)
	}

	// Delete all: none, and said so; pub1's address does not stand in.
	l.del("pub0", "203.0.113.4/24")
	l.del("pub0", "203.0.113.6/24")
	l.waitCurrent("")
	if !l.waitLog(`msg="public interface has no usable address" iface=pub0`) {
		t.Errorf("no warning logged:\n%s", l.logs.String())
	}

	// Add again.
	l.add("pub0", "203.0.113.9/24")
	l.waitCurrent("203.0.113.9")

	// Followed by name: renamed away means no address; renamed back, the
	// address (IPv4 addresses survive link down) is advertised again.
	l.run("link", "set", "pub0", "down")
	l.run("link", "set", "pub0", "name", "pubx")
	l.waitCurrent("")
	if !l.waitLog(`reason="no interface of that name"`) {
		t.Errorf("rename not logged as a missing interface:\n%s", l.logs.String())
	}
	l.run("link", "set", "pubx", "name", "pub0")
	l.run("link", "set", "pub0", "up")
	l.waitCurrent("203.0.113.9")

	// Deleted and created again, with a new index.
	oldIndex := l.link("pub0").Attrs().Index
	l.run("link", "del", "pub0")
	l.waitCurrent("")
	if err := netns.Veth(l.n, "pub0", l.n, "pub1"); err != nil {
		t.Fatal(err)
	}
	if l.link("pub0").Attrs().Index == oldIndex {
		t.Fatalf("re-created pub0 kept index %d; the test needs a new one", oldIndex)
	}
	l.add("pub0", "203.0.113.7/24")
	l.waitCurrent("203.0.113.7")
}

func TestWatchInterfaceIPv6(t *testing.T) {
	l := newLab(t, "ifaddr6")
	// Make duplicate address detection take far longer than the test, so
	// that an address added without NODAD stays tentative throughout.
	if err := l.n.Sysctl("net.ipv6.neigh.pub0.retrans_time_ms", "60000"); err != nil {
		t.Fatal(err)
	}
	// pub1's own link-local address would otherwise finish its DAD during
	// the test, an address event that could mask a missed link event.
	if err := l.n.Sysctl("net.ipv6.conf.pub1.disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	l.add("pub0", "2001:db8::5/64")
	l.add("pub0", "203.0.113.5/24") // the other family never counts
	l.start(true)
	if got := l.w.Current(); got != netip.MustParseAddr("2001:db8::5") {
		t.Fatalf("Current at start = %v, want 2001:db8::5", got)
	}

	// A deprecated address loses to a preferred one, even a lower one.
	l.addr("pub0", "2001:db8::3/64", false, true, true)
	l.add("pub0", "2001:db8::8/64")
	l.del("pub0", "2001:db8::5/64")
	l.waitCurrent("2001:db8::8")
	// ... but is used when nothing else is left.
	l.del("pub0", "2001:db8::8/64")
	l.waitCurrent("2001:db8::3")

	// A tentative address is not usable; the link-local one never is.
	l.addr("pub0", "2001:db8::1/64", false, false, false)
	l.del("pub0", "2001:db8::3/64")
	l.waitListed([]string{"2001:db8::1"}, []string{"2001:db8::3"})
	if got := l.w.Current(); got.IsValid() {
		t.Errorf("Current = %v with only a tentative and a link-local address, want none", got)
	}

	l.add("pub0", "2001:db8::9/64")
	l.waitCurrent("2001:db8::9")

	// With keep_addr_on_down, IPv6 addresses survive the link going
	// down, and a rename sends no address event at all: only the link
	// event tells the watcher that pub0 is gone.
	if err := l.n.Sysctl("net.ipv6.conf.pub0.keep_addr_on_down", "1"); err != nil {
		t.Fatal(err)
	}
	l.run("link", "set", "pub0", "down")
	l.waitListed([]string{"2001:db8::9"}, nil)
	l.run("link", "set", "pub0", "name", "pubx")
	l.waitCurrent("")
	l.run("link", "set", "pubx", "name", "pub0")
	l.waitCurrent("2001:db8::9")
}

// TestWatchInterfaceMissing checks that a name that is not there at start
// is a configuration error, and that a cancelled watcher stops.
func TestWatchInterfaceMissing(t *testing.T) {
	l := newLab(t, "ifaddrmiss")
	err := l.n.Do(func() error {
		_, err := WatchInterface(context.Background(), "nosuch0", false, nil)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "no such interface") {
		t.Errorf("WatchInterface(nosuch0) = %v, want a no such interface error", err)
	}

	// An interface with no address at all is not an error.
	ctx, cancel := context.WithCancel(context.Background())
	var w *AddrWatcher
	err = l.n.Do(func() error {
		var err error
		w, err = WatchInterface(ctx, "pub1", false, nil)
		return err
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if w.Current().IsValid() {
		t.Errorf("Current = %v on an interface without addresses", w.Current())
	}
	cancel()
	l.w = w
	l.stop()
}

// TestWatchInterfaceFlood changes the interface's addresses thousands of
// times in a burst: the watcher must end on the right address whether it
// kept up, or its subscription overflowed (ENOBUFS) and it subscribed and
// listed again.
func TestWatchInterfaceFlood(t *testing.T) {
	l := newLab(t, "ifaddrflood")
	l.add("pub0", "198.51.100.200/24")
	l.start(false)
	l.waitCurrent("198.51.100.200")

	// Only documentation addresses: 250 of them, added and deleted over
	// and over, 4000 changes in all.
	var batch strings.Builder
	for range 8 {
		for _, op := range []string{"add", "del"} {
			for i := 1; i <= 250; i++ {
				fmt.Fprintf(&batch, "address %s 203.0.113.%d/32 dev pub0\n", op, i)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "batch")
	if err := os.WriteFile(file, []byte(batch.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l.run("-batch", file)
	l.del("pub0", "198.51.100.200/24")
	l.add("pub0", "203.0.113.250/24")
	l.waitCurrent("203.0.113.250")
	l.waitListed([]string{"203.0.113.250"}, []string{"203.0.113.1", "198.51.100.200"})
	if strings.Contains(l.logs.String(), "subscribing again") {
		t.Logf("the subscription overflowed and was renewed:\n%s", l.logs)
	}
}
