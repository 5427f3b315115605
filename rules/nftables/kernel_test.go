package nftables

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// requireNFT skips the test unless root and the nft binary, which these
// tests use to look at the kernel's state as an operator would, are there.
func requireNFT(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed")
	}
}

// ready makes a set-up Backend with cfg in a fresh namespace.
func ready(t *testing.T, cfg Config) (*netns.NS, *Backend) {
	t.Helper()
	ns := netns.New(t, nsPrefix)
	b := newBackend(t, ns, cfg)
	if err := b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return ns, b
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != strings.TrimSpace(string(want)) {
		t.Errorf("nft list ruleset differs from %s:\n got:\n%s\nwant:\n%s", p, got, want)
	}
}

// TestRuleset pins what an operator sees in `nft list ruleset` after
// Setup and after one IPv4 mapping with SNAT and a Dialed address and one
// IPv6 mapping without either, and checks that removing them gives back the first.
func TestRuleset(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)
	golden(t, "setup.golden", base)
	m4, m6 := rulestest.Sample("m-1", 40001), rulestest.Sample6("m-2", 40002)
	m4.Dialed = netip.MustParseAddr("203.0.113.1")
	for _, m := range []rules.Mapping{m4, m6} {
		if err := b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	golden(t, "installed.golden", stableRuleset(t, ns))
	for _, m := range []rules.Mapping{m4, m6} {
		if err := b.Remove(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after Remove:\n%s\nwant as after Setup:\n%s", got, base)
	}
}

// TestSavedRulesetLoads saves the ruleset as operators do (nft list
// ruleset > file), loads it back with nft -f, and checks that pasvgate
// finds its mappings in it and can remove them: a listing nft cannot read
// back would make a saved firewall configuration fail to load at boot.
func TestSavedRulesetLoads(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	m4, m6 := rulestest.Sample("m-1", 40001), rulestest.Sample6("m-2", 40002)
	m4.Dialed = netip.MustParseAddr("203.0.113.1")
	for _, m := range []rules.Mapping{m4, m6} {
		if err := b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	saved := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(saved, []byte(nftRuleset(t, ns)), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "flush", "ruleset")
	ns.MustRun(t, "nft", "-f", saved)
	ms, err := b.List(ctx)
	if err != nil || len(ms) != 2 || ms[0].ID != m4.ID || ms[0].SNAT != m4.SNAT || ms[1].ID != m6.ID {
		t.Fatalf("List after loading the saved ruleset = %v, %v; want %s and %s", ms, err, m4, m6)
	}
	for _, m := range []rules.Mapping{m4, m6} {
		if err := b.Remove(ctx, m); err != nil {
			t.Errorf("Remove %s: %v", m.ID, err)
		}
	}
}

// TestForeignTables checks that Setup, Install, Remove and Flush leave
// every other table alone, including one of the same families and one
// whose name starts like pasvgate's, and that Flush removes exactly
// pasvgate's two tables.
func TestForeignTables(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns := netns.New(t, nsPrefix)
	ns.MustRun(t, "nft", "add", "table", "ip", "foreign")
	ns.MustRun(t, "nft", "add", "chain", "ip", "foreign", "pre", "{ type nat hook prerouting priority dstnat; }")
	ns.MustRun(t, "nft", "add", "rule", "ip", "foreign", "pre", "tcp", "dport", "8080", "dnat", "to", "192.0.2.20:80")
	ns.MustRun(t, "nft", "add", "table", "ip6", "pasvgate2")
	ns.MustRun(t, "nft", "add", "set", "ip6", "pasvgate2", "s", "{ type ipv6_addr; }")
	ns.MustRun(t, "nft", "add", "element", "ip6", "pasvgate2", "s", "{ 2001:db8::1 }")
	ns.MustRun(t, "nft", "add", "table", "inet", "pasvgate")
	foreign := nftRuleset(t, ns)

	b := newBackend(t, ns, Config{})
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	m := rulestest.Sample("m-1", 40001)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t, ns); !strings.HasPrefix(got, foreign) {
		t.Errorf("foreign tables changed:\n%s\nwant first:\n%s", got, foreign)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nftRuleset(t, ns); got != foreign {
		t.Errorf("ruleset after Flush:\n%s\nwant the foreign tables only:\n%s", got, foreign)
	}
}

// TestRestart checks what a new process sees: List reads the mappings
// another Backend left, whole (ID, Created, SNAT), from the kernel alone;
// Setup sweeps them; and the Backend that made them then finds them gone.
func TestRestart(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	ns, old := ready(t, Config{})
	m4, m6 := rulestest.Sample("m-1", 40001), rulestest.Sample6("m-2", 40002)
	m4.Created = time.Unix(1700000123, 0)
	for _, m := range []rules.Mapping{m4, m6} {
		if err := old.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	b := newBackend(t, ns, Config{})
	ms, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || !mapindex.Same(ms[0], m4) || !mapindex.Same(ms[1], m6) {
		t.Fatalf("List from a new Backend = %v, want %v and %v", ms, m4, m6)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Fatalf("List after Setup = %v, %v; want none", ms, err)
	}
	if err := old.Remove(ctx, m4); !errors.Is(err, rules.ErrNotInstalled) {
		t.Errorf("Remove of a swept mapping = %v, want ErrNotInstalled", err)
	}
}

// TestConflicts checks the duplicates Install refuses beyond the
// contract's: the same source, target and public port on another public
// address (the snat key cannot tell them apart), and an element of
// someone else with the same key and other data, which only the kernel
// knows of. A refused Install leaves nothing behind.
func TestConflicts(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)
	m := rulestest.Sample("m-1", 40001)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	other := rulestest.Sample("m-2", 40001)
	other.Public = netip.AddrPortFrom(netip.MustParseAddr("203.0.113.3"), 40001)
	other.SNAT = netip.Addr{}
	if err := b.Install(ctx, other); !errors.Is(err, rules.ErrExists) {
		t.Errorf("Install with the same source, target and public port = %v, want ErrExists", err)
	}
	other.Public = netip.AddrPortFrom(other.Public.Addr(), 40002)
	if err := b.Install(ctx, other); err != nil {
		t.Errorf("Install on another public port: %v", err)
	}
	for _, x := range []rules.Mapping{m, other} {
		if err := b.Remove(ctx, x); err != nil {
			t.Fatal(err)
		}
	}

	ns.MustRun(t, "nft", "add", "element", "ip", TableName, SetDNAT,
		"{ 203.0.113.10 . 203.0.113.2 . 40001 : 192.0.2.99 . 21 }")
	foreign := stableRuleset(t, ns)
	if err := b.Install(ctx, m); !errors.Is(err, rules.ErrExists) {
		t.Errorf("Install over another's element = %v, want ErrExists", err)
	}
	if got := stableRuleset(t, ns); got != foreign {
		t.Errorf("a refused Install left something:\n%s\nwant:\n%s", got, foreign)
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List = %v, %v; want none (the foreign element is no mapping)", ms, err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("Setup left the foreign element:\n%s", got)
	}
}

// TestRemovedFromOutside checks Remove when the elements were deleted by
// hand: all of them is rules.ErrNotInstalled, some of them is a success
// that deletes the rest.
func TestRemovedFromOutside(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)
	m1, m2 := rulestest.Sample("m-1", 40001), rulestest.Sample("m-2", 40002)
	for _, m := range []rules.Mapping{m1, m2} {
		if err := b.Install(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetDNAT, "{ 203.0.113.10 . 203.0.113.2 . 40001 }")
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetSNAT, "{ 203.0.113.10 . 192.0.2.10 . 30000 . 40001 }")
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetSNAT, "{ 203.0.113.10 . 192.0.2.10 . 30000 . 40002 }")
	if err := b.Remove(ctx, m1); !errors.Is(err, rules.ErrNotInstalled) {
		t.Errorf("Remove of a mapping deleted from outside = %v, want ErrNotInstalled", err)
	}
	if err := b.Remove(ctx, m2); err != nil {
		t.Errorf("Remove of a mapping partly deleted from outside = %v, want nil", err)
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after Remove:\n%s\nwant:\n%s", got, base)
	}
}

