package nftables

import (
	"context"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"net/netip"
	"sync"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

// dialedAddr is a second public address of the lab's gateway, per family:
// the one a mapping announces while the client dialed the first.
func (a labAddrs) dialedAddr() netip.Prefix {
	if a.public.Is4() {
		return netip.MustParsePrefix("203.0.113.2/24")
	}
	return netip.MustParsePrefix("2001:db8:1::2/64")
}

// TestDialed checks with real TCP connections that a mapping with a
// Dialed address admits its client on both the announced and the dialed
// address, with the same port, and still one connection only: after one
// to either address, one to the other is refused, and another client is
// refused on both. List reports the Dialed address, and Remove leaves
// nothing behind.
func TestDialed(t *testing.T) {
	netns.RequireRoot(t)
	var wg sync.WaitGroup
	for _, a := range []labAddrs{lab4, lab6} {
		wg.Go(func() {
			t.Run(a.name, func(t *testing.T) { testDialed(t, a) })
		})
	}
	wg.Wait()
}

func testDialed(t *testing.T, a labAddrs) {
	ctx := context.Background()
	l := newLab(t, Config{})
	if err := l.gw.AddAddr("g0", a.dialedAddr()); err != nil {
		t.Fatal(err)
	}
	base := stableRuleset(t, l.gw)
	for i, first := range []string{"dialed", "announced"} {
		// The client dialed a.public; the mapping announces the second
		// address, as with --public-addr set to it.
		m := a.mapping("m-"+first, uint16(40001+i), i == 0)
		m.Dialed = m.Public.Addr()
		m.Public = netip.AddrPortFrom(a.dialedAddr().Addr(), m.Public.Port())
		dialed := netip.AddrPortFrom(m.Dialed, m.Public.Port())
		if err := l.b.Install(ctx, m); err != nil {
			t.Fatalf("Install %v: %v", m, err)
		}
		ms, err := l.b.List(ctx)
		if err != nil || len(ms) != 1 || !mapindex.Same(ms[0], m) {
			t.Errorf("List = %v, %v; want [%v]", ms, err, m)
		}
		l.refused(t, a.intruder, dialed)
		l.refused(t, a.intruder, m.Public)
		use, other := dialed, m.Public
		if first == "announced" {
			use, other = other, use
		}
		seen := a.client
		if m.SNAT.IsValid() {
			seen = a.gwInside
		}
		c := l.connects(t, a.client, use, seen)
		l.refused(t, a.client, other)
		l.refused(t, a.client, use)
		if err := netns.Echo(c, "first connection still flowing"); err != nil {
			t.Errorf("%s: first connection: %v", m.ID, err)
		}
		if err := l.b.Remove(ctx, m); err != nil {
			t.Errorf("Remove %s = %v, want nil", m.ID, err)
		}
		c.Close()
	}
	if got := stableRuleset(t, l.gw); got != base {
		t.Errorf("ruleset after the mappings were removed:\n%s\nwant:\n%s", got, base)
	}
}
