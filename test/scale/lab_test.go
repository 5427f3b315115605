package scale

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// The lab's addresses. The client has no route to 192.0.2.0/24: it can
// reach the server's data ports only through a mapping pasvgate announced,
// and the 227 names publicAddr, an address the client never dialed, so a
// client that ignored the 227 address would fail instead of passing.
const (
	nsPrefix    = "pgsl"
	clientAddr  = "203.0.113.10"
	listenAddr  = "203.0.113.1" // pasvgate's control listener
	publicAddr  = "203.0.113.2" // what pasvgate writes into 227 replies
	gwPrivAddr  = "192.0.2.1"
	serverAddr  = "192.0.2.10"
	metricsAddr = "127.0.0.1:9464" // inside the gateway namespace
	fileName    = "blob.bin"
	fileSize    = 8 << 10
	// noFile is the descriptor limit the test process sets for itself and
	// its children: 10,000 sessions need about 20,000 descriptors in
	// pasvgate and 10,000 in each of the client and the server.
	noFile = 65536
)

// build compiles pasvgate and the test server once per test binary;
// TestMain removes them.
func build(tb testing.TB) (pasvgate, ftpd string) {
	tb.Helper()
	return bins.Build(tb)
}

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Only this process and its children: Go stops restoring the
		// original soft limit in children once Setrlimit is called.
		raiseNoFile()
		// Namespaces of earlier runs that were killed before cleaning up.
		if err := netns.Sweep(nsPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "scale: sweeping old namespaces:", err)
		}
	}
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// raiseNoFile raises this process's descriptor limit, for it and its
// children, to noFile, or, without CAP_SYS_RESOURCE (a container may
// withhold it even from root), the soft limit to the hard one.
func raiseNoFile() {
	lim := syscall.Rlimit{Cur: noFile, Max: noFile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		return
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	// Also called for its side effect: Go then stops giving children
	// the soft limit the process started with.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "scale: raising RLIMIT_NOFILE:", err)
	}
}

// fdReserve is what pasvgate holds besides its sessions' two sockets
// each (listeners, netlink, epoll, the metrics scrape), with room to spare.
const fdReserve = 64

// maxSessions is how many control sessions one pasvgate can hold under
// this process's descriptor limit, which its children inherit, at most
// want; why is empty unless it is fewer.
func maxSessions(want int) (n int, why string) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return want, ""
	}
	if fit := (int(lim.Cur) - fdReserve) / 2; fit < want {
		return fit, fmt.Sprintf("RLIMIT_NOFILE is %d and could not be raised to %d (raising the hard limit needs CAP_SYS_RESOURCE): "+
			"pasvgate needs two descriptors per session, so %d sessions instead of %d", lim.Cur, noFile, fit, want)
	}
	return want, ""
}

// lab is the three-namespace topology with pasvgate on the gateway and
// testftpd on the server, serving one file of random bytes.
type lab struct {
	client, gw, server *netns.NS
	pasvgate, ftpd     *netns.Proc
	pasvgateBin        string
	file               []byte
	http               *http.Client
}

// newLab builds the namespaces and starts both processes; everything is
// stopped and deleted when the test ends.
func newLab(tb testing.TB) *lab {
	tb.Helper()
	netns.RequireRoot(tb)
	if _, err := exec.LookPath("nft"); err != nil {
		tb.Skip("needs nft(8) to read the kernel's maps")
	}
	pgBin, ftpdBin := build(tb)
	l := &lab{client: netns.New(tb, nsPrefix), gw: netns.New(tb, nsPrefix), server: netns.New(tb, nsPrefix), pasvgateBin: pgBin}
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(netns.Veth(l.client, "c0", l.gw, "g0"))
	must(netns.Veth(l.gw, "g1", l.server, "s0"))
	for _, a := range []struct {
		ns  *netns.NS
		dev string
		p   string
	}{
		{l.client, "c0", clientAddr + "/24"},
		{l.gw, "g0", listenAddr + "/24"}, {l.gw, "g0", publicAddr + "/24"},
		{l.gw, "g1", gwPrivAddr + "/24"},
		{l.server, "s0", serverAddr + "/24"},
	} {
		must(a.ns.AddAddr(a.dev, netip.MustParsePrefix(a.p)))
	}
	// No default routes: the client knows only 203.0.113.0/24, and the
	// server only 192.0.2.0/24, which is enough because data connections
	// are SNATed to the gateway's private address.
	must(l.gw.Sysctl("net.ipv4.ip_forward", "1"))
	// Listen backlogs: Go reads somaxconn when a process first listens,
	// so this comes before the processes start.
	for _, ns := range []*netns.NS{l.client, l.gw, l.server} {
		must(ns.Sysctl("net.core.somaxconn", "8192"))
		must(ns.Sysctl("net.ipv4.tcp_max_syn_backlog", "8192"))
	}

	l.file = make([]byte, fileSize)
	_, _ = rand.Read(l.file)
	root := tb.TempDir()
	must(os.WriteFile(filepath.Join(root, fileName), l.file, 0o644))

	// 2,000 passive ports, so that 1,000 held at once leave the library's
	// random search plenty of free ones.
	l.ftpd = netns.StartProc(tb, l.server, maxTail, "listening on", ftpdBin,
		"--listen", serverAddr+":21", "--passive-ports", "30000-31999", "--root", root)

	l.http = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return l.gw.Dial(ctx, network, "", addr)
			},
			DisableKeepAlives: true,
		},
	}
	// A data-connect timeout far beyond the barrier's wait keeps every
	// mapping alive until its transfer, however slow the set-up is.
	l.pasvgate = netns.StartProc(tb, l.gw, maxTail, "", pgBin, "run",
		"--listen", listenAddr+":21",
		"--upstream", serverAddr+":21",
		"--public-addr", publicAddr,
		"--backend", "nftables",
		"--data-ports", "40000-41999",
		"--data-connect-timeout", "2m",
		"--max-sessions", "0", "--max-sessions-per-ip", "0", "--max-mappings-per-ip", "0",
		"--metrics", metricsAddr,
		"--log-level", "warn")
	l.waitHealthy(tb)
	return l
}