// TestElementTimeout checks that every element carries Config.Timeout in
// the kernel, and that List and Remove take an expired mapping as gone.
func TestElementTimeout(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	ns, b := ready(t, Config{Timeout: 1500 * time.Millisecond})
	m := rulestest.Sample("m-1", 40001)
	start := time.Now()
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	o := newObjects(fam4, TableName, 0)
	for _, s := range o.sets() {
		es, err := c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 1 {
			t.Fatalf("%s holds %d elements, want 1", s.Name, len(es))
		}
		if e := es[0]; e.Expires <= 0 || e.Expires > 1500*time.Millisecond || e.Comment != "id=m-1 created=1700000000" {
			t.Errorf("%s element expires in %v with comment %q; want at most 1.5s and the mapping's id", s.Name, e.Expires, e.Comment)
		}
	}
	time.Sleep(1600*time.Millisecond - time.Since(start))
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List after the timeout = %v, %v; want none", ms, err)
	}
	if err := b.Remove(ctx, m); err != nil {
		t.Errorf("Remove after the timeout = %v, want nil", err)
	}
	if err := b.Install(ctx, m); err != nil {
		t.Errorf("Install again after the timeout: %v", err)
	}
}

// TestNotSetUp checks that Install and Remove refuse to run before Setup
// and after Flush, as the fake does.
func TestNotSetUp(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	b := newBackend(t, netns.New(t, nsPrefix), Config{})
	m := rulestest.Sample("m-1", 40001)
	if err := b.Install(ctx, m); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("Install before Setup = %v, want ErrNotSetUp", err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, m); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("Remove after Flush = %v, want ErrNotSetUp", err)
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List without tables = %v, %v; want none", ms, err)
	}
}

