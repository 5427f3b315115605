// Command bench measures pasvgate against the kernel's own FTP NAT helper
// and against plain routing, on one lab, in one run (issue 4, item 6;
// `make bench`).
//
// It builds three network namespaces (client 203.0.113.10, gw with public
// 203.0.113.1 and .2 and private 192.0.2.1 under a FORWARD policy of DROP,
// server 192.0.2.10), runs one FTP server in the server namespace, and
// measures the same client program (cmd/ftpload, run inside the client
// namespace) through each gateway in turn:
//
//	A   pasvgate in the gw, iptables-nft (-iptables, on by default)
//	A2  the same with iptables-legacy (-legacy, on by default)
//	N   pasvgate with its nftables backend (-nftables, on by default),
//	    under the same iptables-nft FORWARD DROP plus the one accept for
//	    its conntrack mark, added by hand, and logging at warn
//	D   pasvgate with its default flags (-defaults, on by default):
//	    --backend auto, which must choose nftables, its own accept in the
//	    host firewall, --log-level info
//	D0  the same with another pasvgate binary (-baseline BIN), to compare
//	    two builds in one run, rounds interleaved
//	B   the kernel helper: static DNAT of port 21, CT --helper ftp
//	C   plain routing without NAT
//	F   the floor: a plain Go TCP relay of the control channel that
//	    installs each transfer's mapping as pasvgate does (relay.go,
//	    floorinstall.go): the helper's time, plus the relay's round
//	    trips, plus one install, as issue 13 defines the floor
//	F0  the same relay over a static DNAT+SNAT data path, no installs
//	M   ProFTPD mod_proxy as a reverse proxy: the userspace peer
//	    (-modproxy, on by default when test/install-deps.sh unpacked it)
//
// Rounds are interleaved (A, A2, N, D, F, B, C, F0, M; A, ...) and the
// table shows medians over rounds, so that drift on the machine hits every
// gateway alike. Between two gateways the gw's rules must be back at the
// baseline and its conntrack table is flushed.
//
// The server is vsftpd (-server testftpd for the built-in one), with its
// same-IP data check left on: every gateway passes it the same way,
// because pasvgate SNATs each data connection to the address its control
// connection comes from, while the kernel helper and routing leave the
// client's address on both. vsftpd sends files with sendfile from tmpfs,
// so downloads are not limited by the server's copying.
//
// With -tls it runs the FTPS bench instead, on the same lab (tls.go).
//
// It needs root and skips (exit 0) without it. It touches nothing outside
// the namespaces and directories it creates (pgbench-*), and deletes them
// on exit, on failure and on SIGINT/SIGTERM. It is a program, not a test,
// so that `go test ./...` never runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	rounds     int
	nsPrefix   string
	iptables   bool
	defaults   bool
	modProxy   bool
	legacy     bool
	nftables   bool
	cpuProfile string
	trace      string
	server     string
	pasvgate   string
	baseline   string
	noops      int
	gets       int
	sessions   int
	bulk       int
	bulkMiB    int64
	profile    int
	profileGap time.Duration
	timeout    time.Duration
	tls        bool
	tlsColumns string
	idle       int
	// modProxyTLS13 allows TLS 1.3 on column MT's server leg.
	modProxyTLS13 bool
	// reserveDataPorts takes the data ports out of the gw's ephemeral
	// range.
	reserveDataPorts bool
}

