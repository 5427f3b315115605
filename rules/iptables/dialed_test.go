package iptables

import (
	"context"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
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

// TestDialed checks with real TCP connections, with iptables-nft and
// iptables-legacy, that a mapping with a Dialed address admits its client
// on both the announced and the dialed address, with the same port, and
// still one connection only: after one to either address, one to the
// other is refused, and another client is refused on both. List reports
// the Dialed address, and Remove leaves no rule and no xt_recent list
// behind.
func TestDialed(t *testing.T) {
	netns.RequireRoot(t)
	forEachBinary(t, func(t *testing.T, path string) {
		for _, fam := range []struct {
			name string
			a    labAddrs
		}{{"IPv4", lab4}, {"IPv6", lab6}} {
			t.Run(fam.name, func(t *testing.T) { testDialed(t, path, fam.a) })
		}
	})
}

func testDialed(t *testing.T, path string, a labAddrs) {
	ctx := context.Background()
	l := newLab(t, path)
	if err := l.gw.AddAddr("g0", a.dialedAddr()); err != nil {
		t.Fatal(err)
	}
	base := dump(t, l.gw, path)
	for i, first := range []string{"dialed", "announced"} {
		// The client dialed a.public; the mapping announces the second
		// address, as with --public-addr set to it.
		m := rules.Mapping{ID: "m-" + first, Source: a.client,
			Public: netip.AddrPortFrom(a.dialedAddr().Addr(), uint16(40001+i)), Dialed: a.public,
			Target: netip.AddrPortFrom(a.server, serverPort), Created: time.Now()}
		seen := a.client
		if i == 0 {
			m.SNAT, seen = a.gwInside, a.gwInside
		}
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
	if got := dump(t, l.gw, path); got != base {
		t.Errorf("ruleset after the mappings were removed:\n%s", lineDiff(base, got))
	}
	if lists := strings.TrimSpace(l.gw.MustRun(t, "ls", "/proc/net/xt_recent")); lists != "" {
		t.Errorf("xt_recent lists left: %s", lists)
	}
}
