package lifecycle

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// TestListenForms starts the real binary with each form of --listen that
// the README documents, in both orders, in a namespace with IPv6 on and
// one with IPv6 off, and checks that it starts, that a client of each
// family it listens for gets the server's greeting, and that it stops
// cleanly. Until listeners were opened per family, 0.0.0.0:P followed by
// [::]:P (the README's router sidecar) failed at start with "address
// already in use".
func TestListenForms(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	for _, ipv6 := range []bool{true, false} {
		t.Run(fmt.Sprintf("ipv6=%v", ipv6), func(t *testing.T) {
			ns := gateway(t)
			if !ipv6 {
				for _, k := range []string{"all", "default", "lo"} {
					if err := ns.Sysctl("net.ipv6.conf."+k+".disable_ipv6", "1"); err != nil {
						t.Fatal(err)
					}
				}
			}
			start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
				"--passive-ports", "30000-30099")
			for _, tc := range []struct {
				listen  []string
				v4, v6  bool // which families get a greeting
				needsV6 bool // the form names an IPv6 address of the host
			}{
				{[]string{"0.0.0.0:2121", "[::]:2121"}, true, true, false},
				{[]string{"[::]:2121", "0.0.0.0:2121"}, true, true, false},
				{[]string{":2121"}, true, true, false},
				{[]string{"0.0.0.0:2121"}, true, false, false},
				{[]string{"[::]:2121"}, false, true, false},
				{[]string{"203.0.113.1:2121", "[::1]:2121"}, true, true, true},
			} {
				if tc.needsV6 && !ipv6 {
					continue
				}
				args := []string{"run", "--upstream", "192.0.2.10:21", "--data-ports", "41000-41099",
					"--backend", "nftables", "--metrics", ":9121"}
				for _, l := range tc.listen {
					args = append(args, "--listen", l)
				}
				p := start(t, ns, "pasvgate started", pasvgate, args...)
				for _, fam := range []struct {
					network, addr string
					want          bool
				}{{"tcp4", "203.0.113.1:2121", tc.v4}, {"tcp6", "[::1]:2121", tc.v6 && ipv6}} {
					got := greeting(ns, fam.network, fam.addr)
					if fam.want != strings.HasPrefix(got, "220") {
						t.Errorf("--listen %v: a client to %s got %q, want a greeting: %v", tc.listen, fam.addr, got, fam.want)
					}
				}
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				if err := p.wait(t); err != nil {
					t.Errorf("--listen %v: exit after SIGTERM: %v\n%s", tc.listen, err, p.output())
				}
			}
		})
	}
}

// greeting dials addr from inside ns and returns the first line it reads,
// or the error.
func greeting(ns *netns.NS, network, addr string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, network, "", addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReaderSize(c, 512).ReadString('\n')
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(line)
}

// TestUpstreamLoopRefused: an upstream that is an address of this host at
// the port of a wildcard listener would make every session dial pasvgate
// again; the binary refuses it at start (status 2) and names both.
func TestUpstreamLoopRefused(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, _ := build(t)
	ns := gateway(t) // 203.0.113.1 is an address of the namespace
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, pasvgate, "run", "--listen", "0.0.0.0:21", "--upstream", "203.0.113.1:21", "--backend", "nftables")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--upstream") {
		t.Fatalf("upstream 203.0.113.1:21 behind --listen 0.0.0.0:21: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
