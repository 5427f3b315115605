package hostfw

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

// nsPrefix names every namespace these tests make.
const nsPrefix = "hfw"

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	if err := netns.Sweep(nsPrefix); err != nil {
		fmt.Fprintln(os.Stderr, "sweeping stale namespaces:", err)
	}
	// iptables-legacy's lock file is one for all namespaces: this test
	// binary gets its own, so that it never waits for, or holds up,
	// iptables anywhere else on the machine.
	dir, err := os.MkdirTemp("", "hfw-lock")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XTABLES_LOCKFILE", filepath.Join(dir, "xtables.lock"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
