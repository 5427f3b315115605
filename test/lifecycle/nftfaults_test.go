package lifecycle

// Bad input and faults for --backend nftables (issue 8), on a real kernel:
// a netlink batch the kernel refuses gives the client 425 and leaves
// nothing of the mapping behind, and a SIGKILL with 1,000 live mappings
// leaves elements that expire by themselves or are swept by the next
// start.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// nfGateway is gateway() with this file's own namespace prefix.
func nfGateway(t *testing.T) *netns.NS {
	t.Helper()
	ns := netns.New(t, "pgnf")
	ns.MustRun(t, "ip", "addr", "add", "203.0.113.1/32", "dev", "lo")
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.10/32", "dev", "lo")
	return ns
}

func requireNft(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed: the tests read the maps with it")
	}
}

// nftElem is one element of a map as `nft -j` shows it.
type nftElem struct {
	key     string // the key as JSON, e.g. {"concat":["203.0.113.1",...]}
	comment string
}

// mapElems lists the live elements of map name in table ip pasvgate.
func mapElems(t *testing.T, ns *netns.NS, name string) []nftElem {
	t.Helper()
	out, err := ns.Run(context.Background(), "nft", "-j", "list", "map", "ip", "pasvgate", name)
	if err != nil {
		t.Fatalf("listing map %s: %v", name, err)
	}
	var doc struct {
		Nftables []struct {
			Map *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"map"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("reading nft -j output: %v\n%s", err, out)
	}
	var es []nftElem
	for _, o := range doc.Nftables {
		if o.Map == nil {
			continue
		}
		for _, raw := range o.Map.Elem {
			// A map element is [key, data]; a key with options (timeout,
			// comment) is {"elem": {"val": KEY, ...}}.
			var pair []json.RawMessage
			if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
				t.Fatalf("unexpected element %s in map %s", raw, name)
			}
			var k struct {
				Elem *struct {
					Val     json.RawMessage `json:"val"`
					Comment string          `json:"comment"`
				} `json:"elem"`
			}
			e := nftElem{key: string(pair[0])}
			if json.Unmarshal(pair[0], &k) == nil && k.Elem != nil {
				e = nftElem{key: string(k.Elem.Val), comment: k.Elem.Comment}
			}
			es = append(es, e)
		}
	}
	return es
}

// pasvgates keeps the elements whose comment marks them as pasvgate's.
func pasvgates(es []nftElem) []nftElem {
	var out []nftElem
	for _, e := range es {
		if strings.HasPrefix(e.comment, "id=") {
			out = append(out, e)
		}
	}
	return out
}

