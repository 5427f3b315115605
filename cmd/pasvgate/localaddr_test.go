package main

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// TestLocalAddrs follows address changes in a namespace: a kept list
// answers while nothing changes (no listing per call), and an address
// added or removed shows in the next answers.
func TestLocalAddrs(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "pgla")
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	var lists atomic.Int64
	list := func() (set map[netip.Addr]bool, err error) {
		lists.Add(1)
		err = ns.Do(func() error {
			set, err = interfaceAddrs()
			return err
		})
		return set, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := ns.Handle()
	l := watchLocalAddrs(ctx, &h, list, slog.New(slog.DiscardHandler))
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("after 5s: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("subscribed", l.subscribed.Load)

	a := netip.MustParseAddr("203.0.113.77")
	if l.has(a) {
		t.Fatalf("%v local before it was added", a)
	}
	if !l.has(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("127.0.0.1 not local")
	}
	before := lists.Load()
	for range 100 {
		l.has(a)
	}
	if n := lists.Load() - before; n != 0 {
		t.Fatalf("100 answers with nothing changed listed the addresses %d times, want 0", n)
	}

	ns.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	waitFor(a.String()+" local after it was added", func() bool { return l.has(a) })
	ns.MustRun(t, "ip", "addr", "del", a.String()+"/32", "dev", "lo")
	waitFor(a.String()+" not local after it was removed", func() bool { return !l.has(a) })
}
