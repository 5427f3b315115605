package nftables

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

// nsPrefix names every namespace these tests make.
const nsPrefix = "pgnft"

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	// Namespaces of an earlier run that was killed before its cleanups
	// ran.
	for _, p := range []string{nsPrefix, icPrefix} {
		if err := netns.Sweep(p); err != nil {
			fmt.Fprintln(os.Stderr, "sweeping stale namespaces:", err)
		}
	}
	// The coexistence tests run iptables-legacy, whose lock file is one
	// for all namespaces: give this test binary its own, so that it never
	// waits for, or holds up, iptables anywhere else on the machine.
	dir, err := os.MkdirTemp("", "pgnft-lock")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XTABLES_LOCKFILE", filepath.Join(dir, "xtables.lock"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newBackend makes a Backend with cfg that works in ns only, closed when
// the test ends.
func newBackend(t testing.TB, ns *netns.NS, cfg Config) *Backend {
	t.Helper()
	cfg.NetNS = int(ns.Handle())
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// testLogger logs to the test's log when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
