// Package netns makes throw-away Linux network namespaces for tests that
// touch the kernel: pasvgate's rule backends (rules/iptables) run their
// contract, golden and traffic tests in them, and the FTP labs under test/
// build their client, gateway and server hosts out of them.
//
// Everything here is for tests. A namespace is named with a caller's prefix,
// the creating process's PID and a random suffix, so that concurrent test
// binaries never collide and Sweep can tell a dead process's leftovers from
// a live one's. Work inside a namespace happens either on a goroutine locked
// to an OS thread that has entered it (Do; sockets and child processes
// started there belong to it) or through `ip netns exec` (Command, Run).
// Nothing in this package ever changes the namespace the test binary started
// in.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	vnetns "github.com/vishvananda/netns"
)

// runDir is where named network namespaces are bind-mounted, as iproute2
// does it, so that `ip netns list` and `ip netns exec` see ours.
const runDir = "/run/netns"

// NS is a named network namespace created by this package.
type NS struct {
	// Name is the namespace's name under /run/netns, usable with
	// `ip netns exec`.
	Name   string
	handle vnetns.NsHandle
}

// RequireRoot skips the test unless it runs as root with the ip(8) tool
// installed: creating namespaces needs CAP_SYS_ADMIN, and Command needs ip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
}

// New creates a namespace named after prefix for the test and deletes it
// when the test ends, whether it passed or not. It skips the test unless it
// runs as root.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	n, err := Create(prefix)
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("deleting network namespace %s: %v", n.Name, err)
		}
	})
	return n
}

// Create creates a namespace named prefix-PID-RANDOM with only a loopback
// interface, which it brings up. The caller deletes it with Close.
func Create(prefix string) (*NS, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("making a namespace name: %w", err)
	}
	name := fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(rnd[:]))
	if err := validName(name); err != nil {
		return nil, err
	}

	// NewNamed moves the calling thread into the new namespace; it is moved
	// back before the thread is released to other goroutines.
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("opening the current network namespace: %w", err)
	}
	defer orig.Close()
	h, err := vnetns.NewNamed(name)
	restore(orig)
	if err != nil {
		// NewNamed may have got as far as the bind mount's target file.
		_ = vnetns.DeleteNamed(name)
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	n := &NS{Name: name, handle: h}
	if err := n.LinkUp("lo"); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

// restore moves the locked calling thread back to orig and unlocks it. If
// that fails the thread must never run another goroutine, so restore
// panics with the thread still locked: the runtime then destroys the thread
// with its goroutine instead of reusing it in the wrong namespace.
func restore(orig vnetns.NsHandle) {
	if err := vnetns.Set(orig); err != nil {
		panic(fmt.Sprintf("netns: cannot return to the original network namespace: %v", err))
	}
	runtime.UnlockOSThread()
}

// validName keeps names to what `ip netns` accepts and what is safe as a
// single path element.
func validName(name string) error {
	if name == "" || len(name) > 200 || strings.ContainsAny(name, "/ \t\n") || name == "." || name == ".." {
		return fmt.Errorf("bad network namespace name %q", name)
	}
	return nil
}

// Close deletes the namespace. The kernel frees it once nothing else
// refers to it (open sockets, processes still inside).
func (n *NS) Close() error {
	var errs []error
	if n.handle.IsOpen() {
		errs = append(errs, n.handle.Close())
	}
	if err := vnetns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("deleting network namespace %s: %w", n.Name, err))
	}
	return errors.Join(errs...)
}

// Handle returns the namespace's handle, for vishvananda/netlink's
// NewHandleAt and the like. It stays owned by n.
func (n *NS) Handle() vnetns.NsHandle { return n.handle }

// Do runs f on the calling goroutine, locked to an OS thread that has
// entered the namespace, and returns the thread to the original namespace
// before it returns. Sockets that f opens, and processes it starts with
// os/exec, belong to the namespace. f must not start goroutines that
// expect to be inside: they run on other threads.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening the current network namespace: %w", err)
	}
	defer orig.Close()
	if err := vnetns.Set(n.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", n.Name, err)
	}
	defer restore(orig)
	return f()
}

// Command returns a command that runs name with args inside the namespace
// through `ip netns exec`. It suits long-running processes such as an FTP
// server; the caller starts and stops it.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs name with args inside the namespace, bounded by ctx and by one
// minute, and returns its combined output. A failure's error contains the
// command line and the output.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := n.Command(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s in %s: %w: %s", strings.Join(append([]string{name}, args...), " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Sysctl sets a sysctl of the namespace, key in dotted form
// ("net.ipv4.ip_forward").
func (n *NS) Sysctl(key, value string) error {
	if strings.Contains(key, "/") || strings.Contains(key, "..") {
		return fmt.Errorf("bad sysctl key %q", key)
	}
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	// /proc/sys/net resolves to the namespace of the thread that opens it.
	return n.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace. local, if not empty, is the
// source address ("203.0.113.11:0").
func (n *NS) Dial(ctx context.Context, network, local, remote string) (net.Conn, error) {
	var d net.Dialer
	if local != "" {
		a, err := net.ResolveTCPAddr(network, local)
		if err != nil {
			return nil, err
		}
		d.LocalAddr = a
	}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, remote)
		return err
	})
	return c, err
}

// Sweep deletes namespaces named prefix-PID-* whose PID is no longer
// running: leftovers of test binaries that were killed before their
// cleanups ran. Namespaces of live processes are left alone.
func Sweep(prefix string) error {
	ents, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix+"-") {
			continue
		}
		// Names end in -PID-RANDOM whatever the prefix holds.
		f := strings.Split(e.Name(), "-")
		if len(f) < 3 {
			continue
		}
		pidStr := f[len(f)-2]
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); err == nil {
			continue
		}
		if err := vnetns.DeleteNamed(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