func main() {
	var o options
	flag.IntVar(&o.rounds, "rounds", 5, "measured rounds; each runs every gateway once")
	flag.StringVar(&o.nsPrefix, "ns-prefix", "pgbench", "prefix of the lab's network namespace names")
	flag.BoolVar(&o.iptables, "iptables", true, "measure pasvgate with its iptables backend on iptables-nft (column A)")
	flag.BoolVar(&o.defaults, "defaults", true, "measure pasvgate with its default flags (column D)")
	flag.BoolVar(&o.modProxy, "modproxy", true, "measure ProFTPD mod_proxy as a reverse proxy (column M), if unpacked")
	flag.BoolVar(&o.legacy, "legacy", true, "also measure pasvgate with iptables-legacy (column A2)")
	flag.BoolVar(&o.nftables, "nftables", true, "also measure pasvgate with its nftables backend (column N)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of pasvgate (column D, or N with -defaults=false) during back-to-back small downloads to this `file`")
	flag.StringVar(&o.trace, "trace", "", "write a Go execution trace of pasvgate (the column -cpuprofile profiles) during 2 s of back-to-back small downloads to this `file`")
	flag.StringVar(&o.server, "server", "vsftpd", "FTP server: vsftpd or testftpd (the built-in one)")
	flag.StringVar(&o.pasvgate, "pasvgate", "", "pasvgate binary to measure (default: build ./cmd/pasvgate)")
	flag.StringVar(&o.baseline, "baseline", "", "also measure this other pasvgate `binary` with its default flags (column D0), interleaved with D: to compare two builds in one run")
	flag.IntVar(&o.noops, "noops", 1000, "NOOP round trips per round")
	flag.IntVar(&o.gets, "gets", 200, "sequential 1 KiB downloads per round, with PASV and with EPSV")
	flag.IntVar(&o.sessions, "sessions", 100, "whole sessions per round")
	flag.IntVar(&o.bulk, "bulk", 3, "bulk downloads and uploads per round (the round's value is their median)")
	flag.Int64Var(&o.bulkMiB, "bulk-mib", 256, "bulk transfer size in MiB")
	flag.IntVar(&o.profile, "profile", 20, "single small downloads timed phase by phase, per gateway")
	flag.DurationVar(&o.profileGap, "profile-gap", 200*time.Millisecond, "pause between profiled downloads (0: back to back)")
	flag.DurationVar(&o.timeout, "timeout", 12*time.Minute, "bound on the whole bench")
	flag.BoolVar(&o.tls, "tls", false, "run the FTPS bench instead (tls.go): direct TLS, pasvgate PROT P, PROT C and plain, mod_proxy with FTPS; it uses -rounds, -gets, -sessions, -bulk, -bulk-mib, -idle, -modproxy, -pasvgate, -ns-prefix and -timeout")
	flag.StringVar(&o.tlsColumns, "tls-columns", "T,TC,T0,P,PC,P0,MT", "with -tls: the columns to measure, comma-separated")
	flag.BoolVar(&o.reserveDataPorts, "reserve-data-ports", false, "with -tls: reserve the data ports in the gw (net.ipv4.ip_local_reserved_ports), so no outgoing connection of the gw takes one as its local port, as the README advises where much PROT P is relayed")
	flag.BoolVar(&o.modProxyTLS13, "modproxy-tls13", false, "with -tls: allow TLS 1.3 on mod_proxy's leg to the server, where its uploads fail now and then (tls.go)")
	flag.IntVar(&o.idle, "idle", 200, "with -tls: idle TLS sessions opened per round to measure what one costs the gateway's memory (0: none)")
	relayListen := flag.String("relay", "", "internal: run as column F's relay, listening on `ADDR:PORT`")
	relayUpstream := flag.String("relay-upstream", "", "internal: the relay's upstream `ADDR:PORT`")
	relayInstall := flag.Bool("relay-install", false, "internal: the relay installs a mapping per transfer (column F)")
	flag.Parse()
	if *relayListen != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := relay(ctx, *relayListen, *relayUpstream, *relayInstall); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() > 0 || o.rounds < 1 || o.rounds > 50 || o.bulkMiB < 1 || o.bulkMiB > 4096 || o.idle < 0 || o.idle > 450 {
		fmt.Fprintln(os.Stderr, "bench: bad arguments; see -h")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Println("bench: skipped: needs root (network namespaces, iptables)")
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	run := bench
	if o.tls {
		run = benchTLS
	}
	if err := run(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		cancel()
		stop()
		os.Exit(1)
	}
}

// bench is the whole bench; everything it starts or creates is gone when
// it returns.
func bench(ctx context.Context, o options, out, progress io.Writer) (retErr error) {
	start := time.Now()
	for _, tool := range []string{"ip", iptNFT, iptNFT + "-save", iptNFT + "-restore", "ip6tables-nft", "ip6tables-nft-save",
		iptLegacy + "-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	if o.legacy {
		for _, tool := range []string{iptLegacy, "ip6tables-legacy"} {
			if _, err := exec.LookPath(tool); err != nil {
				fmt.Fprintf(progress, "bench: no %s: column A2 left out\n", tool)
				o.legacy = false
			}
		}
	}

	bins, dataDir, root, cleanup, err := prepare(ctx, o)
	if err != nil {
		return err
	}
	defer cleanup()
	smallSize, bigSize := int64(1024), o.bulkMiB<<20

	l, err := newLab(ctx, o.legacy, o.nsPrefix)
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, l.close()) }()

	srv, err := startServer(ctx, l, o.server, bins.testftpd, dataDir, root, "")
	if err != nil {
		return err
	}
	defer func() {
		// vsftpd ends with SIGTERM's status; only a hang is an error here.
		if err := srv.stop(10 * time.Second); err != nil && !isSignalled(err) {
			retErr = errors.Join(retErr, fmt.Errorf("server: %w", err))
		}
	}()

	var gws []gateway
	var pgs []*pasvgateGW
	if o.iptables {
		a := &pasvgateGW{k: "A", ipt: iptNFT, backend: "iptables", l: l, bin: bins.pasvgate}
		gws, pgs = append(gws, a), append(pgs, a)
	}
	if o.legacy {
		a2 := &pasvgateGW{k: "A2", ipt: iptLegacy, backend: "iptables", l: l, bin: bins.pasvgate}
		gws, pgs = append(gws, a2), append(pgs, a2)
	}
	var n *pasvgateGW
	if o.nftables {
		n = &pasvgateGW{k: "N", ipt: iptNFT, backend: "nftables", l: l, bin: bins.pasvgate}
		gws, pgs = append(gws, n), append(pgs, n)
	}
	// The CPU profile is of D, what users run, or else of N.
	profiled := n
	if o.defaults {
		d := &pasvgateGW{k: "D", ipt: iptNFT, l: l, bin: bins.pasvgate}
		gws, pgs = append(gws, d), append(pgs, d)
		profiled = d
	}
	if o.baseline != "" {
		d0 := &pasvgateGW{k: "D0", ipt: iptNFT, l: l, bin: o.baseline, baseline: true}
		gws, pgs = append(gws, d0), append(pgs, d0)
	}
	if (o.cpuProfile != "" || o.trace != "") && profiled == nil {
		return errors.New("-cpuprofile and -trace profile column D or N: they need -defaults or -nftables")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// F right after the pasvgate columns, so that the one compared with
	// the floor and the floor run close together in each round.
	gws = append(gws, &relayGW{l: l, self: self, install: true})
	b := &staticGW{k: "B", name: "kernel helper", l: l, rules: helperRules,
		dial: mustAddrPort(gwPublic + ":21"), wantData: gwPublic, helper: true}
	c := &staticGW{k: "C", name: "routed, no NAT", l: l, rules: routedRules,
		dial: mustAddrPort(serverAddr + ":21"), wantData: serverAddr}
	gws = append(gws, b, c, &relayGW{l: l, self: self})
	if o.modProxy && !modProxyAvailable() {
		fmt.Fprintln(progress, "bench: proftpd-core or proftpd-mod-proxy not unpacked (test/install-deps.sh): column M left out")
		o.modProxy = false
	}
	if o.modProxy {
		dir, err := os.MkdirTemp(dataDir, "modproxy-")
		if err != nil {
			return err
		}
		gws = append(gws, &modProxyGW{l: l, dir: dir})
	}

	files := []string{"-small", smallFile, "-small-size", fmt.Sprint(smallSize),
		"-big", bigFile, "-big-size", fmt.Sprint(bigSize), "-upload", uploadFile, "-upload-size", fmt.Sprint(bigSize)}
	r := &runner{l: l, ftpload: bins.ftpload, files: files, progress: progress}

	// The check round: a few of everything through each gateway, with the
	// path checks every round has, before anything counts. It also warms up
	// caches and the servers.
	fmt.Fprintf(progress, "bench: lab up after %.1fs; check round\n", time.Since(start).Seconds())
	for _, g := range gws {
		args := []string{"-noops", "10", "-gets", "3", "-sessions", "3", "-bulk", "1"}
		if _, err := r.once(ctx, g, false, args...); err != nil {
			return fmt.Errorf("check round, %s (%s): %w", g.key(), g.title(), err)
		}
	}
	// Memory is reported for the measured rounds only.
	for _, pg := range pgs {
		pg.rssKB, pg.hwmKB = nil, nil
	}

	rep := newReport(o, gws)
	if v, err := exec.CommandContext(ctx, bins.pasvgate, "version").Output(); err == nil {
		rep.version = strings.TrimSpace(string(v))
	}
	rep.loadStart = loadAvg()
	suite := []string{"-noops", fmt.Sprint(o.noops), "-gets", fmt.Sprint(o.gets),
		"-sessions", fmt.Sprint(o.sessions), "-bulk", fmt.Sprint(o.bulk)}
	// Rounds stop early rather than let the bench overrun its bound on a
	// busy machine: what comes after them (profile, server-only run,
	// clean-up) needs about a minute, kept in reserve with room to spare.
	deadline, _ := ctx.Deadline()
	roundsStart := time.Now()
	for round := 1; round <= o.rounds; round++ {
		if done := round - 1; done > 0 {
			per := time.Since(roundsStart) / time.Duration(done)
			if time.Until(deadline) < per+2*time.Minute {
				rep.note = fmt.Sprintf("stopped after %d of %d rounds to stay within -timeout %v (%.0fs per round)",
					done, o.rounds, o.timeout, per.Seconds())
				fmt.Fprintln(progress, "bench:", rep.note)
				break
			}
		}
		for _, g := range gws {
			t := time.Now()
			res, err := r.once(ctx, g, false, suite...)
			if err != nil {
				return fmt.Errorf("round %d, %s (%s): %w", round, g.key(), g.title(), err)
			}
			rep.add(g.key(), res)
			fmt.Fprintf(progress, "bench: round %d/%d %-2s %5.1fs%s\n", round, o.rounds, g.key(),
				time.Since(t).Seconds(), roundLine(res))
		}
	}

	// The floor's one install, while no pasvgate runs.
	if rep.oneInstall, err = oneInstall(ctx, l, oneInstallCount); err != nil {
		return err
	}
	if err := l.checkClean(ctx, "the one-install measurement"); err != nil {
		return err
	}

	// The profile: single small downloads with pasvgate at debug level
	// (its mapping lines have install_ms), not part of the rounds because
	// logging costs. Once spaced out, so that each mapping's removal is over before
	// the next install (the cost of one transfer alone), and once back to
	// back, as the downloads/s rows run them.
	gaps := []time.Duration{o.profileGap}
	if o.profileGap > 0 {
		gaps = append(gaps, 0)
	}
	for _, gap := range gaps {
		fmt.Fprintf(progress, "bench: profile, %v apart\n", gap)
		p := newProfile(gap)
		for _, g := range gws {
			res, err := r.once(ctx, g, true, "-profile", fmt.Sprint(o.profile), "-profile-gap", gap.String())
			if err != nil {
				return fmt.Errorf("profile, %s (%s): %w", g.key(), g.title(), err)
			}
			p.samples[g.key()] = res.Profile
			if pg, ok := g.(*pasvgateGW); ok {
				inst, closed, err := pg.profileLog()
				if err != nil {
					return err
				}
				if err := p.addRuleTimes(pg.key(), inst, closed); err != nil {
					return err
				}
			}
		}
		rep.profiles = append(rep.profiles, p)
	}
	for _, pg := range pgs {
		rep.memory[pg.key()] = [2][]int64{pg.rssKB, pg.hwmKB}
	}

	if o.cpuProfile != "" {
		fmt.Fprintf(progress, "bench: CPU profile of %s\n", profiled.key())
		if err := r.cpuProfile(ctx, profiled, o.cpuProfile); err != nil {
			return fmt.Errorf("CPU profile: %w", err)
		}
		rep.cpuProfile, rep.cpuProfiled = o.cpuProfile, profiled.key()
	}

	if o.trace != "" {
		fmt.Fprintf(progress, "bench: execution trace of %s\n", profiled.key())
		if err := r.trace(ctx, profiled, o.trace); err != nil {
			return fmt.Errorf("execution trace: %w", err)
		}
		rep.trace, rep.cpuProfiled = o.trace, profiled.key()
	}

	// The server on its own, client in the server namespace: the ceiling
	// the server sets for bulk transfers without any gateway in between.
	res, err := r.load(ctx, l.server, mustAddrPort(serverAddr+":21"), "-bulk", "3")
	if err != nil {
		return fmt.Errorf("server-only bulk run: %w", err)
	}
	rep.serverOnly = res

	rep.loadEnd = loadAvg()
	rep.elapsed = time.Since(start)
	rep.write(out)
	return nil
}

