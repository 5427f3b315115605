package nftables

import (
	"net/netip"
	"testing"

	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestSNATPortReuse: a SNATed data connection never reuses the tuple of
// one the server still holds in TIME_WAIT (see rulestest.SNATPortReuse).
func TestSNATPortReuse(t *testing.T) {
	netns.RequireRoot(t)
	l := newLab(t, Config{})
	pubB := netip.MustParseAddr("203.0.113.2")
	if err := l.gw.AddAddr("g0", netip.PrefixFrom(pubB, 24)); err != nil {
		t.Fatal(err)
	}
	rulestest.SNATPortReuse(t, l.b, l.g, lab4.client, lab4.public, pubB, lab4.server, lab4.gwInside, 24)
}
