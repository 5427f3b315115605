package nftables

import (
	"context"
	"slices"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

// TestForwardBlockers checks ForwardBlockers against real host firewalls:
// a forward policy of drop is reported until the firewall gets the one
// rule the package doc asks for (or its DNAT alternative), in each form;
// pasvgate's own tables and a legacy firewall (not nf_tables) are never
// reported.
func TestForwardBlockers(t *testing.T) {
	netns.RequireRoot(t)
	type want struct{ dropped, accepted []string }
	cases := []struct {
		fw   hostFirewall
		want want
	}{
		{xtables("nft", false), want{[]string{"ip filter FORWARD", "ip6 filter FORWARD"}, nil}},
		{xtables("nft", true), want{[]string{"ip filter FORWARD", "ip6 filter FORWARD"}, []string{"ip filter FORWARD", "ip6 filter FORWARD"}}},
		{nativeNFT(false), want{[]string{"inet filter forward"}, nil}},
		{nativeNFT(true), want{[]string{"inet filter forward"}, nil}},
		// Not nf_tables: the caller's to check.
		{xtables("legacy", false), want{nil, nil}},
	}
	for _, c := range cases {
		t.Run(c.fw.name, func(t *testing.T) {
			c.fw.require(t)
			t.Parallel()
			ns := netns.New(t, nsPrefix)
			// pasvgate's own tables are not the host's firewall.
			b := newBackend(t, ns, Config{})
			if err := b.Setup(context.Background()); err != nil {
				t.Fatal(err)
			}
			check := func(stage string, want []string) {
				t.Helper()
				got, err := forwardBlockers(int(ns.Handle()), DefaultCtMark)
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: ForwardBlockers = %q, want %q", stage, got, want)
				}
			}
			check("no host firewall", nil)
			c.fw.drop(t, ns)
			check("forward policy drop", c.want.dropped)
			c.fw.acceptMark(t, ns)
			check("with the accept rule", c.want.accepted)
		})
	}
	t.Run("other mark", func(t *testing.T) {
		fw := nativeNFT(false)
		fw.require(t)
		ns := netns.New(t, nsPrefix)
		fw.drop(t, ns)
		fw.acceptMark(t, ns)
		got, err := forwardBlockers(int(ns.Handle()), 0x1)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"inet filter forward"}; !slices.Equal(got, want) {
			t.Errorf("an accept for mark 0x%x counted for mark 0x1: got %q, want %q", DefaultCtMark, got, want)
		}
	})
}
