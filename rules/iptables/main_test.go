package iptables

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// nsPrefix names every namespace these tests make.
const nsPrefix = "pgipt"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Namespaces of an earlier run that was killed before its
		// cleanups ran.
		for _, p := range []string{nsPrefix, icPrefix} {
			if err := netns.Sweep(p); err != nil {
				fmt.Fprintln(os.Stderr, "sweeping stale namespaces:", err)
			}
		}
		// The legacy binaries' lock file is one for all namespaces: give
		// this test binary its own, so that it never waits for, or holds
		// up, iptables anywhere else on the machine.
		dir, err := os.MkdirTemp("", "pgipt-lock")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Setenv("XTABLES_LOCKFILE", filepath.Join(dir, "xtables.lock"))
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// binaryNames are the two backends every kernel test runs against.
var binaryNames = []string{"iptables-nft", "iptables-legacy"}

// forEachBinary runs f as a subtest per iptables backend binary that is
// installed, with its full path.
func forEachBinary(t *testing.T, f func(t *testing.T, path string)) {
	for _, name := range binaryNames {
		t.Run(name, func(t *testing.T) {
			p, err := exec.LookPath(name)
			if err != nil {
				t.Skipf("%s not installed", name)
			}
			f(t, p)
		})
	}
}

// nsBackend runs every method of a Backend inside a network namespace, on
// a thread locked there, so that the binaries it execs act on that
// namespace and never on the machine's own rules.
type nsBackend struct {
	ns *netns.NS
	b  *Backend
}

var _ rules.Backend = nsBackend{}

func (x nsBackend) Setup(ctx context.Context) error {
	return x.ns.Do(func() error { return x.b.Setup(ctx) })
}

func (x nsBackend) Install(ctx context.Context, m rules.Mapping) error {
	return x.ns.Do(func() error { return x.b.Install(ctx, m) })
}

func (x nsBackend) Remove(ctx context.Context, m rules.Mapping) error {
	return x.ns.Do(func() error { return x.b.Remove(ctx, m) })
}

func (x nsBackend) List(ctx context.Context) ([]rules.Mapping, error) {
	var ms []rules.Mapping
	err := x.ns.Do(func() error {
		var err error
		ms, err = x.b.List(ctx)
		return err
	})
	return ms, err
}

func (x nsBackend) Flush(ctx context.Context) error {
	return x.ns.Do(func() error { return x.b.Flush(ctx) })
}

// newBackend makes a Backend for path, with cfg's other fields, that acts
// on ns only.
func newBackend(t testing.TB, ns *netns.NS, path string, cfg Config) nsBackend {
	t.Helper()
	cfg.Path = path
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	var b *Backend
	err := ns.Do(func() error {
		var err error
		b, err = New(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return nsBackend{ns, b}
}

// testLogger logs to the test's log at debug level when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
