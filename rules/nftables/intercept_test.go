package nftables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// icPrefix names the namespaces of the interception tests.
const icPrefix = "pgic-nft"

var (
	icRedirect = rules.Interception{Iface: "lan0", Port: 21, ListenPort: 2121, Method: rules.Redirect}
	icTProxy   = rules.Interception{Iface: "lan1", Port: 21, ListenPort: 2122, Method: rules.TProxy}
)

// readyIC makes a set-up Backend with cfg in a fresh namespace of the
// interception tests.
func readyIC(t *testing.T, cfg Config) (*netns.NS, *Backend) {
	t.Helper()
	requireNFT(t)
	ns := netns.New(t, icPrefix)
	b := newBackend(t, ns, cfg)
	if err := b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return ns, b
}

// policyDump describes the namespace's policy routing that could be
// pasvgate's with the default table and priority: every rule that looks
// up the table or sits at the priority, and every route in the table, in
// both families. It is "" when there is none.
func policyDump(t testing.TB, ns *netns.NS) string {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var out strings.Builder
	for _, fam := range []struct {
		name string
		nl   int
	}{{"IPv4", netlink.FAMILY_V4}, {"IPv6", netlink.FAMILY_V6}} {
		rs, err := policyroute.RetryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam.nl) })
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Table != DefaultTProxyTable && r.Priority != DefaultTProxyPriority {
				continue
			}
			mask := "none"
			if r.Mask != nil {
				mask = fmt.Sprintf("0x%x", *r.Mask)
			}
			fmt.Fprintf(&out, "%s rule pref %d fwmark 0x%x/%s lookup %d\n", fam.name, r.Priority, r.Mark, mask, r.Table)
		}
		routes, err := policyroute.RetryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam.nl, &netlink.Route{Table: DefaultTProxyTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			dev := "?"
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			typ := fmt.Sprint(r.Type)
			if r.Type == 2 { // RTN_LOCAL
				typ = "local"
			}
			fmt.Fprintf(&out, "%s route %s %s dev %s table %d\n", fam.name, typ, r.Dst, dev, r.Table)
		}
	}
	return out.String()
}

// wantPolicy is the policy routing of TPROXY interception with the
// default configuration: the same as the iptables backend's.
const wantPolicy = `IPv4 rule pref 2121 fwmark 0x20000000/0x20000000 lookup 2121
IPv4 route local 0.0.0.0/0 dev lo table 2121
IPv6 rule pref 2121 fwmark 0x20000000/0x20000000 lookup 2121
IPv6 route local ::/0 dev lo table 2121
`

// checkPolicy fails the test unless the namespace's policy routing is
// want.
func checkPolicy(t *testing.T, ns *netns.NS, step, want string) {
	t.Helper()
	if got := policyDump(t, ns); got != want {
		t.Errorf("policy routing %s:\n%s\nwant:\n%s", step, got, want)
	}
}

// handles is `nft -a list ruleset`: the ruleset with every rule's handle,
// which changes whenever a rule is written again.
func handles(t *testing.T, ns *netns.NS) string {
	t.Helper()
	return ns.MustRun(t, "nft", "-a", "list", "ruleset")
}

// checkRuleset fails the test unless the namespace's ruleset (element
// lifetimes blanked) is want.
func checkRuleset(t *testing.T, ns *netns.NS, step, want string) {
	t.Helper()
	if got := stableRuleset(t, ns); got != want {
		t.Errorf("ruleset %s:\n%s\nwant:\n%s", step, got, want)
	}
}

