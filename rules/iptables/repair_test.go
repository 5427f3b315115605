package iptables

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestExecBudget checks that Install and Remove cost one exec each on the
// normal path, and what a repair costs.
func TestExecBudget(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, nsPrefix)
		b := newBackend(t, ns, path, Config{})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		step := func(name string, want int64, f func() error) {
			t.Helper()
			before := b.b.execs.Load()
			if err := f(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := b.b.execs.Load() - before; got != want {
				t.Errorf("%s ran %d binaries, want %d", name, got, want)
			}
		}
		m1, m2 := rulestest.Sample("m-1", 40001), rulestest.Sample("m-2", 40002)
		step("Install", 1, func() error { return b.Install(ctx, m1) })
		step("Remove", 1, func() error { return b.Remove(ctx, m1) })
		step("List", 2, func() error { _, err := b.List(ctx); return err })
		step("Install", 1, func() error { return b.Install(ctx, m1) })
		v4, _, _ := deriveBinaries(path)
		ns.MustRun(t, v4.iptables, "-t", "nat", "-F", "PREROUTING")
		// The failed batch, iptables-save, the repairing batch.
		step("Install after a flush of PREROUTING", 3, func() error { return b.Install(ctx, m2) })
		step("Remove", 1, func() error { return b.Remove(ctx, m2) })
		step("Remove", 1, func() error { return b.Remove(ctx, m1) })
	})
}