// listedNft is `pasvgate rules list --backend nftables`: its stdout, the
// header left out (it warns about elements that are not its own on
// stderr).
func listedNft(t *testing.T, ns *netns.NS, pasvgate string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, pasvgate, "rules", "list", "--backend", "nftables")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rules list: %v\n%s%s", err, out, stderr.String())
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.HasPrefix(l, "ID ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// startQuiet is start() for a process that prints nothing when ready
// (pasvgate at --log-level warn); waitControl then tells when it is.
func startQuiet(t *testing.T, ns *netns.NS, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: ns.Command(context.Background(), name, args...), done: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { p.err = p.cmd.Wait(); pw.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// waitControl waits (bounded) until pasvgate answers on its control port
// with the server's 220, which it does only after its Setup.
func waitControl(t *testing.T, ns *netns.NS, p *proc) {
	t.Helper()
	for i := 0; i < 150; i++ {
		select {
		case <-p.done:
			t.Fatalf("pasvgate exited: %v\n%s", p.err, p.output())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := ns.Dial(ctx, "tcp", "", "203.0.113.1:21")
		cancel()
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "QUIT\r\n")
			c.Close()
			if strings.HasPrefix(line, "220") {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pasvgate not ready after 15s:\n%s", p.output())
}

// pasvSession is openPASV for any goroutine: a logged-in control session
// whose PASV got a 227 with the public address, left open.
func pasvSession(ns *netns.NS) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", "", "203.0.113.1:21")
	if err != nil {
		return nil, err
	}
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
				c.Close()
				return nil, fmt.Errorf("after %q: %w", step.send, err)
			}
			if len(line) > 3 && line[3] == '-' {
				continue
			}
			if !strings.HasPrefix(line, step.want) {
				c.Close()
				return nil, fmt.Errorf("after %q got %q, want %s", step.send, line, step.want)
			}
			break
		}
	}
	return c, nil
}

// openMany opens n sessions that each got a 227, par at a time, and stops
// at the first failure. They close at the end of the test.
func openMany(t *testing.T, ns *netns.NS, n, par int) []net.Conn {
	t.Helper()
	var (
		mu     sync.Mutex
		conns  []net.Conn
		errs   []error
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	sem := make(chan struct{}, par)
	for i := 0; i < n && !failed.Load(); i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := pasvSession(ns)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed.Store(true)
				errs = append(errs, err)
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d sessions failed (%d got a 227); first: %v", len(errs), len(conns), errs[0])
	}
	return conns
}

// TestNftInstallRefusedGives425 makes the kernel refuse pasvgate's install
// batch, for real, with one public data port (40000) and a server with
// four passive ports (30000-30003), by taking from outside, with other
// data, every key pasvgate could use in one of its maps:
//
//   - snat_map (client . target address . target port . public port):
//     the batch's first message, its dnat element, would have been fine;
//     the transaction must take it back;
//   - dnat_map (client . public address . public port): the first message
//     fails, and the snat element after it must not go in either.
//
// The client must get 425 for PASV and EPSV and keep its session;
// pasvgate must log the refusal; the kernel must hold nothing of
// pasvgate's. Once the outside elements are gone, the same session's PASV
// works and a transfer goes through the mapping both ways.
func TestNftInstallRefusedGives425(t *testing.T) {
	requireNft(t)
	pasvgate, ftpd := build(t)
	snatKeys := func() []string {
		var ks []string
		for port := 30000; port <= 30003; port++ {
			ks = append(ks, fmt.Sprintf("203.0.113.1 . 192.0.2.10 . %d . 40000", port))
		}
		return ks
	}
	for _, tc := range []struct {
		name, set, other string // the map taken from outside, and the other one
		keys             []string
		data             string // the outside elements' data: not pasvgate's
	}{
		{"snat clash", "snat_map", "dnat_map", snatKeys(), "192.0.2.99"},
		{"dnat clash", "dnat_map", "snat_map", []string{"203.0.113.1 . 203.0.113.1 . 40000"}, "192.0.2.99 . 21"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nfGateway(t)
			start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
				"--passive-ports", "30000-30003")
			p := start(t, ns, "pasvgate started", pasvgate, "run", "--listen", "203.0.113.1:21",
				"--upstream", "192.0.2.10:21", "--data-ports", "40000-40000", "--backend", "nftables")
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("pasvgate output:\n%s", p.output())
				}
			})
			var foreign []string
			for _, k := range tc.keys {
				foreign = append(foreign, k+` timeout 1h comment "not pasvgate's" : `+tc.data)
			}
			ns.MustRun(t, "nft", "add", "element", "ip", "pasvgate", tc.set, "{ "+strings.Join(foreign, ", ")+" }")
			if got := mapElems(t, ns, tc.set); len(got) != len(tc.keys) {
				t.Fatalf("%s holds %v after adding %d elements from outside", tc.set, got, len(tc.keys))
			}

			s := dialSession(t, ns)
			s.login()
			for i, cmd := range []string{"PASV", "EPSV"} {
				if r := s.cmd(cmd); !strings.HasPrefix(r, "425 ") {
					t.Fatalf("%s with the kernel refusing the install: %q, want 425", cmd, r)
				}
				if got := mapElems(t, ns, tc.other); len(got) != 0 {
					t.Errorf("after a refused %s %s holds %v, want nothing", cmd, tc.other, got)
				}
				if got := mapElems(t, ns, tc.set); len(got) != len(tc.keys) || len(pasvgates(got)) != 0 {
					t.Errorf("after a refused %s %s holds %v, want only the %d outside elements", cmd, tc.set, got, len(tc.keys))
				}
				// The log line arrives through a pipe, after the reply.
				var n int
				for j := 0; j < 100; j++ {
					if n = strings.Count(p.output(), "mapping install failed"); n > i {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if n != i+1 {
					t.Errorf("after %s pasvgate logged %d install failures, want %d", cmd, n, i+1)
				}
			}
			if r := s.cmd("NOOP"); !strings.HasPrefix(r, "200") {
				t.Fatalf("NOOP after the refused installs: %q, want 200", r)
			}
			if got := listedNft(t, ns, pasvgate); len(got) != 0 {
				t.Errorf("rules list after the refused installs: %v", got)
			}
			if out := p.output(); !strings.Contains(out, rulesErrExistsText) || !strings.Contains(out, "another process's element") {
				t.Errorf("pasvgate's log does not name the kernel's refusal:\n%s", out)
			}

			// Without the outside elements the same session's next PASV
			// works at once, and the data connection goes where the 227
			// says, both ways.
			ns.MustRun(t, "nft", "delete", "element", "ip", "pasvgate", tc.set, "{ "+strings.Join(tc.keys, ", ")+" }")
			payload := bytes.Repeat([]byte("pasvgate nftables fault test\n"), 4096)
			transfer(t, ns, s, "STOR f.bin", payload, 1)
			// The one public port returns to the pool only once the STOR's
			// elements are removed, which is queued after its 226.
			if got := transfer(t, ns, s, "RETR f.bin", nil, 100); !bytes.Equal(got, payload) {
				t.Fatalf("RETR returned %d bytes, want the %d stored", len(got), len(payload))
			}
		})
	}
}

