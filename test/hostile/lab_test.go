package hostile

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// The lab's fixed addresses (netns.GatewayLab's, plus the catalogue's own
// client addresses).
const (
	pgListen   = "203.0.113.1:21"  // pasvgate's control listener
	publicAddr = "203.0.113.1"     // what a rewritten 227 names
	serverAddr = "192.0.2.10"      // the FTP server (hostile or spliced)
	otherHost  = "192.0.2.99"      // a host a bounce would aim at
	neighbour  = "192.0.2.11"      // another host on the server's network
	realFTPD   = "192.0.2.10:2121" // test/ftpd, behind the hostile server's splice
	canaryAddr = "203.0.113.50"    // the canary client's own address
	metricsURL = "http://127.0.0.1:9121/metrics"
	payloadLen = 4 << 20 // the file the canary and the slow transfers fetch
	dataPorts  = "40000-40999"
	// firstEntryAddr is the last octet of the first entry's client
	// address: entry i dials from 203.0.113.(firstEntryAddr+i), so that no
	// per-address limit of one entry touches another, or the canary.
	firstEntryAddr = 100
)

// Timeouts pasvgate runs with in the lab: short, so that the entries that
// wait for them keep the suite quick.
const (
	idleTimeout  = 4 * time.Second
	loginTimeout = 2 * time.Second
	// replyGrace is proxy's: how long pasvgate waits, at a timeout, for
	// a reply the server still owes before its own 421 goes out of turn.
	replyGrace = 5 * time.Second
)

// rssBound is the documented bound on pasvgate's resident memory under the
// whole catalogue: every input at once stays below it. The worst inputs
// send 32 MB a session (an endless multi-line 227); before the reply and
// queue bounds they grew the heap by about twice what was sent.
const rssBound = 64 << 20

// proc is a process started in a namespace, killed by its PID when the
// test ends.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

// startProc starts name in ns and waits (bounded) for ready in its output.
func startProc(t *testing.T, ns *netns.NS, env []string, ready string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: ns.Command(context.Background(), name, args...), done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var once sync.Once
		for sc.Scan() {
			p.mu.Lock()
			if p.out.Len() < 4<<20 {
				p.out.WriteString(sc.Text() + "\n")
			}
			p.mu.Unlock()
			if strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(seen) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { p.err = p.cmd.Wait(); pw.Close(); close(p.done) }()
	t.Cleanup(p.kill)
	select {
	case <-seen:
	case <-p.done:
		t.Fatalf("%s exited before it was ready: %v\n%s", name, p.err, p.output())
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready after 20s:\n%s", name, p.output())
	}
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// rss is the process's VmRSS in bytes, or 0 once it is gone. `ip netns
// exec` execs the command in place, so the PID is pasvgate's own.
func (p *proc) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// harness is the catalogue's lab: netns.GatewayLab's three namespaces,
// test/ftpd on the server (192.0.2.10:2121) behind the hostile server
// (192.0.2.10:21, see server_test.go), pasvgate on the gateway in front of
// that, and a canary client transferring through pasvgate all along.
type harness struct {
	t        *testing.T
	lab      *netns.GatewayLab
	pasvgate string
	ftpdBin  string
	ftpdRoot string
	ftpd     *proc
	hs       *hostileServer
	payload  [32]byte // sha256 of payload.bin

	mu      sync.Mutex
	pg      *proc
	pgArgs  []string
	pgFlags map[string]bool // the flags `pasvgate run -h` lists
	pgHelp  string          // `pasvgate run -h`
	canary  *canary
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	netns.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed: run test/install-deps.sh")
	}
	pg, ftpd := bins.Build(t)
	h := &harness{t: t, lab: netns.NewGatewayLab(t, "hst"), pasvgate: pg, ftpdBin: ftpd}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.lab.Client.AddAddr("c0", netip.MustParsePrefix(canaryAddr+"/24")))
	for i := 0; i < 100; i++ {
		must(h.lab.Client.AddAddr("c0", netip.MustParsePrefix(fmt.Sprintf("203.0.113.%d/24", firstEntryAddr+i))))
	}
	// A bounce target and a neighbour the hostile server may name.
	must(h.lab.Server.AddAddr("s0", netip.MustParsePrefix(neighbour+"/24")))

	h.ftpdRoot = t.TempDir()
	data := make([]byte, payloadLen)
	_, _ = rand.Read(data)
	h.payload = sha256.Sum256(data)
	must(os.WriteFile(filepath.Join(h.ftpdRoot, "payload.bin"), data, 0o644))
	h.startFTPD()
	h.hs = newHostileServer(t, h.lab.Server)

	help, _ := exec.Command(pg, "run", "-h").CombinedOutput()
	h.pgFlags = map[string]bool{}
	for _, l := range strings.Split(string(help), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "-") {
			h.pgFlags[strings.TrimLeft(f[0], "-")] = true
		}
	}
	h.pgHelp = string(help)
	return h
}

