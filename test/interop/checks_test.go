package interop

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestDrainedCheck proves that the after-cell check of the pasvgate cells
// can fail: a mapping rule in pasvgate's chains, or output from `rules
// list`, is reported, while a static rule in its chains is not. A stub
// stands in for the pasvgate binary; its `rules list` prints a file.
func TestDrainedCheck(t *testing.T) {
	l := lab.New(t, labOptions(0, false))
	dir := t.TempDir()
	listing := filepath.Join(dir, "rules.txt")
	stub := filepath.Join(dir, "pasvgate")
	script := "#!/bin/sh\ncat " + listing + " 2>/dev/null\nexit 0\n"
	if err := os.WriteFile(stub, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	pg := &pasvgate{l: l, bin: stub}
	ctx := t.Context()
	ipt := func(args ...string) {
		t.Helper()
		if _, err := l.Exec(ctx, l.GW, l.IPTables, append([]string{"-w", "5"}, args...)...); err != nil {
			t.Fatal(err)
		}
	}

	if left := pg.waitDrained(ctx); left != "" {
		t.Fatalf("clean gateway reported: %s", left)
	}

	if *flagBackend == "nftables" {
		// The nftables backend's mappings are map elements.
		nft := func(args ...string) {
			t.Helper()
			if _, err := l.Exec(ctx, l.GW, "nft", args...); err != nil {
				t.Fatal(err)
			}
		}
		nft("add", "table", "ip", "pasvgate")
		nft("add", "map", "ip", "pasvgate", "dnat_map",
			"{ type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }")
		if left := pg.waitDrained(ctx); left != "" {
			t.Fatalf("empty map reported: %s", left)
		}
		nft("add", "element", "ip", "pasvgate", "dnat_map",
			`{ 203.0.113.10 . 203.0.113.2 . 40000 comment "id=m-1" : 192.0.2.10 . 30000 }`)
		if left := pg.waitDrained(ctx); !strings.Contains(left, "mapping rules left: id=m-1") {
			t.Errorf("map element not reported: %q", left)
		}
		nft("delete", "table", "ip", "pasvgate")
	} else {
		ipt("-t", "nat", "-N", "PASVGATE-DNAT")
		ipt("-t", "filter", "-N", "PASVGATE-FORWARD")
		ipt("-t", "filter", "-A", "PASVGATE-FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
		mapping := []string{"PASVGATE-DNAT", "-s", lab.ClientAddr, "-d", lab.GWPublicAddr2, "-p", "tcp", "--dport", "40000",
			"-j", "DNAT", "--to-destination", lab.ServerAddr + ":30000"}
		ipt(append([]string{"-t", "nat", "-A"}, mapping...)...)
		if left := pg.waitDrained(ctx); !strings.Contains(left, "mapping rules left") || !strings.Contains(left, "--dport 40000") {
			t.Errorf("mapping rule not reported: %q", left)
		}

		ipt(append([]string{"-t", "nat", "-D"}, mapping...)...)
	}
	if err := os.WriteFile(listing, []byte("1 203.0.113.10 -> 203.0.113.2:40000 -> 192.0.2.10:30000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if left := pg.waitDrained(ctx); !strings.Contains(left, "rules list prints") {
		t.Errorf("rules list output not reported: %q", left)
	}

	if err := os.Remove(listing); err != nil {
		t.Fatal(err)
	}
	if left := pg.waitDrained(ctx); left != "" {
		t.Errorf("static rule counted as a mapping: %s", left)
	}
}
