package routes

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// testAnnounce: --announce 198.51.100.0/24=198.51.100.1 with --public-addr
// 203.0.113.2. A client on the LAN 198.51.100.0/24 is told 198.51.100.1
// in its 227, whichever gateway address it dialed; a client on the
// internet side is told 203.0.113.2. Each download works through the
// address it was told, and the 227s are checked on the client's link.
func (e *env) testAnnounce(t *testing.T) {
	// The LAN: a second network on the client's link. Added here, not in
	// test/lab, since only this test needs it; the lab's end removes it
	// with the namespaces.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, a := range [][]string{
		{"-n", e.l.Client, "addr", "add", lanClient + "/24", "dev", lab.ClientIface},
		{"-n", e.l.GW, "addr", "add", lanGW + "/24", "dev", lab.GWPublicIface},
	} {
		if out, err := exec.CommandContext(ctx, "ip", a...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", a, err, out)
		}
	}
	cp, err := e.l.Capture(e.l.Client, lab.ClientIface)
	if err != nil {
		t.Fatal(err)
	}
	e.startPasvgate(t, []string{lab.GWPublicAddr + ":21", lanGW + ":21"},
		"--listen", lab.GWPublicAddr+":21",
		"--listen", lanGW+":21",
		"--upstream", e.plain.addr,
		"--public-addr", lab.GWPublicAddr2,
		"--announce", lanNet+"="+lanGW,
		"--data-ports", "40000-40999")

	// curl trusting the 227 address: from the LAN (its source address is
	// the LAN one, on-link) and from the internet side.
	if got := download(t, e.l, e.l.Client, lanGW, "lan.bin"); got != e.plain.sha {
		t.Errorf("LAN client's download: sha256 %s, want %s", got, e.plain.sha)
	}
	if got := download(t, e.l, e.l.Client, lab.GWPublicAddr, "wan.bin"); got != e.plain.sha {
		t.Errorf("internet client's download: sha256 %s, want %s", got, e.plain.sha)
	}
	// A LAN client that dials the public address is told the LAN one:
	// the announced address follows the client's network, not the
	// address dialed. Here the 227 differs from the address dialed, so
	// only a data connection to the announced address can succeed.
	s := dial(t, e.l, e.l.Client, lanClient, lab.GWPublicAddr)
	s.login(t)
	announced, sum, reply := s.retr(t, e.l)
	if announced.Addr().String() != lanGW || sum != e.plain.sha {
		t.Errorf("LAN client dialing %s: 227 %v, sha256 %q (%s); want %s and %s", lab.GWPublicAddr, announced, sum, reply, lanGW, e.plain.sha)
	}

	pkts, err := cp.Stop()
	if err != nil {
		t.Logf("capture: %v", err) // drops make absence checks weak; the checks here are of presence
	}
	for _, c := range []struct {
		name      string
		from      netip.AddrPort
		to        string
		announced string
	}{
		{"LAN client dialing the LAN address", hostPort(lanGW, 21), lanClient, lanGW},
		{"internet client", hostPort(lab.GWPublicAddr, 21), lab.ClientAddr, lab.GWPublicAddr2},
		{"LAN client dialing the public address", hostPort(lab.GWPublicAddr, 21), lanClient, lanGW},
	} {
		got := replies227(pkts, c.from, c.to)
		if len(got) == 0 {
			t.Errorf("%s: no 227 on the wire from %v to %s", c.name, c.from, c.to)
		}
		for _, ap := range got {
			if ap.Addr().String() != c.announced || ap.Port() < 40000 || ap.Port() > 40999 {
				t.Errorf("%s: 227 announced %v, want %s with a port in 40000-40999", c.name, ap, c.announced)
			}
		}
	}
}