// rulesErrExistsText is rules.ErrExists's message, as the log shows it.
const rulesErrExistsText = "mapping already installed"

// transfer asks for PASV (up to tries times, 20 ms apart, while it gets
// 425 because the one public port is still on its way back to the pool),
// checks the mapping is in the
// kernel, connects where the 227 says and runs cmd: it sends data for a
// STOR and returns what a RETR read.
func transfer(t *testing.T, ns *netns.NS, s *session, cmd string, data []byte, tries int) []byte {
	t.Helper()
	var r string
	for i := 0; i < tries; i++ {
		if r = s.cmd("PASV"); !strings.HasPrefix(r, "425 ") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r != "227 Entering Passive Mode (203,0,113,1,156,64)." {
		t.Fatalf("PASV for %s: %q, want the public 203.0.113.1:40000", cmd, r)
	}
	if d, sn := pasvgates(mapElems(t, ns, "dnat_map")), pasvgates(mapElems(t, ns, "snat_map")); len(d) != 1 || len(sn) != 1 {
		t.Fatalf("after the 227: dnat_map %v, snat_map %v; want one element each", d, sn)
	}
	dc, err := ns.Dial(context.Background(), "tcp", "", "203.0.113.1:40000")
	if err != nil {
		t.Fatalf("data connection for %s: %v", cmd, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(15 * time.Second))
	if r := s.cmd(cmd); !strings.HasPrefix(r, "150") && !strings.HasPrefix(r, "125") {
		t.Fatalf("%s: %q", cmd, r)
	}
	var got []byte
	if data != nil {
		if _, err := dc.Write(data); err != nil {
			t.Fatalf("%s: writing data: %v", cmd, err)
		}
		dc.Close()
	} else if got, err = io.ReadAll(dc); err != nil {
		t.Fatalf("%s: reading data: %v", cmd, err)
	}
	if r := s.reply(); !strings.HasPrefix(r, "226") {
		t.Fatalf("%s final reply %q, want 226", cmd, r)
	}
	return got
}

// killWith1000 starts pasvgate with the given element timeout, opens
// 1,000 sessions that each hold a mapping, checks all 1,000 are in the
// kernel, SIGKILLs pasvgate and checks they are all still there. It
// returns when it started opening sessions (no element expires before
// that plus timeout) and when the last 227 had arrived (none outlives
// that plus timeout).
func killWith1000(t *testing.T, ns *netns.NS, pasvgate string, timeout time.Duration) (first, last time.Time) {
	t.Helper()
	const n = 1000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 2*n+256 {
		lim.Cur = min(lim.Max, 4*n)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*n+256 {
			t.Skipf("RLIMIT_NOFILE %d is too low for %d sessions (%v)", lim.Cur, n, err)
		}
	}
	// 1,000 sessions from one client address: above every per-address
	// limit a gateway ships with.
	p := startQuiet(t, ns, pasvgate, "run", "--listen", "203.0.113.1:21", "--upstream", "192.0.2.10:21",
		"--data-ports", "40000-41999", "--backend", "nftables", "--data-connect-timeout", timeout.String(),
		"--max-sessions", "0", "--max-sessions-per-ip", "0", "--max-mappings-per-ip", "0",
		"--log-level", "warn")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("killed pasvgate's output (warn):\n%s", p.output())
		}
	})
	waitControl(t, ns, p)

	t0 := time.Now()
	openMany(t, ns, n, 50)
	last = time.Now()
	opened := last.Sub(t0)
	d, s := pasvgates(mapElems(t, ns, "dnat_map")), pasvgates(mapElems(t, ns, "snat_map"))
	if el := time.Since(t0); el >= timeout {
		t.Fatalf("opening %d sessions and listing took %v, not under the %v timeout: expired and missing elements look the same", n, el, timeout)
	}
	if len(d) != n || len(s) != n {
		t.Fatalf("with %d sessions open: %d dnat and %d snat elements, want %d each", n, len(d), len(s), n)
	}
	t.Logf("%d sessions with a 227 in %v; %d dnat and %d snat elements live", n, opened.Round(time.Millisecond), len(d), len(s))

	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("pasvgate after SIGKILL: %v, want killed", err)
	}
	// Nothing serves the control port any more: no pasvgate is left whose
	// own connect timeout could remove the elements in the kernel's stead.
	if c, err := ns.Dial(context.Background(), "tcp", "", "203.0.113.1:21"); err == nil {
		c.Close()
		t.Fatal("the control port still accepts after SIGKILL")
	}
	d, s = pasvgates(mapElems(t, ns, "dnat_map")), pasvgates(mapElems(t, ns, "snat_map"))
	if el := time.Since(t0); el >= timeout {
		t.Fatalf("the kill and the listing ended %v after the first install, past the %v timeout", el, timeout)
	}
	if len(d) != n || len(s) != n {
		t.Fatalf("right after SIGKILL: %d dnat and %d snat elements, want all %d", len(d), len(s), n)
	}
	return t0, last
}

