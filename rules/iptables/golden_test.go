package iptables

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// A gateway's own firewall, in place before pasvgate starts: pasvgate must
// leave every line of it as it was.
const (
	siteFirewall4 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SITE-LAN - [0:0]
-A INPUT -i lo -j ACCEPT
-A FORWARD -i lan0 -j SITE-LAN
-A SITE-LAN -s 198.51.100.0/24 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 203.0.113.5/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.20:80
-A POSTROUTING -s 198.51.100.0/24 -o wan0 -j MASQUERADE
COMMIT
`
	siteFirewall6 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i lan0 -s 2001:db8:3::/64 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 2001:db8:3::/64 -o wan0 -j MASQUERADE
COMMIT
`
)

// counterRE matches the packet and byte counters of a chain declaration.
var counterRE = regexp.MustCompile(` \[[0-9]+:[0-9]+\]$`)

// normalise drops what changes from run to run in iptables-save output:
// comment lines (timestamps, warnings) and counters.
func normalise(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, counterRE.ReplaceAllString(l, ""))
	}
	return strings.Join(out, "\n") + "\n"
}

// dump is the namespace's whole ruleset, both families, normalised.
func dump(t testing.TB, ns *netns.NS, path string) string {
	t.Helper()
	v4, v6, err := deriveBinaries(path)
	if err != nil {
		t.Fatal(err)
	}
	return "== " + filepath.Base(v4.save) + "\n" + normalise(ns.MustRun(t, v4.save)) +
		"== " + filepath.Base(v6.save) + "\n" + normalise(ns.MustRun(t, v6.save))
}

// loadFirewall replaces the namespace's rules with the site firewall, as
// a firewall reload does: in both families, or only in the one given.
func loadFirewall(t testing.TB, ns *netns.NS, path string, only ...string) {
	t.Helper()
	v4, v6, err := deriveBinaries(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct{ fam, bin, text string }{{"IPv4", v4.restore, siteFirewall4}, {"IPv6", v6.restore, siteFirewall6}} {
		if len(only) > 0 && only[0] != x.fam {
			continue
		}
		cmd := ns.Command(context.Background(), x.bin)
		cmd.Stdin = strings.NewReader(x.text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("loading the site firewall with %s: %v: %s", x.bin, err, out)
		}
	}
}

// golden compares got with testdata/NAME, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("ruleset differs from %s (run with -update to accept):\n%s", p, lineDiff(string(want), got))
	}
}

// lineDiff is a line diff of want and got: "-" for lines only in want,
// "+" for lines only in got, "  " for both.
func lineDiff(want, got string) string {
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	// lcs[i][j] is the length of the longest common subsequence of a[i:]
	// and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			out.WriteString("  " + a[i] + "\n")
			i, j = i+1, j+1
		case j < len(b) && (i == len(a) || lcs[i][j+1] >= lcs[i+1][j]):
			out.WriteString("+ " + b[j] + "\n")
			j++
		default:
			out.WriteString("- " + a[i] + "\n")
			i++
		}
	}
	return out.String()
}

// goldenMappings are installed by the golden test: IPv4 with SNAT and a
// Dialed address, IPv4 without either, and IPv6.
func goldenMappings() []rules.Mapping {
	m1 := rulestest.Sample("m-1", 40001)
	m1.Dialed = netip.MustParseAddr("203.0.113.1")
	m2 := rulestest.Sample("m-2", 40002)
	m2.Source = netip.MustParseAddr("203.0.113.20")
	m2.SNAT = netip.Addr{}
	m2.Created = time.Time{}
	m3 := rulestest.Sample6("m-3", 40003)
	m3.SNAT = netip.MustParseAddr("2001:db8:2::1")
	return []rules.Mapping{m1, m2, m3}
}

// TestGolden compares the namespace's whole ruleset, next to a site
// firewall, after each step: Setup, Install, Remove (back to the state
// after Setup) and Flush (back to the site firewall alone).
func TestGolden(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		bin := filepath.Base(path)
		ns := netns.New(t, nsPrefix)
		loadFirewall(t, ns, path)
		baseline := dump(t, ns, path)
		golden(t, bin+"/0-baseline.golden", baseline)

		b := newBackend(t, ns, path, Config{})
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup: %v", err)
		}
		afterSetup := dump(t, ns, path)
		golden(t, bin+"/1-setup.golden", afterSetup)

		ms := goldenMappings()
		for _, m := range ms {
			if err := b.Install(ctx, m); err != nil {
				t.Fatalf("Install %v: %v", m, err)
			}
		}
		golden(t, bin+"/2-installed.golden", dump(t, ns, path))

		// What iptables-save prints back is what we generate, token for
		// token: the repair check and rollback rely on it.
		for _, m := range ms {
			f, _ := b.b.familyOf(m)
			var st *saved
			if err := ns.Do(func() (err error) { st, err = b.b.save(ctx, f); return err }); err != nil {
				t.Fatal(err)
			}
			for _, r := range mappingRules(m) {
				if n, _ := st.count(r); n != 1 {
					t.Errorf("%s: iptables-save shows %d copies of %s", m.ID, n, r.line("-A"))
				}
			}
			if d := st.damage(b.b.cfg.ConnMark); len(d) > 0 {
				t.Errorf("%s: damage() after a clean install = %v", f.name, d)
			}
		}

		for _, m := range ms {
			if err := b.Remove(ctx, m); err != nil {
				t.Fatalf("Remove %v: %v", m, err)
			}
		}
		if got := dump(t, ns, path); got != afterSetup {
			t.Errorf("after Remove the ruleset is not what Setup left:\n%s", lineDiff(afterSetup, got))
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if got := dump(t, ns, path); got != baseline {
			t.Errorf("after Flush the ruleset is not the site firewall alone:\n%s", lineDiff(baseline, got))
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("second Flush: %v", err)
		}
	})
}