// TestDisableIPv6 checks that with IPv6 off the ip6 table is never made
// and IPv6 mappings are refused.
func TestDisableIPv6(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{DisableIPv6: true})
	if err := b.Install(ctx, rulestest.Sample6("m-6", 40001)); !errors.Is(err, ErrNoIPv6) {
		t.Errorf("Install of an IPv6 mapping = %v, want ErrNoIPv6", err)
	}
	if err := b.Install(ctx, rulestest.Sample("m-4", 40001)); err != nil {
		t.Fatal(err)
	}
	if got := ns.MustRun(t, "nft", "list", "tables"); strings.TrimSpace(got) != "table ip "+TableName {
		t.Errorf("tables with IPv6 off:\n%s", got)
	}
}

// TestCanceled checks that an ended context fails a call at once and
// leaves nothing behind.
func TestCanceled(t *testing.T) {
	netns.RequireRoot(t)
	ns, b := ready(t, Config{})
	_ = ns
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Install(ctx, rulestest.Sample("m-1", 40001)); !errors.Is(err, context.Canceled) {
		t.Errorf("Install with an ended context = %v, want context.Canceled", err)
	}
	if ms, err := b.List(context.Background()); err != nil || len(ms) != 0 {
		t.Errorf("List = %v, %v; want none", ms, err)
	}
}

// TestAvailable runs the availability check in a namespace and checks
// that it left no table behind.
func TestAvailable(t *testing.T) {
	requireNFT(t)
	ns := netns.New(t, nsPrefix)
	if err := available(int(ns.Handle()), false); err != nil {
		t.Fatalf("available: %v", err)
	}
	if got := nftRuleset(t, ns); got != "" {
		t.Errorf("available left:\n%s", got)
	}
}

// TestConcurrent installs and removes from many goroutines at once: every
// call succeeds and the ruleset ends as Setup left it.
func TestConcurrent(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 10 {
		wg.Go(func() {
			for i := range 20 {
				m := rulestest.Sample(fmt.Sprintf("m-%d-%d", g, i), uint16(41000+100*g+i))
				if i%2 == 1 {
					m = rulestest.Sample6(m.ID, m.Public.Port())
				}
				if err := b.Install(ctx, m); err != nil {
					errs <- err
					continue
				}
				if err := b.Remove(ctx, m); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after concurrent installs and removes:\n%s\nwant:\n%s", got, base)
	}
}
