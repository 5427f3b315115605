package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// icPrefix names the namespaces of the interception tests.
const icPrefix = "pgic"

func (x nsBackend) Intercept(ctx context.Context, ic rules.Interception) error {
	return x.ns.Do(func() error { return x.b.Intercept(ctx, ic) })
}

func (x nsBackend) StopIntercept(ctx context.Context, ic rules.Interception) error {
	return x.ns.Do(func() error { return x.b.StopIntercept(ctx, ic) })
}

var _ rules.Interceptor = nsBackend{}

// policyDump describes the namespace's policy routing that could be
// pasvgate's, for the table and priority of cfg (defaults when zero): every
// rule that looks up the table or sits at the priority, and every route in
// the table, in both families. It is "" when there is none.
func policyDump(t testing.TB, ns *netns.NS, cfg Config) string {
	t.Helper()
	table, prio := cmpOr(cfg.TProxyTable, DefaultTProxyTable), cmpOr(cfg.TProxyPriority, DefaultTProxyPriority)
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
			if r.Table != table && r.Priority != prio {
				continue
			}
			mask := "none"
			if r.Mask != nil {
				mask = fmt.Sprintf("0x%x", *r.Mask)
			}
			fmt.Fprintf(&out, "%s rule pref %d fwmark 0x%x/%s lookup %d\n", fam.name, r.Priority, r.Mark, mask, r.Table)
		}
		routes, err := policyroute.RetryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam.nl, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
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

