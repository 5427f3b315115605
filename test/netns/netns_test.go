package netns

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const prefix = "pgipt-nstest"

// threadNS is the network namespace of the calling thread.
func threadNS(t *testing.T) string {
	t.Helper()
	l, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestCreateDoClose(t *testing.T) {
	RequireRoot(t)
	n, err := Create(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(n.Name, prefix+"-"+strconv.Itoa(os.Getpid())+"-") {
		t.Errorf("name %q lacks prefix and PID", n.Name)
	}
	if _, err := os.Stat(filepath.Join(runDir, n.Name)); err != nil {
		t.Errorf("namespace not under %s: %v", runDir, err)
	}
	var inside, host string
	err = n.Do(func() error {
		inside = threadNS(t)
		out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
		if strings.TrimSpace(string(out)) != inside {
			t.Errorf("child process in %s, want %s (%v)", out, inside, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	func() {
		// The thread Do used is back home: any thread of the process is.
		host = threadNS(t)
	}()
	if inside == host {
		t.Errorf("Do ran in the original namespace %s", host)
	}
	out, err := n.Run(context.Background(), "ip", "-o", "link", "show", "lo")
	if err != nil || !strings.Contains(out, "UP") {
		t.Errorf("loopback in the namespace: %q, %v", out, err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(runDir, n.Name)); !os.IsNotExist(err) {
		t.Errorf("namespace still there after Close: %v", err)
	}
}

func TestVethSysctlDial(t *testing.T) {
	a, b := New(t, prefix), New(t, prefix)
	if err := Veth(a, "va", b, "vb"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		n   *NS
		dev string
		p   string
	}{{a, "va", "192.0.2.1/24"}, {b, "vb", "192.0.2.2/24"}, {a, "va", "2001:db8::1/64"}, {b, "vb", "2001:db8::2/64"}} {
		if err := x.n.AddAddr(x.dev, netip.MustParsePrefix(x.p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.AddDefaultRoute(netip.MustParseAddr("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	if err := b.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if out := b.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("ip_forward in the namespace = %q, want 1", out)
	}
	if out := a.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "0" {
		t.Errorf("ip_forward leaked to another namespace: %q", out)
	}
	for _, addr := range []string{"192.0.2.2:7000", "[2001:db8::2]:7000"} {
		ln, err := b.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(c, c)
			done <- err
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.Dial(ctx, "tcp", "", addr)
		cancel()
		if err != nil {
			t.Fatalf("dialing %s across the veth: %v", addr, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Errorf("echo over %s = %q, %v", addr, buf, err)
		}
		c.(*net.TCPConn).CloseWrite()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
		c.Close()
		ln.Close()
	}
}

func TestSweep(t *testing.T) {
	RequireRoot(t)
	live := New(t, prefix)
	// A PID that was just used and is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := prefix + "-" + strconv.Itoa(cmd.Process.Pid) + "-stale"
	if out, err := exec.Command("ip", "netns", "add", dead).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", dead).Run() })
	if err := Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(runDir, dead)); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s not swept: %v", dead, err)
	}
	if _, err := os.Stat(filepath.Join(runDir, live.Name)); err != nil {
		t.Errorf("live namespace %s swept: %v", live.Name, err)
	}
}