// sweptLog is the start-up sweep's log line for the 1,000 leftovers.
var sweptLog = regexp.MustCompile(`msg="removing mappings left by an earlier process".* count=1000\b`)

// TestNftSIGKILL1000 kills pasvgate (SIGKILL, by PID) while it holds 1,000
// mappings. Without a restart the kernel expires them by itself within
// --data-connect-timeout; with a restart the new process sweeps them
// before it serves, and serves.
func TestNftSIGKILL1000(t *testing.T) {
	requireNft(t)
	pasvgate, ftpd := build(t)
	server := func(t *testing.T, ns *netns.NS) {
		// 2,000 passive ports: each open session holds a listener, and
		// the server draws them at random with a bounded number of tries.
		start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
			"--passive-ports", "30000-31999")
	}

	t.Run("no restart: elements expire", func(t *testing.T) {
		const timeout = 10 * time.Second
		ns := nfGateway(t)
		server(t, ns)
		first, last := killWith1000(t, ns, pasvgate, timeout)
		killed := time.Now()
		const margin = 20 * time.Second
		var d, s int
		var firstGone time.Time
		for time.Since(killed) < timeout+margin {
			d, s = len(mapElems(t, ns, "dnat_map")), len(mapElems(t, ns, "snat_map"))
			if firstGone.IsZero() && d+s < 2000 {
				firstGone = time.Now()
			}
			if d == 0 && s == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if d != 0 || s != 0 {
			t.Fatalf("%v after SIGKILL: %d dnat and %d snat elements left, want none (timeout %v)",
				time.Since(killed).Round(time.Millisecond), d, s, timeout)
		}
		// Observed, not asserted: the kernel's expiry against the installs.
		t.Logf("timeout %v: first elements gone %v after the first install; all gone %v after the last 227 (%v after the kill)",
			timeout, firstGone.Sub(first).Round(100*time.Millisecond), time.Since(last).Round(100*time.Millisecond),
			time.Since(killed).Round(100*time.Millisecond))
		if got := listedNft(t, ns, pasvgate); len(got) != 0 {
			t.Errorf("rules list after the expiry: %v", got)
		}
	})

	t.Run("restart sweeps", func(t *testing.T) {
		// A long timeout, so that empty maps after the restart can only
		// be the start-up sweep's doing, never the kernel's expiry.
		const timeout = 2 * time.Minute
		ns := nfGateway(t)
		server(t, ns)
		t0, _ := killWith1000(t, ns, pasvgate, timeout)
		p := start(t, ns, "pasvgate started", pasvgate, "run", "--listen", "203.0.113.1:21",
			"--upstream", "192.0.2.10:21", "--data-ports", "40000-41999", "--backend", "nftables",
			"--data-connect-timeout", timeout.String())
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("restarted pasvgate's output:\n%s", p.output())
			}
		})
		d, s := mapElems(t, ns, "dnat_map"), mapElems(t, ns, "snat_map")
		if el := time.Since(t0); el >= timeout {
			t.Fatalf("restart ended %v after the first install, past the %v timeout", el, timeout)
		}
		if len(d) != 0 || len(s) != 0 {
			t.Fatalf("after the restart: %d dnat and %d snat elements, want none", len(d), len(s))
		}
		if !sweptLog.MatchString(p.output()) {
			t.Errorf("the restart did not log sweeping the 1000 leftovers:\n%s", p.output())
		}
		openPASV(t, ns)
		if d := pasvgates(mapElems(t, ns, "dnat_map")); len(d) != 1 {
			t.Fatalf("after a fresh session's PASV: dnat_map %v, want one element", d)
		}
		if got := listedNft(t, ns, pasvgate); len(got) != 1 {
			t.Fatalf("rules list after a fresh PASV: %v, want one mapping", got)
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.wait(t); err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	})
}