// dumpNoMangle is dump without an empty mangle table: one that holds no
// rule and no chain of its own, and whose built-in chains accept. Once
// TPROXY interception has used the mangle table, iptables-legacy keeps it
// in the kernel and iptables-nft keeps its (empty) base chains, and
// neither can take them out; such a table does nothing to a packet. It is
// the only trace of an interception that StopIntercept and Flush leave.
func dumpNoMangle(t testing.TB, ns *netns.NS, path string) string {
	t.Helper()
	lines := strings.SplitAfter(dump(t, ns, path), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		if lines[i] != "*mangle\n" {
			out = append(out, lines[i])
			continue
		}
		j := i + 1
		for j < len(lines) && strings.HasPrefix(lines[j], ":") && strings.HasSuffix(lines[j], " ACCEPT\n") &&
			slices.Contains([]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, strings.Fields(lines[j][1:])[0]) {
			j++
		}
		if j < len(lines) && lines[j] == "COMMIT\n" {
			i = j // empty: drop it
			continue
		}
		out = append(out, lines[i])
	}
	return strings.Join(out, "")
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// wantPolicy is the policy routing of TPROXY interception with the
// default configuration.
const wantPolicy = `IPv4 rule pref 2121 fwmark 0x20000000/0x20000000 lookup 2121
IPv4 route local 0.0.0.0/0 dev lo table 2121
IPv6 rule pref 2121 fwmark 0x20000000/0x20000000 lookup 2121
IPv6 route local ::/0 dev lo table 2121
`

// checkPolicy fails the test unless the namespace's policy routing is
// want.
func checkPolicy(t *testing.T, ns *netns.NS, step, want string) {
	t.Helper()
	if got := policyDump(t, ns, Config{}); got != want {
		t.Errorf("policy routing %s:\n%s", step, lineDiff(want, got))
	}
}

// TestInterceptGolden compares the namespace's whole ruleset, next to a
// site firewall, and its policy routing after each interception step:
// each method alone and back, both (against a golden file), again (no
// change, no iptables-restore), a conflicting interception, StopIntercept
// of each (back to what Setup left), and Flush (back to the site firewall
// alone).
func TestInterceptGolden(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		bin := filepath.Base(path)
		ns := netns.New(t, icPrefix)
		loadFirewall(t, ns, path)
		baseline := dump(t, ns, path)
		b := newBackend(t, ns, path, Config{})
		if err := b.Intercept(ctx, icRedirect); !errors.Is(err, ErrNotSetUp) {
			t.Errorf("Intercept before Setup = %v, want ErrNotSetUp", err)
		}
		if err := b.Setup(ctx); err != nil {
			t.Fatalf("Setup: %v", err)
		}
		afterSetup := dump(t, ns, path)
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
			got := dump(t, ns, path)
			if got == afterSetup || !strings.Contains(got, interceptRule(ic, false, DefaultTProxyMark).line("-A")) {
				t.Errorf("Intercept %s did not install its rule:\n%s", ic, got)
			}
			if err := b.StopIntercept(ctx, ic); err != nil {
				t.Fatalf("StopIntercept %s: %v", ic, err)
			}
			if got := dumpNoMangle(t, ns, path); got != afterSetup {
				t.Errorf("after StopIntercept %s the ruleset is not what Setup left:\n%s", ic.Method, lineDiff(afterSetup, got))
			}
			checkPolicy(t, ns, "after StopIntercept "+ic.Method, "")
		}

		for _, ic := range []rules.Interception{icRedirect, icTProxy} {
			if err := b.Intercept(ctx, ic); err != nil {
				t.Fatalf("Intercept %s: %v", ic, err)
			}
		}
		intercepted := dump(t, ns, path)
		golden(t, bin+"/3-intercepted.golden", intercepted)
		checkPolicy(t, ns, "after Intercept of both", wantPolicy)

		// Again: what iptables-save prints is what was generated, token
		// for token, so there is nothing to write.
		before := b.b.execs.Load()
		if err := b.Intercept(ctx, icTProxy); err != nil {
			t.Fatalf("second Intercept: %v", err)
		}
		if n, want := b.b.execs.Load()-before, int64(len(b.b.families())); n != want {
			t.Errorf("second Intercept ran %d binaries, want %d (one iptables-save per family)", n, want)
		}
		conflict := icRedirect
		conflict.Method = rules.TProxy
		if err := b.Intercept(ctx, conflict); !errors.Is(err, rules.ErrExists) {
			t.Errorf("Intercept of %s over %s = %v, want ErrExists", conflict, icRedirect, err)
		}
		missing := rules.Interception{Iface: "lan7", Port: 21, ListenPort: 2121, Method: rules.TProxy}
		if err := b.StopIntercept(ctx, missing); err != nil {
			t.Errorf("StopIntercept of what is not installed: %v", err)
		}
		if got := dump(t, ns, path); got != intercepted {
			t.Errorf("ruleset changed by a repeated, a conflicting or a missing interception:\n%s", lineDiff(intercepted, got))
		}
		checkPolicy(t, ns, "after a repeated Intercept", wantPolicy)
		if ms, err := b.List(ctx); err != nil || len(ms) != 0 {
			t.Errorf("List with interceptions = %v, %v; want no mappings", ms, err)
		}

		if err := b.StopIntercept(ctx, icRedirect); err != nil {
			t.Fatal(err)
		}
		checkPolicy(t, ns, "after StopIntercept of the redirect", wantPolicy)
		if err := b.StopIntercept(ctx, icTProxy); err != nil {
			t.Fatal(err)
		}
		if got := dumpNoMangle(t, ns, path); got != afterSetup {
			t.Errorf("after StopIntercept of both the ruleset is not what Setup left:\n%s", lineDiff(afterSetup, got))
		}
		checkPolicy(t, ns, "after StopIntercept of both", "")

		for _, ic := range []rules.Interception{icRedirect, icTProxy} {
			if err := b.Intercept(ctx, ic); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Install(ctx, rulestest.Sample("m-1", 40001)); err != nil {
			t.Fatal(err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if got := dumpNoMangle(t, ns, path); got != baseline {
			t.Errorf("after Flush the ruleset is not the site firewall alone:\n%s", lineDiff(baseline, got))
		}
		checkPolicy(t, ns, "after Flush", "")
		if err := b.StopIntercept(ctx, icTProxy); err != nil {
			t.Errorf("StopIntercept after Flush: %v", err)
		}
		if err := b.Intercept(ctx, icTProxy); !errors.Is(err, ErrNotSetUp) {
			t.Errorf("Intercept after Flush = %v, want ErrNotSetUp", err)
		}
	})
}

// TestInterceptSweep leaves an interception behind, as a killed process
// does, made with another mark, and checks that the next process's Setup
// removes it all: chains, jumps and policy routing.
func TestInterceptSweep(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, icPrefix)
		loadFirewall(t, ns, path)
		old := newBackend(t, ns, path, Config{TProxyMark: 0x4})
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
		if got := policyDump(t, ns, Config{}); !strings.Contains(got, "fwmark 0x4/0x4 lookup 2121") {
			t.Fatalf("policy routing of the first process:\n%s", got)
		}

		var logs bytes.Buffer
		b := newBackend(t, ns, path, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("testdata", filepath.Base(path), "1-setup.golden"))
		if err != nil {
			t.Fatal(err)
		}
		if got := dumpNoMangle(t, ns, path); got != string(want) {
			t.Errorf("ruleset after Setup over leftovers:\n%s", lineDiff(string(want), got))
		}
		checkPolicy(t, ns, "after Setup over leftovers", "")
		for _, s := range []string{"removing interception left by an earlier process", "removed TPROXY policy routing"} {
			if !strings.Contains(logs.String(), s) {
				t.Errorf("Setup did not log %q; logs:\n%s", s, logs.String())
			}
		}
	})
}

