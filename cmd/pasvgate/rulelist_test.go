package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// TestWriteMappings: `rules list` shows a PASV mapping's dialed address
// in its last column, and "-" for a mapping without one; the columns
// before it are unchanged.
func TestWriteMappings(t *testing.T) {
	now := time.Unix(1700000100, 0)
	ms := []rules.Mapping{
		{ID: "m-1", Source: netip.MustParseAddr("203.0.113.10"),
			Public: netip.MustParseAddrPort("203.0.113.2:40001"), Dialed: netip.MustParseAddr("203.0.113.1"),
			Target: netip.MustParseAddrPort("192.0.2.10:30000"), Created: time.Unix(1700000000, 0)},
		{ID: "m-2", Source: netip.MustParseAddr("203.0.113.11"),
			Public: netip.MustParseAddrPort("203.0.113.1:40002"),
			Target: netip.MustParseAddrPort("192.0.2.10:30001")},
	}
	var b bytes.Buffer
	writeMappings(&b, ms, now)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"ID", "CLIENT", "PUBLIC", "BACKEND", "AGE", "DIALED"},
		{"m-1", "203.0.113.10", "203.0.113.2:40001", "192.0.2.10:30000", "1m40s", "203.0.113.1"},
		{"m-2", "203.0.113.11", "203.0.113.1:40002", "192.0.2.10:30001", "-", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q, want the fields %q", i, l, want[i])
		}
	}
}