// waitHealthy waits (bounded) for pasvgate's /healthz: it is served only
// once every control listener is open.
func (l *lab) waitHealthy(tb testing.TB) {
	tb.Helper()
	var err error
	for i := 0; i < 150; i++ {
		var resp *http.Response
		if resp, err = l.http.Get("http://" + metricsAddr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("/healthz: %s", resp.Status)
		}
		select {
		case <-l.pasvgate.Done():
			tb.Fatalf("pasvgate exited: %v\n%s", l.pasvgate.Err(), l.pasvgate.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	tb.Fatalf("pasvgate not healthy after 15s: %v\n%s", err, l.pasvgate.Output())
}

// metrics scrapes pasvgate's /metrics into series (name with labels) and
// values.
func (l *lab) metrics() (map[string]float64, error) {
	resp, err := l.http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// failures sums the metrics that count a refused session or a failed
// mapping: any of them above zero means a client got 421 or 425.
func failures(m map[string]float64) map[string]float64 {
	bad := map[string]float64{}
	for k, v := range m {
		for _, p := range []string{"pasvgate_sessions_refused_total", "pasvgate_refusals_total",
			"pasvgate_mapping_install_failures_total", "pasvgate_port_range_exhausted_total",
			"pasvgate_mapping_remove_failures_total"} {
			if (k == p || strings.HasPrefix(k, p+"{")) && v != 0 {
				bad[k] = v
			}
		}
	}
	return bad
}

// mapElems counts the elements of one of pasvgate's nftables maps in the
// gateway, read with nft(8) rather than pasvgate's own code.
func (l *lab) mapElems(name string) (int, error) {
	out, err := l.gw.Run(context.Background(), "nft", "-j", "list", "map", "ip", "pasvgate", name)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, fmt.Errorf("reading nft -j output: %w", err)
	}
	for _, o := range doc.Nftables {
		raw, ok := o["map"]
		if !ok {
			continue
		}
		var m struct {
			Name string            `json:"name"`
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return 0, fmt.Errorf("reading nft -j map: %w", err)
		}
		if m.Name == name {
			return len(m.Elem), nil
		}
	}
	return 0, fmt.Errorf("nft -j list map ip pasvgate %s: no such map in the output", name)
}

// listedMappings counts the mappings `pasvgate rules list` shows.
func (l *lab) listedMappings() (int, error) {
	out, err := l.gw.Run(context.Background(), l.pasvgateBin, "rules", "list", "--backend", "nftables")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "ID ") {
			n++
		}
	}
	return n, nil
}

// mem is a process's resident memory in KiB, from smaps_rollup.
type mem struct{ rss, anon int }

func (m mem) String() string { return fmt.Sprintf("Rss %d KiB (Anonymous %d KiB)", m.rss, m.anon) }

func readMem(pid int) (mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return mem{}, err
	}
	var m mem
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			m.rss = v
		case "Anonymous:":
			m.anon = v
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("no Rss in /proc/%d/smaps_rollup", pid)
	}
	return m, nil
}

// maxTail bounds the output lines a process keeps: the servers log a
// line per session, and there are thousands.
const maxTail = 200

// logOutput logs what the process printed, if anything: pasvgate runs at
// level warn, so any line is worth reading.
func logOutput(tb testing.TB, p *netns.Proc) {
	tb.Helper()
	if out := p.Output(); out != "" {
		tb.Logf("%s output (last %d lines at most):\n%s", p.Name(), maxTail, out)
	}
}

// expectPID checks that the PID is the program itself, whose memory is
// measured.
func expectPID(tb testing.TB, p *netns.Proc) {
	tb.Helper()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
	if err != nil {
		tb.Fatal(err)
	}
	if got := string(bytes.TrimSpace(comm)); got != p.Name() {
		tb.Fatalf("PID %d is %q, want %q", p.Pid(), got, p.Name())
	}
}
