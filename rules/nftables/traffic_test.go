package nftables

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestTraffic checks with real TCP connections through the gateway, with
// no host firewall and next to each kind of host firewall with a forward
// policy of drop, that a mapping admits exactly its client, that SNAT is
// applied exactly when asked, that an established connection outlives its
// mapping (removed, or expired in the kernel) and a restart's Setup,
// while new ones are refused, and that pasvgate never touches the host
// firewall.
//
// With a host firewall it also checks the limit the package doc states:
// until the host firewall accepts pasvgate's conntrack mark, its drop
// policy drops the mapped connection, whatever pasvgate's tables say.
// After that one rule, the mark alone carries the connection through,
// established flows included: the host firewall has no established rule.
// The -dnat variants check the doc's alternative, a host firewall that
// accepts every DNATed connection.
func TestTraffic(t *testing.T) {
	netns.RequireRoot(t)
	// The subtests spend their time waiting (for timeouts, for drops), so
	// they run all at once from concurrent t.Run calls, which the testing
	// package allows, rather than with t.Parallel, which -parallel would
	// hold to GOMAXPROCS at a time.
	var wg sync.WaitGroup
	firewalls := []hostFirewall{{name: "no-firewall"},
		xtables("nft", false), xtables("legacy", false), nativeNFT(false),
		xtables("nft", true), nativeNFT(true)}
	for _, fw := range firewalls {
		for _, a := range []labAddrs{lab4, lab6} {
			wg.Go(func() {
				t.Run(fw.name+"/"+a.name, func(t *testing.T) {
					fw.require(t)
					testTraffic(t, fw, a)
				})
			})
		}
	}
	wg.Wait()
}

func testTraffic(t *testing.T, fw hostFirewall, a labAddrs) {
	ctx := context.Background()
	l := newLab(t, Config{})
	install := func(b *Backend, m rules.Mapping) {
		t.Helper()
		if err := b.Install(ctx, m); err != nil {
			t.Fatalf("Install %v: %v", m, err)
		}
	}
	target := a.mapping("x", 1, false).Target

	var fwState string
	untouched := func(when string) {
		t.Helper()
		if fw.dump == nil {
			return
		}
		if got := fw.dump(t, l.gw); got != fwState {
			t.Errorf("host firewall changed %s:\nbefore:\n%s\nafter:\n%s", when, fwState, got)
		}
	}
	if fw.drop != nil {
		fw.drop(t, l.gw)
		blocked := a.mapping("m-blocked", 40000, true)
		install(l.b, blocked)
		l.refused(t, a.client, blocked.Public)
		fw.acceptMark(t, l.gw)
		fwState = fw.dump(t, l.gw)
		l.connects(t, a.client, blocked.Public, a.gwInside)
		if err := l.b.Remove(ctx, blocked); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}

	withSNAT, without := a.mapping("m-snat", 40001, true), a.mapping("m-nosnat", 40002, false)
	install(l.b, withSNAT)
	install(l.b, without)
	c1 := l.connects(t, a.client, withSNAT.Public, a.gwInside)
	c2 := l.connects(t, a.client, without.Public, a.client)
	l.refused(t, a.intruder, withSNAT.Public)
	l.refused(t, a.intruder, without.Public)
	if fw.drop != nil {
		// Only mapped connections are marked, so the host firewall still
		// drops a connection made straight to the server.
		l.refused(t, a.client, target)
	}

	if err := l.b.Remove(ctx, withSNAT); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := netns.Echo(c1, "still flowing after Remove"); err != nil {
		t.Errorf("established connection after Remove: %v", err)
	}
	l.refused(t, a.client, withSNAT.Public)
	untouched("by Install and Remove")

	// A restart: another Backend's Setup sweeps the mappings (it
	// recreates the tables in one transaction) and the connections already
	// made keep flowing. Its elements live 2 s and are never removed: a
	// connection made in time keeps flowing after they expire; a new one
	// is refused.
	b := newBackend(t, l.gw, Config{Timeout: 2 * time.Second})
	if err := b.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List after a restart's Setup = %v, %v; want none", ms, err)
	}
	for _, c := range []net.Conn{c1, c2} {
		if err := netns.Echo(c, "still flowing after a restart"); err != nil {
			t.Errorf("established connection after Setup: %v", err)
		}
	}
	untouched("by Setup")
	short := a.mapping("m-expires", 40003, true)
	start := time.Now()
	install(b, short)
	c3 := l.connects(t, a.client, short.Public, a.gwInside)
	for time.Since(start) < 3*time.Second {
		time.Sleep(500 * time.Millisecond)
		if err := netns.Echo(c3, "flowing"); err != nil {
			t.Fatalf("established connection %v after Install: %v", time.Since(start).Round(time.Millisecond), err)
		}
	}
	l.refused(t, a.client, short.Public)
	if err := netns.Echo(c3, "flowing after expiry"); err != nil {
		t.Errorf("established connection after its mapping expired: %v", err)
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List after expiry = %v, %v; want none", ms, err)
	}
	if err := b.Remove(ctx, short); err != nil {
		t.Errorf("Remove of an expired mapping = %v, want nil", err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	untouched("by Flush")
}

// TestRebuild deletes pasvgate's tables from outside (nft flush ruleset)
// and checks that the next Install puts both back, with the mappings
// that were live, but none of them re-armed: a mapping used before the
// tables were deleted must not admit a second connection, and one not
// used yet cannot be told apart from it, so it admits nothing either.
func TestRebuild(t *testing.T) {
	netns.RequireRoot(t)
	hostFirewall{bins: []string{"nft"}}.require(t)
	ctx := context.Background()
	l := newLab(t, Config{})
	v4, v6 := lab4.mapping("m-before", 40001, true), lab6.mapping("m-before6", 40001, false)
	pending := lab4.mapping("m-pending", 40003, false)
	for _, m := range []rules.Mapping{v4, v6, pending} {
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	l.connects(t, lab4.client, v4.Public, lab4.gwInside)
	l.connects(t, lab6.client, v6.Public, lab6.client)

	l.gw.MustRun(t, "nft", "flush", "ruleset")
	l.refused(t, lab4.client, pending.Public)

	after := lab4.mapping("m-after", 40002, false)
	if err := l.b.Install(ctx, after); err != nil {
		t.Fatalf("Install after the tables were deleted: %v", err)
	}
	l.connects(t, lab4.client, after.Public, lab4.client)
	l.refused(t, lab4.client, after.Public)
	l.refused(t, lab4.client, v4.Public)
	l.refused(t, lab4.client, pending.Public)
	// The IPv6 table was rebuilt too, although only an IPv4 mapping was
	// installed.
	l.refused(t, lab6.client, v6.Public)
	ms, err := l.b.List(ctx)
	if err != nil || len(ms) != 4 {
		t.Fatalf("List after the rebuild = %v, %v; want 4 mappings", ms, err)
	}
	if !strings.Contains(stableRuleset(t, l.gw), "table ip6 pasvgate") {
		t.Errorf("the ip6 table was not rebuilt")
	}
	for _, m := range []rules.Mapping{v4, v6, pending, after} {
		if err := l.b.Remove(ctx, m); err != nil {
			t.Errorf("Remove %s: %v", m.ID, err)
		}
	}
}
