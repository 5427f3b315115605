// Package lifecycle tests the pasvgate process as an operator meets it: the
// real binary, in a network namespace, with real iptables. It proves the
// crash-safety promises: leftovers of a killed process are swept before the
// next one accepts a client, a clean stop leaves the chains empty, and
// `pasvgate rules list|flush` see and remove exactly pasvgate's rules.
package lifecycle

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// build compiles pasvgate and the test server once per test binary;
// TestMain removes them.
func build(t *testing.T) (pasvgate, ftpd string) {
	t.Helper()
	return bins.Build(t)
}

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// proc is a process started in a namespace, stopped by PID at cleanup.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

func start(t *testing.T, ns *netns.NS, ready string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: ns.Command(context.Background(), name, args...), done: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(seen) })
			}
		}
	}()
	go func() { p.err = p.cmd.Wait(); pw.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	select {
	case <-seen:
	case <-p.done:
		t.Fatalf("%s exited before it was ready: %v\n%s", name, p.err, p.output())
	case <-time.After(15 * time.Second):
		t.Fatalf("%s not ready after 15s:\n%s", name, p.output())
	}
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits (bounded) until the process has printed substr; its
// output arrives through a pipe, after whatever it caused.
func (p *proc) waitOutput(substr string) bool {
	for i := 0; i < 250; i++ {
		if strings.Contains(p.output(), substr) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(40 * time.Second):
		t.Fatalf("process did not exit:\n%s", p.output())
		return nil
	}
}

// gateway is one namespace with the server's and pasvgate's addresses on
// its loopback (this kernel has no dummy links): enough for control
// sessions and kernel rules.
func gateway(t *testing.T) *netns.NS {
	ns := netns.New(t, "pglc")
	ns.MustRun(t, "ip", "addr", "add", "203.0.113.1/32", "dev", "lo")
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.10/32", "dev", "lo")
	return ns
}

// openPASV opens a control session, logs in and asks for PASV, leaving the
// session (and its mapping) open. It returns the connection.
func openPASV(t *testing.T, ns *netns.NS) net.Conn {
	t.Helper()
	c, err := ns.Dial(context.Background(), "tcp", "", "203.0.113.1:21")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(c)
	for _, step := range []struct{ send, want string }{
		{"", "220"}, {"USER anonymous", "331"}, {"PASS x", "230"}, {"PASV", "227 Entering Passive Mode (203,0,113,1,"},
	} {
		if step.send != "" {
			fmt.Fprintf(c, "%s\r\n", step.send)
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", step.send, err)
			}
			if len(line) > 3 && line[3] == '-' {
				continue
			}
			if !strings.HasPrefix(line, step.want) {
				t.Fatalf("after %q got %q, want %s", step.send, line, step.want)
			}
			break
		}
	}
	return c
}

// mappingRules counts pasvgate's per-mapping rules in the namespace.
func mappingRules(t *testing.T, ns *netns.NS, ipt string) int {
	t.Helper()
	out := ns.MustRun(t, ipt+"-save")
	return strings.Count(out, "pasvgate id=")
}

