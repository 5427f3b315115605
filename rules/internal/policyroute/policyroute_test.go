package policyroute

import (
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		table, prio int
		ok          bool
	}{
		{DefaultTable, DefaultPriority, true},
		{100, 1, true},
		{252, 32765, true},
		{253, 100, false},
		{254, 100, false},
		{255, 100, false},
		{0, 100, false},
		{-1, 100, false},
		{100, 32766, false},
		{100, 0, false},
	} {
		err := Config{Mark: DefaultMark, Table: tt.table, Priority: tt.prio}.Check()
		if tt.ok != (err == nil) {
			t.Errorf("Check(table %d, priority %d) = %v, want ok %v", tt.table, tt.prio, err, tt.ok)
		}
	}
}

// TestSync turns the policy routing on and off in a namespace, by file
// descriptor, next to an operator's rule and route, and over an earlier
// process's rule with another mark.
func TestSync(t *testing.T) {
	ns := netns.New(t, "pgic-pr")
	c := Config{Mark: DefaultMark, Table: DefaultTable, Priority: DefaultPriority, NetNS: int(ns.Handle())}
	show := func() string {
		t.Helper()
		out := ns.MustRun(t, "ip", "-4", "rule", "show") + ns.MustRun(t, "ip", "-6", "rule", "show")
		// `ip route show table 2121` fails while the table is empty.
		for _, fam := range []string{"-4", "-6"} {
			for _, l := range strings.Split(ns.MustRun(t, "ip", fam, "route", "show", "table", "all"), "\n") {
				if strings.Contains(l, "table 2121") {
					out += l + "\n"
				}
			}
		}
		return out
	}
	// An operator's rule at another priority and route in the table
	// stay; an earlier process's rule with mark 0x4 goes.
	ns.MustRun(t, "ip", "-4", "rule", "add", "pref", "3000", "fwmark", "0x8", "lookup", "2121")
	ns.MustRun(t, "ip", "-4", "route", "add", "unreachable", "192.0.2.0/24", "table", "2121")
	ns.MustRun(t, "ip", "-4", "rule", "add", "pref", "2121", "fwmark", "0x4/0x4", "lookup", "2121")
	base := show()

	for _, v6 := range []bool{false, true} {
		for range 2 { // the second time changes nothing
			if _, err := Sync(c, v6, true); err != nil {
				t.Fatalf("Sync on (v6 %v): %v", v6, err)
			}
		}
	}
	on := show()
	for _, want := range []string{
		"2121:\tfrom all fwmark 0x20000000/0x20000000 lookup 2121",
		"local default dev lo table 2121",
		"3000:\tfrom all fwmark 0x8 lookup 2121",
		"unreachable 192.0.2.0/24",
	} {
		if !strings.Contains(on, want) {
			t.Errorf("after Sync on, no %q in:\n%s", want, on)
		}
	}
	if strings.Contains(on, "0x4/0x4") || strings.Count(on, "fwmark 0x20000000") != 2 || strings.Count(on, "local default") != 2 {
		t.Errorf("after Sync on, want exactly one rule and one route per family and no older rule:\n%s", on)
	}

	removed := 0
	for _, v6 := range []bool{false, true} {
		n, err := Sync(c, v6, false)
		if err != nil {
			t.Fatalf("Sync off (v6 %v): %v", v6, err)
		}
		removed += n
	}
	if removed != 4 {
		t.Errorf("Sync off removed %d rules and routes, want 4", removed)
	}
	off := show()
	if strings.Contains(off, "0x20000000") || strings.Contains(off, "local default") {
		t.Errorf("after Sync off:\n%s", off)
	}
	for _, line := range []string{"3000:", "unreachable 192.0.2.0/24"} {
		if !strings.Contains(off, line) {
			t.Errorf("after Sync off the operator's %q is gone:\n%s\nbefore:\n%s", line, off, base)
		}
	}
}