// TestInterceptInvalid checks that a bad interception is refused before
// anything runs.
func TestInterceptInvalid(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	path, err := exec.LookPath("iptables-legacy")
	if err != nil {
		t.Skip("iptables-legacy not installed")
	}
	ns := netns.New(t, icPrefix)
	b := newBackend(t, ns, path, Config{})
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	before := b.b.execs.Load()
	for _, ic := range []rules.Interception{
		{Iface: "lan0 -j ACCEPT", Port: 21, ListenPort: 2121, Method: rules.Redirect},
		{Iface: `lan"0`, Port: 21, ListenPort: 2121, Method: rules.TProxy},
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
	if n := b.b.execs.Load() - before; n != 0 {
		t.Errorf("invalid interceptions ran %d binaries", n)
	}
	checkPolicy(t, ns, "after invalid interceptions", "")
	for _, cfg := range []Config{{TProxyTable: 254}, {TProxyPriority: 40000}} {
		cfg.Path = path
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestInterceptFaults makes the binary fail at each point of an
// interception change and checks that Intercept fails and leaves the
// rules and the policy routing as they were, with an interception already
// installed kept as it was, and that the backend still works.
func TestInterceptFaults(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	// The calls of Intercept: 1 IPv4 iptables-save, 2 IPv4 restore, 3 IPv6
	// save, 4 IPv6 restore; the policy routing is netlink, no call.
	cases := []struct {
		name   string
		ic     rules.Interception
		faults map[int]string
	}{
		{"IPv4 save fails", icTProxy, map[int]string{1: "fail"}},
		{"IPv4 batch fails", icTProxy, map[int]string{2: "fail"}},
		{"IPv6 save fails", icTProxy, map[int]string{3: "fail"}},
		{"IPv6 batch fails", icTProxy, map[int]string{4: "fail"}},
		{"IPv6 batch commits but fails", icTProxy, map[int]string{4: "after"}},
		{"redirect, IPv6 batch commits but fails", icRedirect, map[int]string{4: "after"}},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		// One namespace for all cases: each must leave it as it found it.
		ns := netns.New(t, icPrefix)
		loadFirewall(t, ns, path)
		w := newWrapper(t, path)
		b := newBackend(t, ns, w.path, Config{})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		afterSetup := dump(t, ns, path)
		// Another interception is in place, and must stay.
		other := rules.Interception{Iface: "lan5", Port: 21, ListenPort: 2125, Method: rules.Redirect}
		if err := b.Intercept(ctx, other); err != nil {
			t.Fatal(err)
		}
		before := dump(t, ns, path)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				w.arm(c.faults)
				err := b.Intercept(ctx, c.ic)
				if err == nil {
					t.Fatalf("Intercept succeeded; calls:\n%s", w.calls())
				}
				t.Logf("Intercept: %v", err)
				if !strings.Contains(err.Error(), "injected failure") {
					t.Errorf("error does not carry the binary's output: %v", err)
				}
				if got := dumpNoMangle(t, ns, path); got != before {
					t.Errorf("ruleset after a failed Intercept; calls:\n%s\n%s", w.calls(), lineDiff(before, got))
				}
				checkPolicy(t, ns, "after a failed Intercept", "")

				w.arm(nil)
				if err := b.Intercept(ctx, c.ic); err != nil {
					t.Fatalf("Intercept after the fault: %v", err)
				}
				if err := b.StopIntercept(ctx, c.ic); err != nil {
					t.Fatal(err)
				}
				if got := dumpNoMangle(t, ns, path); got != before {
					t.Errorf("ruleset after StopIntercept:\n%s", lineDiff(before, got))
				}
				checkPolicy(t, ns, "after StopIntercept", "")
			})
		}
		if err := b.StopIntercept(ctx, other); err != nil {
			t.Fatal(err)
		}
		if got := dumpNoMangle(t, ns, path); got != afterSetup {
			t.Errorf("ruleset after the last StopIntercept:\n%s", lineDiff(afterSetup, got))
		}
	})
}