// binaries are the programs the bench runs.
type binaries struct {
	pasvgate, ftpload, testftpd string
}

// build compiles what the bench runs, from this module's source, unless a
// pasvgate binary is given (make bench passes the one `make build` made).
func build(ctx context.Context, dir string, o options) (binaries, error) {
	var b binaries
	b.ftpload = filepath.Join(dir, "ftpload")
	pkgs := map[string]string{b.ftpload: "github.com/pasvgate/pasvgate/test/bench/cmd/ftpload"}
	if o.pasvgate != "" {
		abs, err := filepath.Abs(o.pasvgate)
		if err != nil {
			return b, err
		}
		b.pasvgate = abs
	} else {
		b.pasvgate = filepath.Join(dir, "pasvgate")
		pkgs[b.pasvgate] = "github.com/pasvgate/pasvgate/cmd/pasvgate"
	}
	if o.server == "testftpd" {
		b.testftpd = filepath.Join(dir, "testftpd")
		pkgs[b.testftpd] = "github.com/pasvgate/pasvgate/test/ftpd/cmd/testftpd"
	}
	// Stamped like `make build` does, so the report says what was measured.
	ldflags := "-X main.version=dev"
	if v, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output(); err == nil {
		ldflags = "-X main.version=" + strings.TrimSpace(string(v))
	}
	for outPath, pkg := range pkgs {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", outPath, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("building %s: %w\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

func isSignalled(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			return ws.Signaled()
		}
	}
	return false
}

// prepare builds the binaries and writes the server's files, which both
// benches need: the files in a directory on tmpfs (the server's files
// live in memory either way, so the disk never limits a transfer), 1 KiB
// and -bulk-mib big. cleanup removes both directories.
func prepare(ctx context.Context, o options) (bins binaries, dataDir, root string, cleanup func(), err error) {
	binDir, err := os.MkdirTemp("", "pgbench-bin-")
	if err != nil {
		return bins, "", "", nil, err
	}
	if bins, err = build(ctx, binDir, o); err != nil {
		os.RemoveAll(binDir)
		return bins, "", "", nil, err
	}
	if dataDir, err = os.MkdirTemp("/dev/shm", "pgbench-"); err != nil {
		os.RemoveAll(binDir)
		return bins, "", "", nil, err
	}
	cleanup = func() {
		os.RemoveAll(dataDir)
		os.RemoveAll(binDir)
	}
	if root, err = serverFiles(dataDir, 1024, o.bulkMiB<<20); err != nil {
		cleanup()
		return bins, "", "", nil, fmt.Errorf("writing the server's files: %w", err)
	}
	return bins, dataDir, root, cleanup, nil
}