// TestInterceptGolden follows an operator's view of the ruleset and the
// policy routing through every interception step: each method alone and
// back, both (against a golden file), again (nothing written), a
// conflicting interception, StopIntercept of each (back to what Setup
// left), and Flush (nothing left).
func TestInterceptGolden(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns := netns.New(t, icPrefix)
	b := newBackend(t, ns, Config{})
	if err := b.Intercept(ctx, icRedirect); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("Intercept before Setup = %v, want ErrNotSetUp", err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	afterSetup := stableRuleset(t, ns)
	checkPolicy(t, ns, "after Setup", "")

	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatalf("Intercept %s: %v", ic, err)
		}
		want := ""
		if ic.Method == rules.TProxy {
			want = wantPolicy
		}
		checkPolicy(t, ns, "after Intercept "+ic.Method, want)
		got := stableRuleset(t, ns)
		if n := strings.Count(got, `comment "`+interceptComment(ic)+`"`); n != 2 {
			t.Errorf("Intercept %s: %d rules with its comment, want one per family:\n%s", ic, n, got)
		}
		if err := b.StopIntercept(ctx, ic); err != nil {
			t.Fatalf("StopIntercept %s: %v", ic, err)
		}
		checkRuleset(t, ns, "after StopIntercept "+ic.Method, afterSetup)
		checkPolicy(t, ns, "after StopIntercept "+ic.Method, "")
	}

	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatalf("Intercept %s: %v", ic, err)
		}
	}
	intercepted := stableRuleset(t, ns)
	golden(t, "intercepted.golden", intercepted)
	checkPolicy(t, ns, "after Intercept of both", wantPolicy)

	// Again, and a conflicting and a missing interception: nothing is
	// written, so every rule keeps its handle.
	before := handles(t, ns)
	if err := b.Intercept(ctx, icTProxy); err != nil {
		t.Fatalf("second Intercept: %v", err)
	}
	conflict := icRedirect
	conflict.Method = rules.TProxy
	if err := b.Intercept(ctx, conflict); !errors.Is(err, rules.ErrExists) {
		t.Errorf("Intercept of %s over %s = %v, want ErrExists", conflict, icRedirect, err)
	}
	conflict = icTProxy
	conflict.ListenPort = 2999
	if err := b.Intercept(ctx, conflict); !errors.Is(err, rules.ErrExists) {
		t.Errorf("Intercept of %s over %s = %v, want ErrExists", conflict, icTProxy, err)
	}
	missing := rules.Interception{Iface: "lan7", Port: 21, ListenPort: 2121, Method: rules.TProxy}
	if err := b.StopIntercept(ctx, missing); err != nil {
		t.Errorf("StopIntercept of what is not installed: %v", err)
	}
	if got := handles(t, ns); got != before {
		t.Errorf("a repeated, a conflicting or a missing interception wrote rules:\n%s\nwant:\n%s", got, before)
	}
	checkPolicy(t, ns, "after a repeated Intercept", wantPolicy)
	if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
		t.Errorf("List with interceptions = %v, %v; want no mappings", ms, err)
	}

	// Mappings come and go beside the interceptions.
	m := rulestest.Sample("m-1", 40001)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, m); err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after a mapping came and went", intercepted)

	if err := b.StopIntercept(ctx, icRedirect); err != nil {
		t.Fatal(err)
	}
	checkPolicy(t, ns, "after StopIntercept of the redirect", wantPolicy)
	if err := b.StopIntercept(ctx, icTProxy); err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after StopIntercept of both", afterSetup)
	checkPolicy(t, ns, "after StopIntercept of both", "")

	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	checkRuleset(t, ns, "after Flush", "")
	checkPolicy(t, ns, "after Flush", "")
	if err := b.StopIntercept(ctx, icTProxy); err != nil {
		t.Errorf("StopIntercept after Flush: %v", err)
	}
	checkRuleset(t, ns, "after StopIntercept after Flush", "")
	if err := b.Intercept(ctx, icTProxy); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("Intercept after Flush = %v, want ErrNotSetUp", err)
	}
}

// TestInterceptSavedRulesetLoads saves the ruleset while both methods
// intercept, as operators save theirs, loads it back with nft -f, and
// checks that it is the same ruleset, that Intercept finds nothing to
// change in it, and that StopIntercept removes it cleanly.
func TestInterceptSavedRulesetLoads(t *testing.T) {
	ctx := context.Background()
	ns, b := readyIC(t, Config{})
	afterSetup := stableRuleset(t, ns)
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	intercepted := stableRuleset(t, ns)
	saved := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(saved, []byte(nftRuleset(t, ns)), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "flush", "ruleset")
	ns.MustRun(t, "nft", "-f", saved)
	checkRuleset(t, ns, "loaded back", intercepted)
	loaded := handles(t, ns)
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	if got := handles(t, ns); got != loaded {
		t.Errorf("Intercept rewrote the loaded rules: nft does not load back what it lists:\n%s\nwant:\n%s", got, loaded)
	}
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.StopIntercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	checkRuleset(t, ns, "after StopIntercept", afterSetup)
}

