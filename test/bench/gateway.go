package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

// gateway is one way of getting the client to the server through the gw.
// up installs it, down removes it; after down the gw's rules must be back
// at the baseline (lab.checkClean says so, or the bench stops).
type gateway interface {
	// key is the column's short name ("A", "B", ...); title says what it is.
	key() string
	title() string
	// target is the control address the client dials.
	target() netip.AddrPort
	// up installs the gateway. verbose asks pasvgate for its debug-level
	// log, which the profile reads.
	up(ctx context.Context, verbose bool) error
	// check runs after a workload, before down: it verifies that the data
	// connections took the path this gateway is about (the client's
	// addresses, rule counters) and samples what it wants to keep.
	check(ctx context.Context, res load.Result) error
	down(ctx context.Context) error
}

// pasvgateGW is pasvgate in the gw (column A with the iptables backend on
// iptables-nft, A2 on iptables-legacy, N with the nftables backend). The client dials 203.0.113.1 and pasvgate's 227
// replies name 203.0.113.2, a different address: a client that ignored the
// 227 address would fail instead of measuring the wrong path. It is also
// the address the kernel helper's clients dial, so A and B are reached the
// same way. EPSV data connections go to the dialled address, as RFC 2428
// says, and pasvgate matches them there.
type pasvgateGW struct {
	// ipt is the iptables whose FORWARD policy drops while this column
	// runs, and the iptables backend's --iptables-path.
	k, ipt string
	// backend is pasvgate's --backend: iptables or nftables; empty for
	// column D, pasvgate with its default flags (--backend auto, its own
	// accept in the host firewall, --log-level info), which must have
	// chosen nftables on the lab's DROP-policy gw.
	backend string
	l       *lab
	bin     string
	// baseline marks column D0: default flags, another binary.
	baseline bool
	p        *proc
	// verbose is whether the running instance logs at debug level.
	verbose bool
	// extra are more arguments for `pasvgate run` (the CPU profile's).
	extra []string

	// rssKB and hwmKB are VmRSS and VmHWM after each measured workload.
	rssKB, hwmKB []int64
	// log is the last verbose (debug-level) instance's output, for the
	// profile.
	log []logLine
}

func (g *pasvgateGW) key() string { return g.k }
func (g *pasvgateGW) title() string {
	if g.baseline {
		return "pasvgate " + g.bin + ", default flags (the -baseline build)"
	}
	if g.backend == "" {
		return "pasvgate, default flags (auto: nftables, its own host-firewall accept, info log)"
	}
	if g.backend == "nftables" {
		return "pasvgate (nftables backend)"
	}
	return "pasvgate (" + g.ipt + ")"
}

// nftAccept is the host firewall rule the nftables backend needs under a
// FORWARD policy of DROP (README, "The nftables backend"): accept the
// connections that carry pasvgate's conntrack mark.
var nftAccept = []string{"FORWARD", "-m", "connmark", "--mark", "0x10000000/0x10000000", "-j", "ACCEPT"}

func (g *pasvgateGW) target() netip.AddrPort { return netip.MustParseAddrPort(gwPublic + ":21") }

func (g *pasvgateGW) up(ctx context.Context, verbose bool) error {
	if err := g.l.setForwardPolicy(ctx, g.ipt); err != nil {
		return err
	}
	if g.backend == "nftables" {
		if _, err := run(ctx, g.l.gw, "", g.ipt, append([]string{"-w", "5", "-I"}, nftAccept...)...); err != nil {
			return err
		}
	}
	// The profile (verbose) reads each mapping's lines, which pasvgate
	// writes at debug.
	level := "warn"
	if verbose {
		level = "debug"
	}
	g.verbose = verbose
	args := []string{"run",
		"--listen", gwPublic + ":21", "--upstream", serverAddr + ":21", "--public-addr", gwPublic2,
		"--data-ports", dataPorts, "--log-format", "json"}
	switch {
	case g.backend != "":
		args = append(args, "--backend", g.backend, "--iptables-path", g.ipt, "--log-level", level)
	case verbose:
		args = append(args, "--log-level", level)
	}
	p, err := startProc(g.l.gw, g.bin, append(args, g.extra...)...)
	if err != nil {
		return err
	}
	g.p = p
	// Greeted from the client's side: pasvgate is listening, has swept and
	// set up its chains, and reaches the server.
	if err := waitBanner(ctx, g.l.client, g.target().String(), p); err != nil {
		return err
	}
	if g.backend == "" {
		return g.wantBackend("nftables")
	}
	return nil
}

