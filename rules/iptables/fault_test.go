package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// wrapperScript stands in for every iptables binary. It counts its calls
// and runs the real binary, except for a call N for which the file fail-N
// names a fault:
//
//	fail         exit 1 without running the binary
//	first-table  run iptables-restore on its input up to the first COMMIT
//	             (the filter table commits, nat does not), then exit 1
//	after        run the binary, then exit 1 as if it had failed
//	hang         sleep 30 s (in a child, as a stuck binary would) then exit 1
const wrapperScript = `#!/bin/sh
dir=$(dirname "$0")
real="$(cat "$dir/real-dir")/$(basename "$0")"
n=$(( $(cat "$dir/count") + 1 ))
echo $n > "$dir/count"
echo "$n $(basename "$0") $*" >> "$dir/calls"
fault=$(cat "$dir/fail-$n" 2>/dev/null)
case "$fault" in
fail) echo "injected failure" >&2; exit 1;;
first-table) sed '/^COMMIT$/q' | "$real" "$@"; echo "injected failure after the first table" >&2; exit 1;;
after) "$real" "$@"; echo "injected failure after the binary ran" >&2; exit 1;;
hang) sleep 30; exit 1;;
esac
exec "$real" "$@"
`

// wrapper is a directory of wrapper binaries for one real backend binary.
type wrapper struct {
	dir  string
	path string // what to use as Config.Path
}

func newWrapper(t *testing.T, realPath string) *wrapper {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "wrapper.sh")
	if err := os.WriteFile(script, []byte(wrapperScript), 0o755); err != nil {
		t.Fatal(err)
	}
	v4, v6, err := deriveBinaries(filepath.Base(realPath))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []binaries{v4, v6} {
		for _, name := range []string{b.iptables, b.restore, b.save} {
			if err := os.Symlink(script, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	w := &wrapper{dir: dir, path: filepath.Join(dir, v4.iptables)}
	w.write("real-dir", filepath.Dir(realPath))
	w.arm(nil)
	return w
}

func (w *wrapper) write(name, content string) {
	if err := os.WriteFile(filepath.Join(w.dir, name), []byte(content), 0o644); err != nil {
		panic(err)
	}
}

// arm resets the call count and sets the faults for the coming calls,
// counted from 1.
func (w *wrapper) arm(faults map[int]string) {
	ents, _ := filepath.Glob(filepath.Join(w.dir, "fail-*"))
	for _, e := range ents {
		os.Remove(e)
	}
	for n, f := range faults {
		w.write(fmt.Sprintf("fail-%d", n), f)
	}
	w.write("count", "0")
	w.write("calls", "")
}

// calls returns the calls since arm.
func (w *wrapper) calls() string {
	b, _ := os.ReadFile(filepath.Join(w.dir, "calls"))
	return string(b)
}

// TestInstallFaults makes the binary fail at each point of an install
// where it can, in each way, and checks that Install fails and leaves the
// ruleset exactly as Setup left it, and that the backend still works.
func TestInstallFaults(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	type fault = map[int]string
	cases := []struct {
		name   string
		faults fault
	}{
		// Call 1 is the install batch.
		{"batch fails", fault{1: "fail"}},
		{"batch commits filter only", fault{1: "first-table"}},
		{"batch commits all but fails", fault{1: "after"}},
		// Then call 2 is the iptables-save that looks at what is left.
		{"filter only, then save fails", fault{1: "first-table", 2: "fail"}},
		{"all, then save fails", fault{1: "after", 2: "fail"}},
		{"nothing, then save fails", fault{1: "fail", 2: "fail"}},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ns := netns.New(t, nsPrefix)
				loadFirewall(t, ns, path)
				w := newWrapper(t, path)
				b := newBackend(t, ns, w.path, Config{})
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				installed := rulestest.Sample("m-1", 40001)
				if err := b.Install(ctx, installed); err != nil {
					t.Fatal(err)
				}
				before := dump(t, ns, path)

				m := rulestest.Sample("m-2", 40002)
				w.arm(c.faults)
				err := b.Install(ctx, m)
				if err == nil {
					t.Fatalf("Install succeeded; calls:\n%s", w.calls())
				}
				t.Logf("Install: %v", err)
				if !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), "restore") {
					t.Errorf("error does not carry the command line and output: %v", err)
				}
				if got := dump(t, ns, path); got != before {
					t.Errorf("ruleset after a failed install is not as before; calls:\n%s\n%s", w.calls(), lineDiff(before, got))
				}
				w.arm(nil)
				if err := b.Install(ctx, m); err != nil {
					t.Fatalf("Install after the fault: %v", err)
				}
				for _, m := range []rules.Mapping{m, installed} {
					if err := b.Remove(ctx, m); err != nil {
						t.Fatalf("Remove: %v", err)
					}
				}
			})
		}
	})
}

