package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen opens a TCP listener inside ns that answers every connection with
// greeting and closes it. The listener closes at test end.
func listen(t *testing.T, l *Lab, ns, addr, greeting string) {
	t.Helper()
	var ln net.Listener
	if err := l.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, greeting)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
}

// fetch connects from ns (bound to local) to remote and returns what the
// peer sent, with a short timeout: a dropped SYN must fail fast.
func fetch(l *Lab, ns, local, remote string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := l.Dial(ctx, ns, local, remote)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestTopology checks the reachability the interop suite relies on: the
// client reaches the gateway but not the server's network, the gateway
// reaches the server, and a DNAT restricted to the client's address lets the
// client through and keeps the intruder out — for both iptables backends.
func TestTopology(t *testing.T) {
	for _, ipt := range []string{"/usr/sbin/iptables-nft", "/usr/sbin/iptables-legacy"} {
		t.Run(ipt[strings.LastIndex(ipt, "/")+1:], func(t *testing.T) {
			l := New(t, Options{IPTables: ipt})
			listen(t, l, l.Server, ServerAddr+":30000", "server")
			listen(t, l, l.GW, GWPublicAddr+":2121", "gw")

			if got, err := fetch(l, l.Client, ClientAddr, GWPublicAddr+":2121"); err != nil || got != "gw" {
				t.Errorf("client -> gw: %q, %v", got, err)
			}
			if got, err := fetch(l, l.GW, "", ServerAddr+":30000"); err != nil || got != "server" {
				t.Errorf("gw -> server: %q, %v", got, err)
			}
			if got, err := fetch(l, l.Client, ClientAddr, ServerAddr+":30000"); err == nil {
				t.Errorf("client -> server without DNAT: got %q, want the gw to drop it", got)
			}

			ctx := t.Context()
			rules := [][]string{
				{"-t", "nat", "-A", "PREROUTING", "-s", ClientAddr, "-d", GWPublicAddr2, "-p", "tcp", "--dport", "40000",
					"-j", "DNAT", "--to-destination", ServerAddr + ":30000"},
				{"-A", "FORWARD", "-s", ClientAddr, "-d", ServerAddr, "-p", "tcp", "--dport", "30000", "-j", "ACCEPT"},
				{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			}
			for _, r := range rules {
				if _, err := l.Exec(ctx, l.GW, l.IPTables, append([]string{"-w", "5"}, r...)...); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := fetch(l, l.Client, ClientAddr, GWPublicAddr2+":40000"); err != nil || got != "server" {
				t.Errorf("client -> DNAT: %q, %v", got, err)
			}
			if got, err := fetch(l, l.Client, IntruderAddr, GWPublicAddr2+":40000"); err == nil {
				t.Errorf("intruder -> DNAT: got %q, want failure", got)
			}
		})
	}
}

// TestCapture checks that a capture in the client namespace sees a 227 the
// server sends through the gateway, that Leaks finds the private address in
// both forms, and that Stop returns promptly with the reader blocked.
func TestCapture(t *testing.T) {
	l := New(t, Options{})
	const reply = "227 Entering Passive Mode (192,0,2,10,117,48).\r\n211 see 192.0.2.10\r\n"
	listen(t, l, l.Server, ServerAddr+":30000", reply)
	for _, r := range [][]string{
		{"-t", "nat", "-A", "PREROUTING", "-d", GWPublicAddr2, "-p", "tcp", "--dport", "21", "-j", "DNAT", "--to-destination", ServerAddr + ":30000"},
		{"-A", "FORWARD", "-j", "ACCEPT"},
	} {
		if _, err := l.Exec(t.Context(), l.GW, l.IPTables, append([]string{"-w", "5"}, r...)...); err != nil {
			t.Fatal(err)
		}
	}
	c, err := l.Capture(l.Client, ClientIface)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fetch(l, l.Client, ClientAddr, GWPublicAddr2+":21")
	if err != nil || got != reply {
		t.Fatalf("fetch: %q, %v", got, err)
	}
	// Let the FIN exchange reach the tap, so the reader is blocked idle
	// when Stop runs: the case Close alone cannot end.
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	pkts, err := c.Stop()
	if err != nil {
		t.Errorf("stop: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stop took %v", d)
	}
	server := netip.MustParseAddrPort(GWPublicAddr2 + ":21")
	if s := Stream(pkts, server, netip.AddrPort{}); s != reply {
		t.Errorf("reply stream %q, want %q", s, reply)
	}
	if syns := SYNs(pkts); len(syns) != 1 || syns[0] != server {
		t.Errorf("SYNs %v, want [%v]", syns, server)
	}
	if leaks := Leaks(Payloads(pkts), PrivatePrefix); len(leaks) != 2 {
		t.Errorf("leaks %v, want the comma and the dotted form", leaks)
	}
	if leaks := Leaks([][]byte{[]byte("227 Entering Passive Mode (203,0,113,2,156,64)")}, PrivatePrefix); len(leaks) != 0 {
		t.Errorf("leaks in a clean reply: %v", leaks)
	}
}

// TestSweep checks that Sweep deletes a lab namespace whose creating
// process is gone and keeps one whose creator is alive.
func TestSweep(t *testing.T) {
	RequireRoot(t)
	// A pid that surely existed and is now gone: a child we reaped.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("pglab-%d-1-c", dead.Process.Pid)
	live := "pglab-1-1-c" // pid 1 is alive
	for _, ns := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() { _ = removeNS(ns) })
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	exists := func(ns string) bool {
		_, err := os.Stat(filepath.Join("/run/netns", ns))
		return err == nil
	}
	if exists(stale) {
		t.Errorf("%s survived the sweep", stale)
	}
	if !exists(live) {
		t.Errorf("%s (creator alive) was swept", live)
	}
}