// wantBackend checks that the start-up line of the default-flags column
// names the backend the bench is about: under the lab's DROP policy,
// --backend auto must take nftables now that pasvgate adds its own accept.
func (g *pasvgateGW) wantBackend(want string) error {
	// The line may follow the first greeting by a little.
	for deadline := time.Now().Add(2 * time.Second); ; {
		for _, l := range g.p.output() {
			var rec struct {
				Msg     string `json:"msg"`
				Backend string `json:"backend"`
			}
			if json.Unmarshal([]byte(l.text), &rec) != nil || rec.Msg != "pasvgate started" {
				continue
			}
			if rec.Backend != want {
				return fmt.Errorf("pasvgate with default flags started with backend=%s, want %s:\n%s", rec.Backend, want, g.p.outputText())
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pasvgate with default flags logged no start-up line:\n%s", g.p.outputText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *pasvgateGW) check(_ context.Context, res load.Result) error {
	if err := wantData(res.PASVAddr, gwPublic2, dataPorts); err != nil {
		return fmt.Errorf("pasvgate PASV: %w", err)
	}
	if res.EPSVAddr != "" {
		if err := wantData(res.EPSVAddr, gwPublic, dataPorts); err != nil {
			return fmt.Errorf("pasvgate EPSV: %w", err)
		}
	}
	if g.verbose {
		return nil
	}
	rss, hwm, err := procMemory(g.p.pid())
	if err != nil {
		return err
	}
	g.rssKB = append(g.rssKB, rss)
	g.hwmKB = append(g.hwmKB, hwm)
	return nil
}

// down stops pasvgate with SIGTERM (it removes its mappings and exits 0)
// and then removes its chains and jumps with `pasvgate rules flush`, which
// a stop leaves in place on purpose.
func (g *pasvgateGW) down(ctx context.Context) error {
	var errs []error
	if g.p != nil {
		if err := g.p.stop(30 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("pasvgate did not stop cleanly: %w\n%s", err, g.p.outputText()))
		}
		if g.verbose {
			g.log = g.p.output()
		}
		g.p = nil
	}
	flush := []string{"rules", "flush"}
	if g.backend != "" {
		flush = append(flush, "--backend", g.backend, "--iptables-path", g.ipt)
	}
	if _, err := run(ctx, g.l.gw, "", g.bin, flush...); err != nil {
		errs = append(errs, err)
	}
	if g.backend == "nftables" {
		if _, err := run(ctx, g.l.gw, "", g.ipt, append([]string{"-w", "5", "-D"}, nftAccept...)...); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, g.l.setForwardPolicy(ctx, iptNFT))
	return errors.Join(errs...)
}

// logTail is the running instance's output so far, for a failure's
// message.
func (g *pasvgateGW) logTail() string {
	if g.p == nil {
		return "(not running)"
	}
	return g.p.outputText()
}

// procMemory reads VmRSS and VmHWM (kB) of a process.
func procMemory(pid int) (rss, hwm int64, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parsing %s of pid %d: %w", k, pid, err)
		}
		if k == "VmRSS" {
			rss = n
		} else {
			hwm = n
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM for pid %d", pid)
	}
	return rss, hwm, sc.Err()
}

// profileLog is what pasvgate's debug log says about each mapping of a
// profile run, in order: the install time it measured itself, and when
// the removal was done (when the bench read the "mapping closed" line).
func (g *pasvgateGW) profileLog() (installMS []float64, closedAt []time.Time, err error) {
	for _, l := range g.log {
		var rec struct {
			Msg       string   `json:"msg"`
			InstallMS *float64 `json:"install_ms"`
		}
		if json.Unmarshal([]byte(l.text), &rec) != nil {
			continue
		}
		switch rec.Msg {
		case "mapping opened":
			if rec.InstallMS == nil {
				return nil, nil, fmt.Errorf("pasvgate's %q line has no install_ms: %s", rec.Msg, l.text)
			}
			installMS = append(installMS, *rec.InstallMS)
		case "mapping closed":
			closedAt = append(closedAt, l.at)
		}
	}
	return installMS, closedAt, nil
}

// helperRules is gateway B: a static DNAT of the public port 21 to the
// server, the kernel's FTP helper attached to it (since Linux 4.7 it must
// be attached explicitly), and FORWARD accepts for the control
// connection, the helper's RELATED data connections and established flows.
// The server advertises its own address; nf_nat_ftp rewrites it to the
// address the client dialled and DNATs the data connection to the server.
const helperRules = `*raw
%[1]s PREROUTING -p tcp -m tcp --dport 21 -m comment --comment pgbench -j CT --helper ftp
COMMIT
*nat
%[1]s PREROUTING -d ` + gwPublic + `/32 -p tcp -m tcp --dport 21 -m comment --comment pgbench -j DNAT --to-destination ` + serverAddr + `:21
COMMIT
*filter
%[1]s FORWARD -m conntrack --ctstate ESTABLISHED -m comment --comment pgbench -j ACCEPT
%[1]s FORWARD -m conntrack --ctstate RELATED -m helper --helper ftp -m comment --comment pgbench-related -j ACCEPT
%[1]s FORWARD -s 203.0.113.0/24 -d ` + serverAddr + `/32 -p tcp -m tcp --dport 21 -m conntrack --ctstate NEW --ctorigdst ` + gwPublic + ` --ctorigdstport 21 -m comment --comment pgbench -j ACCEPT
COMMIT
`

// routedRules is gateway C: plain forwarding between the client and the
// server, no NAT, no helper.
const routedRules = `*filter
%[1]s FORWARD -s ` + clientAddr + `/32 -d ` + serverAddr + `/32 -m comment --comment pgbench -j ACCEPT
%[1]s FORWARD -s ` + serverAddr + `/32 -d ` + clientAddr + `/32 -m comment --comment pgbench -j ACCEPT
COMMIT
`

// staticGW is a gateway made of static rules only (B and C), installed
// and removed with one iptables-nft-restore each.
type staticGW struct {
	k, name string
	l       *lab
	rules   string // with %[1]s for -A or -D
	dial    netip.AddrPort
	// wantData is the address data connections must go to, for PASV and
	// EPSV alike.
	wantData string
	// helper says the RELATED accept's counter must have moved: the proof
	// that the data connections were the kernel helper's.
	helper bool
}

func (g *staticGW) key() string            { return g.k }
func (g *staticGW) title() string          { return g.name }
func (g *staticGW) target() netip.AddrPort { return g.dial }

func (g *staticGW) up(ctx context.Context, _ bool) error {
	_, err := run(ctx, g.l.gw, fmt.Sprintf(g.rules, "-A"), iptNFT+"-restore", "--noflush", "--wait", "5")
	return err
}

func (g *staticGW) down(ctx context.Context) error {
	_, err := run(ctx, g.l.gw, fmt.Sprintf(g.rules, "-D"), iptNFT+"-restore", "--noflush", "--wait", "5")
	return err
}

func (g *staticGW) check(ctx context.Context, res load.Result) error {
	// The kernel helper keeps the server's port; routing changes nothing.
	if err := wantData(res.PASVAddr, g.wantData, serverPorts); err != nil {
		return fmt.Errorf("%s PASV: %w", g.name, err)
	}
	if res.EPSVAddr != "" {
		if err := wantData(res.EPSVAddr, g.wantData, serverPorts); err != nil {
			return fmt.Errorf("%s EPSV: %w", g.name, err)
		}
	}
	if !g.helper {
		return nil
	}
	n, err := helperCount(ctx, g.l)
	if err != nil {
		return err
	}
	if n == 0 {
		return errors.New("kernel helper: the RELATED (helper ftp) accept saw no packet: the data connections did not go through the helper's NAT")
	}
	return nil
}

// helperCount reads the packet counter of B's RELATED accept.
func helperCount(ctx context.Context, l *lab) (int64, error) {
	out, err := run(ctx, l.gw, "", iptNFT, "-w", "5", "-v", "-S", "FORWARD")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(out, "\n") {
		if !strings.Contains(line, "pgbench-related") {
			continue
		}
		f := strings.Fields(line)
		for i := range f {
			if f[i] == "-c" && i+1 < len(f) {
				return strconv.ParseInt(f[i+1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no counter for the RELATED accept in:\n%s", out)
}

// wantData checks that a data connection went to host, on a port in the
// range ports ("LOW-HIGH").
func wantData(got, host, ports string) error {
	ap, err := netip.ParseAddrPort(got)
	if err != nil {
		return fmt.Errorf("no data address recorded (%q)", got)
	}
	lo, hi, _ := strings.Cut(ports, "-")
	low, _ := strconv.Atoi(lo)
	high, _ := strconv.Atoi(hi)
	if ap.Addr().String() != host || int(ap.Port()) < low || int(ap.Port()) > high {
		return fmt.Errorf("the client was sent to %s, want %s with a port in %s", ap, host, ports)
	}
	return nil
}