// TestRepairFaults damages the jumps from outside so that Install has to
// repair, and makes the binary fail at each later step: Install must fail
// and leave no rule of the new mapping, and the next Install must repair
// everything.
func TestRepairFaults(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	type fault = map[int]string
	// Call 1 fails by itself (the nat jump checks fail after the filter
	// section committed), 2 is the save, 3 the repairing batch, 4 the save
	// after it failed, 5 the rollback.
	cases := []struct {
		name   string
		faults fault
	}{
		{"save fails", fault{2: "fail"}},
		{"repair fails", fault{3: "fail"}},
		{"repair commits filter only", fault{3: "first-table"}},
		{"repair commits all but fails", fault{3: "after"}},
		{"repair fails, then save fails", fault{3: "first-table", 4: "fail"}},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		want, err := os.ReadFile(filepath.Join("testdata", filepath.Base(path), "2-installed.golden"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ns := netns.New(t, nsPrefix)
				loadFirewall(t, ns, path)
				w := newWrapper(t, path)
				b := newBackend(t, ns, w.path, Config{})
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				ms := goldenMappings()
				for _, m := range ms[:2] {
					if err := b.Install(ctx, m); err != nil {
						t.Fatal(err)
					}
				}
				v4, _, _ := deriveBinaries(path)
				for _, j := range jumps {
					if j.table == tableNAT {
						ns.MustRun(t, v4.iptables, append([]string{"-t", j.table, "-D", j.from}, j.rule().args...)...)
					}
				}

				m := rulestest.Sample("m-4", 40004)
				w.arm(c.faults)
				err := b.Install(ctx, m)
				if err == nil {
					t.Fatalf("Install succeeded; calls:\n%s", w.calls())
				}
				t.Logf("Install: %v", err)
				var st *saved
				if err := ns.Do(func() (err error) { st, err = b.b.save(ctx, b.b.fam4); return err }); err != nil {
					t.Fatal(err)
				}
				if left := st.rulesOf(m.ID); len(left) > 0 {
					t.Errorf("failed install left %d rules: %v; calls:\n%s", len(left), left, w.calls())
				}

				// The next install of the family repairs everything.
				w.arm(nil)
				if err := b.Install(ctx, m); err != nil {
					t.Fatalf("Install after the fault: %v", err)
				}
				if err := b.Remove(ctx, m); err != nil {
					t.Fatal(err)
				}
				if err := b.Install(ctx, ms[2]); err != nil {
					t.Fatal(err)
				}
				if got := dump(t, ns, path); got != string(want) {
					t.Errorf("ruleset after the next install:\n%s", lineDiff(string(want), got))
				}
			})
		}
	})
}