// TestRepair damages pasvgate's rules from outside in the ways firewalls
// and admins do, and checks that the next Install logs it and restores
// pasvgate's part of the ruleset exactly, with every mapping installed
// before, and the jumps first in their chains.
func TestRepair(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	damages := []struct {
		name string
		v6   bool
		// siteIntact: the damage leaves the site firewall's rules alone, so
		// the whole ruleset must come back as it was.
		siteIntact bool
		// spent: the damage deletes pasvgate's nat rules, and with them
		// the xt_recent lists that tell whether a mapping was used, so
		// the repair puts the damaged family's mappings back without
		// their DNAT rule.
		spent bool
		cmds  [][]string // arguments to the family's iptables binary
	}{
		{name: "firewall reload", siteIntact: true, spent: true},
		{name: "flush built-in chains", cmds: [][]string{{"-F", "FORWARD"}, {"-t", "nat", "-F", "PREROUTING"}, {"-t", "nat", "-F", "OUTPUT"}, {"-t", "nat", "-F", "POSTROUTING"}}},
		{name: "flush nat PREROUTING", cmds: [][]string{{"-t", "nat", "-F", "PREROUTING"}}},
		{name: "flush whole tables", spent: true, cmds: [][]string{{"-F"}, {"-t", "nat", "-F"}}},
		{name: "flush and delete every chain", spent: true, cmds: [][]string{{"-F"}, {"-X"}, {"-t", "nat", "-F"}, {"-t", "nat", "-X"}}},
		{name: "empty the admit chain", siteIntact: true, cmds: [][]string{{"-F", ChainAdmit}}},
		{name: "delete the OUTPUT jump", siteIntact: true, cmds: [][]string{{"-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "pasvgate", "-j", ChainDNAT}}},
		{name: "IPv6 flush built-in chains", v6: true, cmds: [][]string{{"-F", "FORWARD"}, {"-t", "nat", "-F", "PREROUTING"}}},
		{name: "IPv6 firewall reload", v6: true, siteIntact: true, spent: true},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		want, err := os.ReadFile(filepath.Join("testdata", filepath.Base(path), "2-installed.golden"))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range damages {
			t.Run(d.name, func(t *testing.T) {
				ns := netns.New(t, nsPrefix)
				loadFirewall(t, ns, path)
				var logs bytes.Buffer
				b := newBackend(t, ns, path, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				ms := goldenMappings()
				for _, m := range ms[:2] {
					if err := b.Install(ctx, m); err != nil {
						t.Fatal(err)
					}
				}
				// The mappings of the damaged family are installed before
				// the damage, so that the repair has to put them back.
				v4, v6, _ := deriveBinaries(path)
				m, bin, fam := rulestest.Sample("m-4", 40004), v4.iptables, "IPv4"
				if d.v6 {
					if err := b.Install(ctx, ms[2]); err != nil {
						t.Fatal(err)
					}
					m, bin, fam = rulestest.Sample6("m-4", 40004), v6.iptables, "IPv6"
				}
				if len(d.cmds) == 0 {
					loadFirewall(t, ns, path, fam)
				}
				for _, c := range d.cmds {
					ns.MustRun(t, bin, c...)
				}

				if err := b.Install(ctx, m); err != nil {
					t.Fatalf("Install after damage: %v", err)
				}
				if !strings.Contains(logs.String(), "putting them back") {
					t.Errorf("repair not logged; logs:\n%s", logs.String())
				}
				if err := b.Remove(ctx, m); err != nil {
					t.Fatalf("Remove: %v", err)
				}
				if !d.v6 {
					if err := b.Install(ctx, ms[2]); err != nil {
						t.Fatal(err)
					}
				}
				got := dump(t, ns, path)
				want := string(want)
				if d.spent {
					want = withoutDNAT(want, d.v6)
				}
				if d.siteIntact {
					if got != want {
						t.Errorf("ruleset after repair:\n%s", lineDiff(want, got))
					}
				} else if g, w := ours(got), ours(want); g != w {
					t.Errorf("pasvgate's rules after repair:\n%s", lineDiff(w, g))
				}
				for _, f := range b.b.families() {
					var st *saved
					if err := ns.Do(func() (err error) { st, err = b.b.save(ctx, f); return err }); err != nil {
						t.Fatal(err)
					}
					for _, j := range jumps {
						if n, first := st.count(j.rule()); n != 1 || !first {
							t.Errorf("%s: %d jumps %s -> %s, first %v; want one, first", f.name, n, j.from, j.to, first)
						}
					}
				}
			})
		}
	})
}

// withoutDNAT is a dump without the DNAT rules of one family's section
// (the ip6tables one if v6), and so the state after a repair that put that
// family's mappings back used up.
func withoutDNAT(dump string, v6 bool) string {
	var out []string
	in := false
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "==") {
			in = strings.HasPrefix(l, "== ip6") == v6
		}
		if in && strings.HasPrefix(l, "-A "+ChainDNAT+" ") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// ours keeps the lines of a dump that are pasvgate's, and the table
// headers.
func ours(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, "PASVGATE") || strings.Contains(l, "pasvgate") || strings.HasPrefix(l, "*") || strings.HasPrefix(l, "==") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCheckInterval checks that with a check interval a flushed built-in
// chain goes unnoticed until the interval is over, and that deleted
// chains are noticed at once.
func TestCheckInterval(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		ns := netns.New(t, nsPrefix)
		var logs bytes.Buffer
		b := newBackend(t, ns, path, Config{CheckInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err := b.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		v4, _, _ := deriveBinaries(path)
		ns.MustRun(t, v4.iptables, "-t", "nat", "-F", "PREROUTING")
		before := b.b.execs.Load()
		if err := b.Install(ctx, rulestest.Sample("m-1", 40001)); err != nil {
			t.Fatal(err)
		}
		if n := b.b.execs.Load() - before; n != 1 || strings.Contains(logs.String(), "putting them back") {
			t.Errorf("Install within the interval ran %d binaries and logged %q; want 1 and no repair", n, logs.String())
		}
		ns.MustRun(t, v4.iptables, "-t", "nat", "-F")
		ns.MustRun(t, v4.iptables, "-t", "nat", "-X")
		if err := b.Install(ctx, rulestest.Sample("m-2", 40002)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "putting them back") {
			t.Errorf("deleted chains not repaired within the interval")
		}
		var st *saved
		if err := ns.Do(func() (err error) { st, err = b.b.save(ctx, b.b.fam4); return err }); err != nil {
			t.Fatal(err)
		}
		if d := st.damage(b.b.cfg.ConnMark); len(d) > 0 {
			t.Errorf("damage after the repair: %v", d)
		}
		if ms := st.mappings(); len(ms) != 2 {
			t.Errorf("mappings after the repair = %v, want m-1 and m-2", ms)
		}
	})
}