// TestInterceptStopFaults checks that StopIntercept goes on after a failed
// step, removing what it can, and that a second call removes the rest.
func TestInterceptStopFaults(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, icPrefix)
		w := newWrapper(t, path)
		b := newBackend(t, ns, w.path, Config{})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		afterSetup := dump(t, ns, path)
		if err := b.Intercept(ctx, icTProxy); err != nil {
			t.Fatal(err)
		}
		// Call 2 is the IPv4 batch.
		w.arm(map[int]string{2: "fail"})
		if err := b.StopIntercept(ctx, icTProxy); err == nil {
			t.Fatalf("StopIntercept succeeded; calls:\n%s", w.calls())
		}
		got := dump(t, ns, path)
		_, v6, _ := deriveBinaries(path)
		_, v6part, _ := strings.Cut(got, "== "+filepath.Base(v6.save))
		if !strings.Contains(got, ChainTProxy) || strings.Contains(v6part, ChainTProxy) {
			t.Errorf("after a failed IPv4 step, want the IPv4 chain kept and the IPv6 one gone:\n%s", got)
		}
		// The policy routing goes, as the IPv6 step did not fail; the
		// IPv4 TPROXY rule left behind then only fails to deliver.
		checkPolicy(t, ns, "after a failed StopIntercept", "")
		w.arm(nil)
		if err := b.StopIntercept(ctx, icTProxy); err != nil {
			t.Fatal(err)
		}
		if got := dumpNoMangle(t, ns, path); got != afterSetup {
			t.Errorf("ruleset after the second StopIntercept:\n%s", lineDiff(afterSetup, got))
		}
	})
}

// TestInterceptRepair damages the interception from outside together
// with the mapping jumps, and checks that the next Install puts the
// interception back as well.
func TestInterceptRepair(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	damages := []struct {
		name string
		cmds [][]string // arguments to iptables; none: a firewall reload
	}{
		{name: "firewall reload"},
		{name: "flush nat PREROUTING", cmds: [][]string{{"-t", "nat", "-F", "PREROUTING"}}},
		{name: "flush and delete nat chains", cmds: [][]string{{"-t", "nat", "-F"}, {"-t", "nat", "-X"}}},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		want, err := os.ReadFile(filepath.Join("testdata", filepath.Base(path), "3-intercepted.golden"))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range damages {
			t.Run(d.name, func(t *testing.T) {
				ns := netns.New(t, icPrefix)
				loadFirewall(t, ns, path)
				var logs bytes.Buffer
				b := newBackend(t, ns, path, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				for _, ic := range []rules.Interception{icRedirect, icTProxy} {
					if err := b.Intercept(ctx, ic); err != nil {
						t.Fatal(err)
					}
				}
				v4, _, _ := deriveBinaries(path)
				if len(d.cmds) == 0 {
					loadFirewall(t, ns, path, "IPv4")
				}
				for _, c := range d.cmds {
					ns.MustRun(t, v4.iptables, c...)
				}
				if out := ns.MustRun(t, v4.save); strings.Contains(out, "-j "+ChainIntercept) {
					t.Fatalf("the damage left the interception jump: the test proves nothing")
				}
				m := rulestest.Sample("m-1", 40001)
				if err := b.Install(ctx, m); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(logs.String(), "interception was removed from outside") {
					t.Errorf("interception repair not logged; logs:\n%s", logs.String())
				}
				if err := b.Remove(ctx, m); err != nil {
					t.Fatal(err)
				}
				got := dump(t, ns, path)
				if len(d.cmds) == 0 {
					if got != string(want) {
						t.Errorf("ruleset after the repair:\n%s", lineDiff(string(want), got))
					}
				} else if g, w := ours(got), ours(string(want)); g != w {
					t.Errorf("pasvgate's rules after the repair:\n%s", lineDiff(w, g))
				}
				checkPolicy(t, ns, "after the repair", wantPolicy)
			})
		}
	})
}

// TestInterceptIPv6Off checks that with IPv6 off interception touches
// neither ip6tables nor IPv6 policy routing.
func TestInterceptIPv6Off(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, icPrefix)
		b := newBackend(t, ns, path, Config{DisableIPv6: true})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Intercept(ctx, icTProxy); err != nil {
			t.Fatal(err)
		}
		_, v6, _ := deriveBinaries(path)
		if out := ns.MustRun(t, v6.save); strings.Contains(out, "PASVGATE") {
			t.Errorf("ip6tables touched with IPv6 off:\n%s", out)
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
	})
}