// ruleHandle reads the handle of the rule with comment in a chain of
// pasvgate's table of family, from `nft -a list`.
func ruleHandle(t *testing.T, ns *netns.NS, family, chain, comment string) string {
	t.Helper()
	out := ns.MustRun(t, "nft", "-a", "list", "chain", family, TableName, chain)
	m := regexp.MustCompile(`comment "` + regexp.QuoteMeta(comment) + `" # handle (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rule %q in:\n%s", comment, out)
	}
	return m[1]
}

// TestInterceptRepair damages the interception from outside in the ways
// a firewall reload or a hand can, and checks that Intercept puts back
// all of it and nothing more.
func TestInterceptRepair(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	want, err := os.ReadFile(filepath.Join("testdata", "intercepted.golden"))
	if err != nil {
		t.Fatal(err)
	}
	damages := []struct {
		name   string
		damage func(t *testing.T, ns *netns.NS)
	}{
		{"delete the redirect rule", func(t *testing.T, ns *netns.NS) {
			h := ruleHandle(t, ns, "ip", ChainIntercept, interceptComment(icRedirect))
			ns.MustRun(t, "nft", "delete", "rule", "ip", TableName, ChainIntercept, "handle", h)
		}},
		{"delete the tproxy chain", func(t *testing.T, ns *netns.NS) {
			ns.MustRun(t, "nft", "delete", "chain", "ip6", TableName, ChainTProxy)
		}},
		{"flush the interception chains", func(t *testing.T, ns *netns.NS) {
			ns.MustRun(t, "nft", "flush", "chain", "ip", TableName, ChainIntercept)
			ns.MustRun(t, "nft", "flush", "chain", "ip", TableName, ChainTProxy)
		}},
		{"delete the policy routing", func(t *testing.T, ns *netns.NS) {
			ns.MustRun(t, "ip", "-6", "rule", "del", "pref", "2121")
			ns.MustRun(t, "ip", "-4", "route", "flush", "table", "2121")
		}},
		{"flush the ruleset", func(t *testing.T, ns *netns.NS) {
			ns.MustRun(t, "nft", "flush", "ruleset")
		}},
	}
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			ns, b := readyIC(t, Config{})
			for _, ic := range []rules.Interception{icRedirect, icTProxy} {
				if err := b.Intercept(ctx, ic); err != nil {
					t.Fatal(err)
				}
			}
			intact := stableRuleset(t, ns)
			d.damage(t, ns)
			if stableRuleset(t, ns) == intact && policyDump(t, ns) == wantPolicy {
				t.Fatal("the damage changed nothing: the test proves nothing")
			}
			if err := b.Intercept(ctx, icTProxy); err != nil {
				t.Fatalf("Intercept after the damage: %v", err)
			}
			checkRuleset(t, ns, "after the repair", strings.TrimSpace(string(want)))
			checkPolicy(t, ns, "after the repair", wantPolicy)
		})
	}
}

// TestInterceptRebuild deletes pasvgate's tables from outside while it
// intercepts, as `nft flush ruleset` does, and checks that the next
// Install, which rebuilds the tables, puts the interception back with the
// mappings.
func TestInterceptRebuild(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	var logs bytes.Buffer
	ns, b := readyIC(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	m1, m2 := rulestest.Sample("m-1", 40001), rulestest.Sample("m-2", 40002)
	if err := b.Install(ctx, m1); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "flush", "ruleset")
	if err := b.Install(ctx, m2); err != nil {
		t.Fatalf("Install after nft flush ruleset: %v", err)
	}
	if !strings.Contains(logs.String(), "rebuilding it") {
		t.Errorf("the rebuild was not logged:\n%s", logs.String())
	}
	for _, m := range []rules.Mapping{m1, m2} {
		if err := b.Remove(ctx, m); err != nil {
			t.Errorf("Remove %s after the rebuild: %v", m.ID, err)
		}
	}
	want, err := os.ReadFile(filepath.Join("testdata", "intercepted.golden"))
	if err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after the rebuild", strings.TrimSpace(string(want)))
	// The interception is this process's again: it goes as usual.
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := b.StopIntercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	setup, err := os.ReadFile(filepath.Join("testdata", "setup.golden"))
	if err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after StopIntercept", strings.TrimSpace(string(setup)))
	checkPolicy(t, ns, "after StopIntercept", "")
}

// TestInterceptSweep leaves an interception behind, as a killed process
// does, made with another mark, and checks that the next process's Setup
// removes all of it: chains, rules and policy routing.
func TestInterceptSweep(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns := netns.New(t, icPrefix)
	old := newBackend(t, ns, Config{TProxyMark: 0x4})
	if err := old.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ic := range []rules.Interception{icRedirect, icTProxy} {
		if err := old.Intercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Install(ctx, rulestest.Sample("m-1", 40001)); err != nil {
		t.Fatal(err)
	}
	if got := policyDump(t, ns); !strings.Contains(got, "fwmark 0x4/0x4 lookup 2121") {
		t.Fatalf("policy routing of the first process:\n%s", got)
	}

	var logs bytes.Buffer
	b := newBackend(t, ns, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join("testdata", "setup.golden"))
	if err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after Setup over leftovers", strings.TrimSpace(string(want)))
	checkPolicy(t, ns, "after Setup over leftovers", "")
	for _, s := range []string{"removing interception left by an earlier process", "removed TPROXY policy routing"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("Setup did not log %q; logs:\n%s", s, logs.String())
		}
	}
}

// TestInterceptRollback makes the kernel refuse the last step of an
// interception change, the IPv6 rules (a chain of the interception
// chain's name that is not a base chain is in the way), and checks that
// Intercept fails and leaves the IPv4 rules and the policy routing as they
// were, with the interception already installed kept.
func TestInterceptRollback(t *testing.T) {
	ctx := context.Background()
	ns, b := readyIC(t, Config{})
	if err := b.Intercept(ctx, icRedirect); err != nil {
		t.Fatal(err)
	}
	before := stableRuleset(t, ns)
	ns.MustRun(t, "nft", "add", "chain", "ip6", TableName, ChainTProxy)
	err := b.Intercept(ctx, icTProxy)
	if err == nil {
		t.Fatal("Intercept over a chain in the way succeeded")
	}
	t.Logf("Intercept: %v", err)
	if !strings.Contains(err.Error(), "IPv6 rules") || strings.Contains(err.Error(), "rolling back") {
		t.Errorf("want an error that names the failed step and no failed rollback: %v", err)
	}
	// The rollback of the failed step took the chain in the way too: it
	// is in pasvgate's table, under pasvgate's name, where it is
	// pasvgate's to remove.
	checkRuleset(t, ns, "after a failed Intercept", before)
	checkPolicy(t, ns, "after a failed Intercept", "")
	if err := b.Intercept(ctx, icTProxy); err != nil {
		t.Fatalf("Intercept with the way clear: %v", err)
	}
	checkPolicy(t, ns, "after Intercept", wantPolicy)
	want, err := os.ReadFile(filepath.Join("testdata", "intercepted.golden"))
	if err != nil {
		t.Fatal(err)
	}
	checkRuleset(t, ns, "after Intercept", strings.TrimSpace(string(want)))
}

// TestInterceptInvalid checks that a bad interception or policy routing
// configuration is refused before anything is sent.
func TestInterceptInvalid(t *testing.T) {
	ctx := context.Background()
	ns, b := readyIC(t, Config{})
	before := handles(t, ns)
	for _, ic := range []rules.Interception{
		{Iface: "lan0 x", Port: 21, ListenPort: 2121, Method: rules.Redirect},
		{Iface: `lan"0`, Port: 21, ListenPort: 2121, Method: rules.TProxy},
		{Iface: `lan\0`, Port: 21, ListenPort: 2121, Method: rules.TProxy},
		{Iface: "lan*", Port: 21, ListenPort: 2121, Method: rules.Redirect},
		{Iface: "lan0", Port: 21, ListenPort: 0, Method: rules.TProxy},
		{Iface: "lan0", Port: 21, ListenPort: 2121, Method: ""},
	} {
		if err := b.Intercept(ctx, ic); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Intercept(%+v) = %v, want ErrInvalid", ic, err)
		}
		if err := b.StopIntercept(ctx, ic); !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("StopIntercept(%+v) = %v, want ErrInvalid", ic, err)
		}
	}
	if got := handles(t, ns); got != before {
		t.Errorf("invalid interceptions changed the ruleset:\n%s", got)
	}
	checkPolicy(t, ns, "after invalid interceptions", "")
	for _, cfg := range []Config{{TProxyTable: 254}, {TProxyPriority: 40000}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestInterceptIPv6Off checks that with IPv6 off interception touches
// neither an ip6 table nor IPv6 policy routing.
func TestInterceptIPv6Off(t *testing.T) {
	ctx := context.Background()
	ns, b := readyIC(t, Config{DisableIPv6: true})
	if err := b.Intercept(ctx, icTProxy); err != nil {
		t.Fatal(err)
	}
	if got := ns.MustRun(t, "nft", "list", "tables"); strings.TrimSpace(got) != "table ip "+TableName {
		t.Errorf("tables with IPv6 off:\n%s", got)
	}
	var v4only []string
	for _, l := range strings.SplitAfter(wantPolicy, "\n") {
		if strings.HasPrefix(l, "IPv4") {
			v4only = append(v4only, l)
		}
	}
	checkPolicy(t, ns, "with IPv6 off", strings.Join(v4only, ""))
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	checkPolicy(t, ns, "after Flush", "")
}

// TestInterceptMany installs many interceptions of both methods at once
// (one per interface) and checks that each family's chains are still
// written in one batch that the library reads back in step: every rule
// is there, and the socket keeps working for mappings.
func TestInterceptMany(t *testing.T) {
	ctx := context.Background()
	ns, b := readyIC(t, Config{})
	const n = 24
	var ics []rules.Interception
	for i := range n {
		ic := rules.Interception{Iface: fmt.Sprintf("lan%d", i), Port: 21, ListenPort: 2121, Method: rules.Redirect}
		if i%2 == 1 {
			ic.Method, ic.ListenPort, ic.Port = rules.TProxy, 2122, uint16(21+i%4)
		}
		ics = append(ics, ic)
		if err := b.Intercept(ctx, ic); err != nil {
			t.Fatalf("Intercept %s: %v", ic, err)
		}
	}
	// A rebuild writes them all in one batch per family.
	ns.MustRun(t, "nft", "flush", "ruleset")
	if err := b.Install(ctx, rulestest.Sample("m-1", 40001)); err != nil {
		t.Fatal(err)
	}
	got := stableRuleset(t, ns)
	for _, ic := range ics {
		if c := strings.Count(got, `comment "`+interceptComment(ic)+`"`); c != 2 {
			t.Errorf("%s: %d rules, want 2", ic, c)
		}
	}
	if ms, err := b.List(ctx); err != nil || len(ms) != 1 {
		t.Errorf("List after the rebuild = %v, %v; want the mapping", ms, err)
	}
	for _, ic := range ics {
		if err := b.StopIntercept(ctx, ic); err != nil {
			t.Fatal(err)
		}
	}
	checkPolicy(t, ns, "after StopIntercept of all", "")
}

// TestAvailableIntercept runs the interception check for both methods in
// a namespace and checks that it left no table behind, and that it
// refuses an unknown method.
func TestAvailableIntercept(t *testing.T) {
	requireNFT(t)
	ns := netns.New(t, icPrefix)
	for _, m := range []string{rules.Redirect, rules.TProxy} {
		if err := availableIntercept(int(ns.Handle()), m, false); err != nil {
			t.Errorf("availableIntercept(%s): %v", m, err)
		}
	}
	if err := availableIntercept(int(ns.Handle()), "magic", false); !errors.Is(err, rules.ErrInvalid) {
		t.Errorf("availableIntercept(magic) = %v, want ErrInvalid", err)
	}
	if got := nftRuleset(t, ns); got != "" {
		t.Errorf("availableIntercept left:\n%s", got)
	}
	checkPolicy(t, ns, "after availableIntercept", "")
}
