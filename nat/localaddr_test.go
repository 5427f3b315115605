package nat

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pasvgate/pasvgate/test/netns"
)

// localLab is a namespace with a LocalAddrs following it, which counts
// its listings and logs into logs.
type localLab struct {
	t     *testing.T
	n     *netns.NS
	l     *LocalAddrs
	lists atomic.Int64
	logs  *syncBuffer
}

func newLocalLab(t *testing.T) *localLab {
	t.Helper()
	x := &localLab{t: t, n: netns.New(t, "rfcla"), logs: &syncBuffer{}}
	x.n.MustRun(t, "ip", "link", "set", "lo", "up")
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(x.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := x.n.Do(func() error {
		var err error
		x.l, err = watchLocal(ctx, log, func() { x.lists.Add(1) })
		return err
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		stopped := make(chan struct{})
		go func() { x.l.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(waitFor):
			t.Error("Wait did not return after the context was cancelled")
		}
	})
	x.waitFor("subscribed", x.l.subscribed.Load)
	return x
}

func (x *localLab) waitFor(what string, cond func() bool) {
	x.t.Helper()
	for deadline := time.Now().Add(waitFor); !cond(); {
		if time.Now().After(deadline) {
			x.t.Fatalf("after %v: %s\n%s", waitFor, what, x.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLocalAddrs follows address changes in a namespace: a kept list
// answers while nothing changes (no listing per call), and an address
// added or removed shows in the next answers.
func TestLocalAddrs(t *testing.T) {
	x := newLocalLab(t)
	a := netip.MustParseAddr("203.0.113.77")
	if x.l.Has(a) {
		t.Fatalf("%v local before it was added", a)
	}
	if !x.l.Has(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("127.0.0.1 not local")
	}
	before := x.lists.Load()
	for range 100 {
		x.l.Has(a)
	}
	if n := x.lists.Load() - before; n != 0 {
		t.Fatalf("100 answers with nothing changed listed the addresses %d times, want 0", n)
	}

	x.n.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	x.waitFor(a.String()+" local after it was added", func() bool { return x.l.Has(a) })
	x.n.MustRun(t, "ip", "addr", "del", a.String()+"/32", "dev", "lo")
	x.waitFor(a.String()+" not local after it was removed", func() bool { return !x.l.Has(a) })
}

// TestLocalAddrsBesideOtherListeners is the SIGHUP that moved
// --public-iface: a second address subscriber starting in the namespace
// (an AddrWatcher, or any program that asks the library to replay the
// current addresses) must not cost LocalAddrs its subscription. Before,
// the replay's request reached every address subscriber, LocalAddrs took
// the error this raised as a dead subscription, and logged "following
// local addresses failed ... err=<nil>" on every such reload.
func TestLocalAddrsBesideOtherListeners(t *testing.T) {
	x := newLocalLab(t)
	x.n.MustRun(t, "ip", "link", "add", "pub0", "type", "veth", "peer", "name", "pub1")
	x.n.MustRun(t, "ip", "link", "set", "pub0", "up")
	x.n.MustRun(t, "ip", "addr", "add", "203.0.113.50/24", "dev", "pub0")

	// The reload: a public interface watcher starts beside it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var w *AddrWatcher
	err := x.n.Do(func() error {
		var err error
		w, err = WatchInterface(ctx, "pub0", false, slog.New(slog.NewTextHandler(x.logs, nil)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); w.Wait() }()

	// Another program using the library's ListExisting.
	h := x.n.Handle()
	done := make(chan struct{})
	ch := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: &h, ListExisting: true}); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range ch {
		}
	}()
	defer func() { close(done); <-drained }()

	// A change made after both started is still followed, by the same
	// subscription: LocalAddrs never stopped trusting what it keeps.
	a := netip.MustParseAddr("203.0.113.78")
	x.n.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	x.waitFor(a.String()+" local after it was added", func() bool { return x.l.Has(a) })
	// Let a resubscription (100 ms back-off) show if there is one.
	time.Sleep(300 * time.Millisecond)
	x.l.Has(a)
	before := x.lists.Load()
	for range 100 {
		x.l.Has(a)
	}
	if n := x.lists.Load() - before; n != 0 {
		t.Errorf("100 answers after the other subscribers started listed the addresses %d times, want 0", n)
	}
	if logs := x.logs.String(); strings.Contains(logs, "failed") || strings.Contains(logs, "err=<nil>") {
		t.Errorf("a second address subscriber disturbed the others:\n%s", logs)
	}
}