func listed(t *testing.T, ns *netns.NS, pasvgate, ipt string) []string {
	t.Helper()
	out, err := ns.Run(context.Background(), pasvgate, "rules", "list", "--backend", "iptables", "--iptables-path", ipt)
	if err != nil {
		t.Fatalf("rules list: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "ID ") {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestCrashAndStop(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	for _, ipt := range []string{"iptables-nft", "iptables-legacy"} {
		t.Run(ipt, func(t *testing.T) {
			if _, err := exec.LookPath(ipt); err != nil {
				t.Skipf("%s not installed", ipt)
			}
			ns := gateway(t)
			start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
				"--passive-ports", "30000-30099")
			args := []string{"run", "--listen", "203.0.113.1:21", "--upstream", "192.0.2.10:21",
				"--data-ports", "41000-41099", "--backend", "iptables", "--iptables-path", ipt}

			// 1. Mappings installed, then SIGKILL: the rules stay behind.
			p := start(t, ns, "pasvgate started", pasvgate, args...)
			for i := 0; i < 3; i++ {
				openPASV(t, ns)
			}
			if got := listed(t, ns, pasvgate, ipt); len(got) != 3 {
				t.Fatalf("rules list shows %v, want 3 mappings", got)
			}
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			_ = p.wait(t)
			if n := mappingRules(t, ns, ipt); n == 0 {
				t.Fatal("SIGKILL left no rules: the test would prove nothing")
			}

			// 2. A new process sweeps them before it accepts a client.
			t0 := time.Now()
			p = start(t, ns, "pasvgate started", pasvgate, args...)
			t.Logf("%s: restart to ready (leftovers swept) in %v", ipt, time.Since(t0).Round(time.Millisecond))
			if n := mappingRules(t, ns, ipt); n != 0 {
				t.Fatalf("%d leftover mapping rules after restart", n)
			}
			if got := listed(t, ns, pasvgate, ipt); len(got) != 0 {
				t.Fatalf("rules list after restart: %v", got)
			}

			// 3. SIGTERM with sessions and mappings open: clients get 421,
			// every rule comes out, the process exits 0.
			c := openPASV(t, ns)
			openPASV(t, ns)
			if n := mappingRules(t, ns, ipt); n == 0 {
				t.Fatal("no rules for the open mappings")
			}
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			if err := p.wait(t); err != nil {
				t.Fatalf("exit after SIGTERM: %v\n%s", err, p.output())
			}
			b, _ := io.ReadAll(c)
			if !strings.HasPrefix(string(b), "421 ") {
				t.Errorf("a client at shutdown got %q, want 421", b)
			}
			if n := mappingRules(t, ns, ipt); n != 0 {
				t.Fatalf("%d mapping rules left after a clean stop", n)
			}
			if save := ns.MustRun(t, ipt+"-save"); !strings.Contains(save, ":PASVGATE-DNAT") {
				t.Fatal("a clean stop removed the chains; only flush should")
			}

			// 4. rules flush removes pasvgate's chains and nothing else,
			// and is happy to find nothing the second time.
			ns.MustRun(t, ipt, "-t", "filter", "-A", "FORWARD", "-s", "198.51.100.7", "-j", "DROP")
			for i := 0; i < 2; i++ {
				if out, err := ns.Run(context.Background(), pasvgate, "rules", "flush", "--backend", "iptables", "--iptables-path", ipt); err != nil {
					t.Fatalf("rules flush #%d: %v\n%s", i+1, err, out)
				}
			}
			save := ns.MustRun(t, ipt+"-save")
			if strings.Contains(save, "PASVGATE") || strings.Contains(save, "pasvgate") {
				t.Fatalf("flush left pasvgate's rules:\n%s", save)
			}
			if !strings.Contains(save, "-A FORWARD -s 198.51.100.7/32 -j DROP") {
				t.Fatalf("flush removed a rule that was not pasvgate's:\n%s", save)
			}
		})
	}
}

// TestNftablesBackend runs the same crash-and-stop cycle with
// --backend nftables: leftovers of a killed process are swept at start,
// `rules list` sees the mappings, a clean stop removes them, and flush
// deletes pasvgate's tables and nothing else.
func TestNftablesBackend(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	ns := gateway(t)
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099")
	args := []string{"run", "--listen", "203.0.113.1:21", "--upstream", "192.0.2.10:21",
		"--data-ports", "41000-41099", "--backend", "nftables"}
	list := func() []string {
		out, err := ns.Run(context.Background(), pasvgate, "rules", "list", "--backend", "nftables")
		if err != nil {
			t.Fatalf("rules list: %v\n%s", err, out)
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l != "" && !strings.HasPrefix(l, "ID ") {
				lines = append(lines, l)
			}
		}
		return lines
	}
	p := start(t, ns, "pasvgate started", pasvgate, args...)
	openPASV(t, ns)
	openPASV(t, ns)
	if got := list(); len(got) != 2 {
		t.Fatalf("rules list shows %v, want 2 mappings", got)
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.wait(t)
	if got := list(); len(got) != 2 {
		t.Fatalf("after SIGKILL rules list shows %v, want the 2 leftovers", got)
	}
	p = start(t, ns, "pasvgate started", pasvgate, args...)
	if got := list(); len(got) != 0 {
		t.Fatalf("after restart: leftovers %v", got)
	}
	openPASV(t, ns)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.output())
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("after a clean stop: %v", got)
	}
	if _, err := exec.LookPath("nft"); err == nil {
		ns.MustRun(t, "nft", "add", "table", "inet", "sitefw")
		if out, err := ns.Run(context.Background(), pasvgate, "rules", "flush", "--backend", "nftables"); err != nil {
			t.Fatalf("rules flush: %v\n%s", err, out)
		}
		tables := ns.MustRun(t, "nft", "list", "tables")
		if strings.Contains(tables, "pasvgate") || !strings.Contains(tables, "sitefw") {
			t.Fatalf("after flush the tables are:\n%s", tables)
		}
	}
}