func (h *harness) startFTPD() {
	h.ftpd = startProc(h.t, h.lab.Server, nil, "listening on", h.ftpdBin, "--listen", realFTPD,
		"--public-host", serverAddr, "--passive-ports", "31000-31999", "--root", h.ftpdRoot)
}

// baseArgs are pasvgate's arguments in the catalogue: nftables, metrics,
// short idle and login timeouts, and a per-address mapping cap when the
// build has one.
func (h *harness) baseArgs() []string {
	args := []string{"run", "--listen", pgListen, "--upstream", serverAddr + ":21",
		"--backend", "nftables", "--data-ports", dataPorts, "--metrics", "127.0.0.1:9121",
		"--idle-timeout", idleTimeout.String(), "--login-timeout", loginTimeout.String(),
		// Restarts between entries need not wait for the canary.
		"--drain-timeout", "2s"}
	if h.pgFlags["max-mappings-per-ip"] {
		args = append(args, "--max-mappings-per-ip", strconv.Itoa(mappingsPerIP))
	}
	return args
}

// mappingsPerIP is the --max-mappings-per-ip the catalogue runs with.
const mappingsPerIP = 4

// startPasvgate (re)starts pasvgate with args, env added to its
// environment.
func (h *harness) startPasvgate(env []string, args ...string) *proc {
	h.t.Helper()
	h.mu.Lock()
	old := h.pg
	h.mu.Unlock()
	if old != nil && !old.exited() {
		_ = old.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-old.done:
		case <-time.After(20 * time.Second):
			old.kill()
		}
	}
	p := startProc(h.t, h.lab.GW, env, "pasvgate started", h.pasvgate, args...)
	h.mu.Lock()
	h.pg, h.pgArgs = p, args
	h.mu.Unlock()
	return p
}

// proc is the running pasvgate.
func (h *harness) proc() *proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pg
}

// rules is what `pasvgate rules list` prints, the header left out, with
// the backend the running pasvgate uses.
func (h *harness) rules() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := []string{"rules", "list"}
	h.mu.Lock()
	for i, a := range h.pgArgs {
		if (a == "--backend" || a == "--iptables-path") && i+1 < len(h.pgArgs) {
			args = append(args, a, h.pgArgs[i+1])
		}
	}
	h.mu.Unlock()
	cmd := h.lab.GW.Command(ctx, h.pasvgate, args...)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("rules list: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.HasPrefix(l, "ID ") {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// noRules waits (up to 5s: removal is queued after the session ends) for
// `rules list` to print nothing.
func (h *harness) noRules() error {
	var left []string
	var err error
	for i := 0; i < 50; i++ {
		if left, err = h.rules(); err == nil && len(left) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("rules left after the session: %s", strings.Join(left, "; "))
}

// metric reads one sample of pasvgate's /metrics, -1 if it cannot.
func (h *harness) metric(name string) float64 {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.lab.GW.Dial(ctx, network, "", addr)
		},
	}}
	resp, err := client.Get(metricsURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// sampler records pasvgate's peak VmRSS and peak live mappings while an
// entry runs, every 50ms.
type sampler struct {
	stop     chan struct{}
	done     chan struct{}
	peakRSS  int64
	peakMaps float64
}

func (h *harness) sample() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if p := h.proc(); p != nil {
				s.peakRSS = max(s.peakRSS, p.rss())
			}
			s.peakMaps = max(s.peakMaps, h.metric("pasvgate_mappings_active"))
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// end stops the sampler and waits for it.
func (s *sampler) end() {
	close(s.stop)
	<-s.done
}

// entryAddr is entry i's own client address.
func entryAddr(i int) string { return fmt.Sprintf("203.0.113.%d", firstEntryAddr+i) }