// TestRemoveFaults makes the remove batch fail in each way. Remove reads
// the rules back and deletes what is left; when that fails too, Remove
// fails and keeps the mapping, so that a retry removes it. Either way the
// ruleset ends as Setup left it.
func TestRemoveFaults(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	cases := []struct {
		name    string
		faults  map[int]string
		wantErr error // nil: Remove must succeed at once
	}{
		// Call 1 is the remove batch, 2 the save, 3 the batch that deletes
		// what is left.
		{"batch fails", map[int]string{1: "fail"}, nil},
		{"batch commits nat only", map[int]string{1: "first-table"}, nil},
		{"batch commits all but fails", map[int]string{1: "after"}, rules.ErrNotInstalled},
		{"batch and save fail", map[int]string{1: "fail", 2: "fail"}, errAny},
		{"batch and clean-up fail", map[int]string{1: "fail", 3: "fail"}, errAny},
		{"nat only, then clean-up fails", map[int]string{1: "first-table", 3: "fail"}, errAny},
	}
	forEachBinary(t, func(t *testing.T, path string) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ns := netns.New(t, nsPrefix)
				loadFirewall(t, ns, path)
				w := newWrapper(t, path)
				b := newBackend(t, ns, w.path, Config{})
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				base := dump(t, ns, path)
				m := rulestest.Sample("m-1", 40001)
				if err := b.Install(ctx, m); err != nil {
					t.Fatal(err)
				}
				w.arm(c.faults)
				err := b.Remove(ctx, m)
				switch {
				case c.wantErr == nil && err != nil:
					t.Fatalf("Remove: %v; calls:\n%s", err, w.calls())
				case c.wantErr == errAny && err == nil:
					t.Fatalf("Remove succeeded")
				case c.wantErr != nil && c.wantErr != errAny && !errors.Is(err, c.wantErr):
					t.Fatalf("Remove = %v, want %v", err, c.wantErr)
				}
				w.arm(nil)
				if c.wantErr == errAny {
					if err := b.Remove(ctx, m); err != nil {
						t.Fatalf("second Remove: %v", err)
					}
				}
				if got := dump(t, ns, path); got != base {
					t.Errorf("ruleset after Remove:\n%s", lineDiff(base, got))
				}
			})
		}
	})
}

// errAny stands for "some error" in test tables.
var errAny = errors.New("any error")

// TestHang checks that a binary that hangs makes Install fail within about
// the bound, ExecTimeout or the caller's deadline, leaving nothing behind.
func TestHang(t *testing.T) {
	netns.RequireRoot(t)
	const bound = time.Second
	forEachBinary(t, func(t *testing.T, path string) {
		for _, byCtx := range []bool{false, true} {
			name := "ExecTimeout"
			if byCtx {
				name = "context deadline"
			}
			t.Run(name, func(t *testing.T) {
				ns := netns.New(t, nsPrefix)
				w := newWrapper(t, path)
				cfg := Config{ExecTimeout: bound}
				if byCtx {
					cfg.ExecTimeout = time.Minute
				}
				b := newBackend(t, ns, w.path, cfg)
				if err := b.Setup(context.Background()); err != nil {
					t.Fatal(err)
				}
				base := dump(t, ns, path)
				ctx := context.Background()
				if byCtx {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, bound)
					defer cancel()
				}
				w.arm(map[int]string{1: "hang"})
				start := time.Now()
				err := b.Install(ctx, rulestest.Sample("m-1", 40001))
				took := time.Since(start)
				t.Logf("Install after %v: %v", took, err)
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Install = %v, want a deadline error", err)
				}
				if took > bound+2*time.Second {
					t.Errorf("Install took %v, bound %v", took, bound)
				}
				if got := dump(t, ns, path); got != base {
					t.Errorf("ruleset after a hung install:\n%s", lineDiff(base, got))
				}
			})
		}
	})
}

// TestLockHeld holds the xtables lock that iptables-legacy waits for and
// checks that Install gives up after LockTimeout with ErrLocked, changing
// nothing.
func TestLockHeld(t *testing.T) {
	netns.RequireRoot(t)
	path, err := exec.LookPath("iptables-legacy")
	if err != nil {
		t.Skip("iptables-legacy not installed")
	}
	lockFile := os.Getenv("XTABLES_LOCKFILE")
	if lockFile == "" {
		t.Skip("TestMain gives the binaries a private lock file; without one this test would hold the machine's")
	}
	ns := netns.New(t, nsPrefix)
	b := newBackend(t, ns, path, Config{LockTimeout: time.Second})
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	base := dump(t, ns, path)

	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = b.Install(ctx, rulestest.Sample("m-1", 40001))
	took := time.Since(start)
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	t.Logf("Install after %v: %v", took, err)
	if !IsLocked(err) {
		t.Errorf("Install = %v, want ErrLocked", err)
	}
	if took > 4*time.Second {
		t.Errorf("Install took %v with a lock timeout of 1s", took)
	}
	if got := dump(t, ns, path); got != base {
		t.Errorf("ruleset after a locked install:\n%s", lineDiff(base, got))
	}
	if err := b.Install(ctx, rulestest.Sample("m-1", 40001)); err != nil {
		t.Fatalf("Install once the lock is free: %v", err)
	}
}
