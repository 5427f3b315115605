package sidecar

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Selections. Each flag's default comes from an environment variable, so
// that `go test ./...` can be narrowed too.
var (
	flagBackends = flag.String("sidecar.backends", lab.EnvOr("PASVGATE_SIDECAR_BACKENDS", "iptables,nftables"),
		"comma-separated pasvgate backends: iptables runs the router labs once per -sidecar.iptables binary, nftables once, on a router whose firewall is iptables-nft's [$PASVGATE_SIDECAR_BACKENDS]")
	flagIPTables = flag.String("sidecar.iptables", lab.EnvOr("PASVGATE_SIDECAR_IPTABLES", "/usr/sbin/iptables-nft,/usr/sbin/iptables-legacy"),
		"comma-separated iptables binaries for the iptables backend: the router labs run once per binary, which pasvgate is given too [$PASVGATE_SIDECAR_IPTABLES]")
	flagMethods = flag.String("sidecar.methods", lab.EnvOr("PASVGATE_SIDECAR_METHODS", "redirect,tproxy"),
		"comma-separated interception methods to run [$PASVGATE_SIDECAR_METHODS]")
	flagClients = flag.String("sidecar.clients", lab.EnvOr("PASVGATE_SIDECAR_CLIENTS", "curl,lftp,ftplib,raw"),
		"comma-separated clients to run [$PASVGATE_SIDECAR_CLIENTS]")
	flagPasvgate = flag.String("sidecar.pasvgate", os.Getenv("PASVGATE_BIN"),
		"pasvgate binary (default: $PASVGATE_BIN, else built from ./cmd/pasvgate)")
)

// variant is one kind of router lab: pasvgate's backend, and the iptables
// binary that makes the router's own firewall (and, for the iptables
// backend, pasvgate's rules too).
type variant struct {
	name    string // the labs' name: the iptables binary's, or "nftables"
	backend string // pasvgate's --backend: iptables or nftables
	ipt     string // the router's iptables binary
}

// nft reports whether pasvgate runs the nftables backend.
func (v variant) nft() bool { return v.backend == "nftables" }

// nftNSPrefix names the namespaces of the nftables backend's labs, apart
// from the iptables labs' (lab's "pgsc-"), so that neither suite's runs
// meet the other's in a clean-up.
const nftNSPrefix = "pgscn-"

// variants are the labs -sidecar.backends and -sidecar.iptables ask for.
// The nftables backend's labs run on a router whose firewall is
// iptables-nft's, as on Debian 12, with the one host rule the README asks
// for under a forward policy of drop.
func variants() ([]variant, error) {
	var out []variant
	for _, b := range lab.SplitList(*flagBackends) {
		switch b {
		case "iptables":
			for _, ipt := range lab.SplitList(*flagIPTables) {
				out = append(out, variant{filepath.Base(ipt), b, ipt})
			}
		case "nftables":
			out = append(out, variant{b, b, lab.DefaultIPTables})
		default:
			return nil, fmt.Errorf("-sidecar.backends: %q: want iptables or nftables", b)
		}
	}
	return out, nil
}

// pasvgate's listener in the router and its public data ports. The
// server's own passive range is lab's default 30000-30099.
const (
	listenPort = 2121
	dataPorts  = "40000-40999"
	dataLow    = 40000
	dataHigh   = 40999
)

// wrongPASV is what the misconfigured server advertises in its 227: an
// address that is not its own, as a server behind a NAT that does not know
// its public address does.
const wrongPASV = "192.0.2.99"

// Data-connection commands.
const (
	cmdPASV = "PASV"
	cmdEPSV = "EPSV"
	cmdPORT = "PORT"
	cmdEPRT = "EPRT"
)

var dataCommands = []string{cmdPASV, cmdEPSV, cmdPORT, cmdEPRT}

// Router variants.
const (
	masqueraded = "masquerade"
	routed      = "routed"
)

// Server configurations.
const (
	srvDefault = "default"
	srvWrong   = "pasv_address=" + wrongPASV
)

// cell is one client run through the sidecar.
type cell struct {
	method string // redirect or tproxy
	router string // masqueraded or routed
	server string // srvDefault or srvWrong
	client string
	cmd    string
	op     lab.Op
}

func (c cell) active() bool   { return c.cmd == cmdPORT || c.cmd == cmdEPRT }
func (c cell) extended() bool { return c.cmd == cmdEPSV || c.cmd == cmdEPRT }
func (c cell) row() []string  { return []string{c.method, c.router, c.server, c.client, c.cmd} }
func (c cell) String() string { return strings.Join(append(c.row(), string(c.op)), "/") }

// plan is the cells of one router lab, in the order they run. The server
// is restarted between its two configurations.
func plan(method, router string) []cell {
	var out []cell
	add := func(server string, clients, cmds []string, ops func(client string) []lab.Op) {
		for _, cl := range clients {
			if !slices.Contains(lab.SplitList(*flagClients), cl) {
				continue
			}
			for _, cmd := range cmds {
				for _, op := range ops(cl) {
					out = append(out, cell{method, router, server, cl, cmd, op})
				}
			}
		}
	}
	all := func(cl string) []lab.Op {
		if cl == "raw" {
			return []lab.Op{lab.Get}
		}
		return lab.Ops
	}
	getOnly := func(string) []lab.Op { return []lab.Op{lab.Get} }
	clients := []string{"curl", "lftp", "ftplib"}
	if router == routed {
		// The point for a routed LAN: the server's connection
		// back to the client works without masquerade. One client and the
		// raw driver (with its probes) show it. Passive mode is left out:
		// through a routed LAN it meets the server's same-address check
		// (the data connection comes from the client, the control
		// connection from the router; vsftpd answers RETR with 425,
		// checked), which transparent mode does not address.
		add(srvDefault, []string{"curl", "raw"}, []string{cmdPORT, cmdEPRT}, func(cl string) []lab.Op {
			if cl == "raw" {
				return []lab.Op{lab.Get}
			}
			return []lab.Op{lab.Get, lab.Put}
		})
		return out
	}
	add(srvDefault, append(clients, "raw"), []string{cmdPORT, cmdEPRT}, all)
	add(srvDefault, clients, []string{cmdPASV, cmdEPSV}, getOnly)
	add(srvWrong, append(clients, "raw"), []string{cmdPASV}, all)
	return out
}

var gridHead = []string{"method", "router", "server", "client", "cmd"}

// TestSidecar runs every cell of plan for each interception method, on a
// masquerading router and on a routing one, with the iptables backend on
// each iptables binary and with the nftables backend (one lab each, all
// in parallel: most of their time is waiting), then prints per variant
// the table of cells and the table of the router checks (loops, stop,
// flush).
func TestSidecar(t *testing.T) {
	lab.RequireRoot(t)
	start := time.Now()
	vs, err := variants()
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.SweepPrefix(nftNSPrefix); err != nil {
		t.Logf("sweeping stale namespaces: %v", err)
	}
	bin := pasvgateBinary(t)
	type tables struct{ cells, checks *lab.Grid }
	var all []tables
	methods := lab.SplitList(*flagMethods)
	t.Run("labs", func(t *testing.T) {
		for _, v := range vs {
			what := v.ipt
			if v.nft() {
				what = "nftables backend, router firewall " + v.ipt
			}
			tb := tables{
				lab.NewGrid(fmt.Sprintf("pasvgate as a router sidecar, transparent mode (%s)", what),
					gridHead, []string{"get", "put", "list"}),
				lab.NewGrid(fmt.Sprintf("router checks (%s)", what), []string{"method", "check"}, []string{"result"}),
			}
			all = append(all, tb)
			for _, m := range methods {
				declare(tb.cells, tb.checks, m)
			}
			for _, m := range methods {
				for _, r := range []string{masqueraded, routed} {
					t.Run(v.name+"/"+m+"/"+r, func(t *testing.T) {
						t.Parallel()
						runLab(t, bin, v, m, r, tb.cells, tb.checks)
					})
				}
			}
		}
	})
	for _, tb := range all {
		tb.cells.Print(os.Stdout, time.Since(start))
		tb.checks.Print(os.Stdout, time.Since(start))
	}
}

// declare adds the rows of method m to the tables, and marks what a row
// does not run as no cell.
func declare(g, checks *lab.Grid, m string) {
	for _, r := range []string{masqueraded, routed} {
		cells := plan(m, r)
		seen := map[string]bool{}
		for _, c := range cells {
			if k := strings.Join(c.row(), "/"); !seen[k] {
				seen[k] = true
				g.Row(c.row()...)
			}
		}
		for _, c := range cells {
			for _, op := range lab.Ops {
				if !slices.ContainsFunc(cells, func(o cell) bool { return slices.Equal(o.row(), c.row()) && o.op == op }) {
					g.Set(c.row(), string(op), lab.StatusNone, "", 0)
				}
			}
		}
	}
	for _, name := range routerChecks(m) {
		checks.Row(m, name)
	}
}

// pasvgateBinary returns -sidecar.pasvgate, or builds ./cmd/pasvgate.
func pasvgateBinary(t *testing.T) string {
	if *flagPasvgate != "" {
		if _, err := os.Stat(*flagPasvgate); err != nil {
			t.Fatal(err)
		}
		return *flagPasvgate
	}
	bin, err := lab.BuildGo(t.Context(), t.TempDir(), "./cmd/pasvgate")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// env is one router lab with pasvgate in it.
type env struct {
	l      *lab.Lab
	v      variant
	method string
	bin    string
	srv    *lab.Server
	conf   string // the running server's configuration: srvDefault or srvWrong
	pg     *lab.Proc
}

func runLab(t *testing.T, bin string, v variant, method, router string, g, checks *lab.Grid) {
	cells := plan(method, router)
	failAll := func(status, why string) {
		for _, c := range cells {
			g.SetRow(c.row(), status, why)
		}
		if router == masqueraded {
			for _, name := range routerChecks(method) {
				checks.SetRow([]string{method, name}, status, why)
			}
		}
	}
	opt := lab.RouterOptions{IPTables: v.ipt, NoMasquerade: router == routed}
	if v.nft() {
		opt.NSPrefix = nftNSPrefix
		// The checks read the router's ruleset as an operator would.
		if _, err := exec.LookPath("nft"); err != nil {
			failAll(lab.StatusSkip, "nft not installed")
			t.Skip("nft not installed")
		}
	}
	l := lab.NewRouter(t, opt)
	e := &env{l: l, v: v, method: method, bin: bin}
	ctx := t.Context()
	if v.nft() {
		// The router's own accept of what pasvgate's nftables backend
		// marks, as an operator adds it under --host-firewall leave;
		// with it, pasvgate adds nothing to the router's FORWARD, which
		// routerChecks compares. Without any, active mode fails here:
		// the server's data connection is forwarded into the LAN.
		if _, err := l.Exec(ctx, l.GW, l.IPTables, "-w", "5", "-I", "FORWARD",
			"-m", "connmark", "--mark", ctMarkArg, "-j", "ACCEPT"); err != nil {
			failAll(lab.StatusFail, oneLine(err.Error()))
			t.Fatal(err)
		}
	}
	before, err := e.routerState(ctx)
	if err != nil {
		failAll(lab.StatusFail, oneLine(err.Error()))
		t.Fatal(err)
	}
	if err := e.startServer(ctx, srvDefault); err != nil {
		if errors.Is(err, lab.ErrMissing) {
			failAll(lab.StatusSkip, oneLine(err.Error()))
			t.Skip(err)
		}
		failAll(lab.StatusFail, oneLine(err.Error()))
		t.Fatal(err)
	}
	if err := e.startPasvgate(ctx); err != nil {
		failAll(lab.StatusFail, "pasvgate did not start: "+oneLine(err.Error()))
		t.Fatal(err)
	}
	defer e.pg.Stop()
	for _, c := range cells {
		if c.server != e.conf {
			if err := e.startServer(ctx, c.server); err != nil {
				g.SetRow(c.row(), lab.StatusFail, "server did not start: "+oneLine(err.Error()))
				t.Error(err)
				continue
			}
		}
		t.Run(strings.Join([]string{c.server, c.client, c.cmd, string(c.op)}, "/"), func(t *testing.T) {
			e.runCell(t, g, c)
		})
	}
	if router == masqueraded {
		e.routerChecks(t, checks, before)
	}
}

// startServer (re)starts vsftpd, with its default configuration or
// advertising wrongPASV.
func (e *env) startServer(ctx context.Context, config string) error {
	if e.srv != nil {
		e.srv.Proc.Stop()
		e.srv = nil
	}
	opt := lab.ServerOptions{}
	if config == srvWrong {
		opt.PublicAddr = wrongPASV
	}
	srv, err := e.l.StartServer(ctx, lab.Vsftpd, opt)
	if err != nil {
		return err
	}
	e.srv, e.conf = srv, config
	return nil
}

// startPasvgate runs pasvgate in the router in transparent mode and waits
// for its start-up line. A greeting through the router would prove
// nothing: before the interception is in place the LAN reaches the server
// directly.
func (e *env) startPasvgate(ctx context.Context) error {
	p, err := e.l.Start(e.l.GW, e.bin, "run",
		// Both families as the README's sidecar command lists them: the
		// two sockets must coexist.
		"--listen", "0.0.0.0:"+strconv.Itoa(listenPort),
		"--listen", "[::]:"+strconv.Itoa(listenPort),
		"--intercept", lab.RouterLANIface,
		"--intercept-method", e.method,
		"--data-ports", dataPorts,
		"--backend", e.v.backend,
		"--iptables-path", e.l.IPTables,
		"--log-format", "json")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.Output(), `"msg":"pasvgate started"`) {
		if done, err := p.Exited(); done {
			return fmt.Errorf("exited: %v\n%s", err, lastLines(p.Output(), 20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.Stop()
			return fmt.Errorf("no start-up line within 15s\n%s", lastLines(p.Output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.pg = p
	return nil
}

// runCell runs c, records it in g, and fails t if it failed.
func (e *env) runCell(t *testing.T, g *lab.Grid, c cell) {
	start := time.Now()
	client, err := lab.ClientByName(c.client)
	if err != nil {
		g.Set(c.row(), string(c.op), lab.StatusSkip, oneLine(err.Error()), 0)
		t.Skip(err)
	}
	fails, notes, skip := e.check(t, c, client)
	took := time.Since(start)
	for _, n := range notes {
		t.Log(n)
	}
	switch {
	case skip != "":
		g.Set(c.row(), string(c.op), lab.StatusSkip, skip, 0)
		t.Skip(skip)
	case len(fails) > 0:
		g.Set(c.row(), string(c.op), lab.StatusFail, strings.Join(fails, "; "), took)
		t.Error(strings.Join(fails, "\n"))
		t.Logf("pasvgate log (tail):\n%s", lastLines(e.pg.Output(), 15))
	default:
		g.Set(c.row(), string(c.op), lab.StatusOK, strings.Join(notes, "; "), took)
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// check runs the cell and returns what went wrong, notes, and a reason to
// skip when the client cannot do what the cell asks.
func (e *env) check(t *testing.T, c cell, client lab.Client) (fails, notes []string, skip string) {
	ctx := t.Context()
	l := e.l
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	server := netip.AddrPortFrom(addr(lab.WANServerAddr), 21)

	lanCap, err := l.Capture(l.Client, lab.LANClientIface)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}
	wanCap, err := l.Capture(l.GW, lab.RouterWANIface)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}
	// Every earlier session's lines are out (WaitSessions): none of them
	// can land in this cell's part of the log.
	sessionsBefore := e.pg.Sessions()
	logBefore := e.pg.WaitSessions(sessionsBefore, 3*time.Second)

	base := strings.ReplaceAll(c.String(), "/", "-")
	tr := lab.Transfer{NS: l.Client, Host: lab.WANServerAddr, User: e.srv.User, Password: e.srv.Password,
		EPSV: c.extended(), Active: c.active(), Op: c.op, Timeout: 30 * time.Second}
	var putSHA string
	switch c.op {
	case lab.Get:
		tr.Remote, tr.Local = lab.DataFile, filepath.Join(l.Dir, base+".out")
	case lab.Put:
		tr.Remote, tr.Local = lab.UploadDir+"/"+base+".bin", filepath.Join(l.Dir, base+".src")
		if putSHA, err = lab.WriteRandomFile(tr.Local, lab.DataSize); err != nil {
			return []string{err.Error()}, nil, ""
		}
	}
	defer os.Remove(tr.Local)

	var (
		res    lab.Result
		runErr error
		rawSHA string
		peers  []netip.AddrPort
		pr     probeReport
	)
	raw := lab.RawSession{NS: l.Client, Local: lab.LANClientAddr, Host: lab.WANServerAddr, User: e.srv.User, Password: e.srv.Password}
	switch {
	case client != nil:
		res, runErr = client.Run(ctx, l, tr)
	case c.active():
		rawSHA, peers, runErr = l.RawActiveRetr(ctx, raw, c.cmd == cmdEPRT, e.activeHook(ctx, wanCap, &pr))
	default:
		rawSHA, runErr = l.RawPassiveRetr(ctx, raw, c.extended(), func(netip.AddrPort) (net.Conn, error) { return nil, nil })
	}
	pkts, lanErr := lanCap.Stop()
	wpkts, wanErr := wanCap.Stop()
	if errors.Is(runErr, lab.ErrUnsupported) {
		return nil, nil, oneLine(runErr.Error())
	}
	logCell := strings.TrimPrefix(e.pg.WaitSessions(sessionsBefore+1, 3*time.Second), logBefore)

	// 1. What the user gets.
	if runErr != nil {
		failf("client: %v", runErr)
		if res.Log != "" {
			notes = append(notes, "client log: "+lastLines(res.Log, 10))
		}
	} else {
		if bad := e.srv.CheckOutcome(c.op, res, tr.Local, rawSHA, base+".bin", putSHA); bad != "" {
			failf("%s", bad)
		}
	}

	// 2. The client used the cell's command and no other, and the
	// session went through pasvgate: the client dialed the server, and
	// only the interception brings that to pasvgate.
	cmds := lab.Stream(pkts, netip.AddrPort{}, server)
	for _, v := range dataCommands {
		if sent := lab.SentCommand(cmds, v); sent != (v == c.cmd) {
			failf("client sent %s: %v, want %v", v, sent, v == c.cmd)
		}
	}
	if !strings.Contains(logCell, `"msg":"session started"`) {
		failf("pasvgate logged no session: the connection was not intercepted")
	}

	// 3. Where the data connection went, on both links.
	if c.active() {
		fails = append(fails, checkActiveWire(c, pkts, wpkts, server)...)
	} else {
		fails = append(fails, checkPassiveWire(c, pkts, wpkts, server, logCell)...)
	}

	// 4. No LAN address on the server's link. On the LAN's own link an
	// active-mode command must show one: the positive control of the
	// capture and of Leaks.
	if leaks := lab.Leaks(lab.Payloads(wpkts), lab.LANPrefix); len(leaks) > 0 {
		failf("%s reached the server's link: %s", lab.LANPrefix, strings.Join(leaks, ", "))
	}
	if c.active() && len(lab.Leaks(lab.Payloads(pkts), lab.LANPrefix)) == 0 {
		failf("the LAN capture shows no %s although the client sent %s: capture or Leaks broken", lab.LANPrefix, c.cmd)
	}
	if err := errors.Join(lanErr, wanErr); err != nil {
		failf("capture incomplete, checks inconclusive: %v", err)
	}

	// 5. Only the server could use the active-mode port.
	if client == nil && c.active() {
		fails = append(fails, pr.verdict()...)
		notes = append(notes, pr.note())
		for _, p := range peers {
			if p.Addr() != addr(lab.WANServerAddr) {
				failf("a data connection reached the client from %v, want the server's %s (no SNAT in transparent mode)", p, lab.WANServerAddr)
			}
		}
	}

	// 6. Nothing left in the kernel.
	if left := e.waitDrained(ctx); left != "" {
		failf("after the transfer: %s", left)
	}
	return fails, notes, ""
}

// checkActiveWire checks an active-mode cell on both of the router's
// links: the client offered its own LAN address; the server was told the
// router's public address and a port Q of the data range instead, in the
// same command; the server connected to exactly that, and the client got
// the connection from the server's address (no SNAT in transparent mode)
// at exactly the port it offered.
func checkActiveWire(c cell, pkts, wpkts []lab.Packet, server netip.AddrPort) []string {
	var fails []string
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	offered := lab.ParseActive(lab.Stream(pkts, netip.AddrPort{}, server))
	told := lab.ParseActive(lab.Stream(wpkts, netip.AddrPort{}, server))
	if len(offered) == 0 {
		return []string{"no " + c.cmd + " from the client in the LAN capture"}
	}
	if len(told) != len(offered) {
		failf("client sent %v, server got %v", offered, told)
	}
	for _, o := range offered {
		if o.Addr.Addr() != addr(lab.LANClientAddr) {
			failf("client offered %v, not its own address (client driver broken?)", o.Addr)
		}
	}
	for _, s := range told {
		if s.Verb != c.cmd {
			failf("server got %s for the client's %s", s.Verb, c.cmd)
		}
		if s.Addr.Addr() != addr(lab.RouterWANAddr) || s.Addr.Port() < dataLow || s.Addr.Port() > dataHigh {
			failf("server was told %v, want %s and a port in %s", s.Addr, lab.RouterWANAddr, dataPorts)
		}
	}
	if len(told) == 0 {
		return fails
	}
	q, p := told[len(told)-1].Addr, offered[len(offered)-1].Addr
	if want := (lab.Connect{From: addr(lab.WANServerAddr), To: q}); !slices.Contains(lab.Connects(wpkts), want) {
		failf("no connection %v on the server's link (SYNs %v)", want, lab.Connects(wpkts))
	}
	if want := (lab.Connect{From: addr(lab.WANServerAddr), To: p}); !slices.Contains(lab.Connects(pkts), want) {
		failf("no data connection %v on the LAN (SYNs %v)", want, lab.Connects(pkts))
	}
	return fails
}

// checkPassiveWire checks a passive-mode cell: the server's 227 as sent
// (its own address, or wrongPASV) and as the client got it (always the
// server's address, same port), a 229 unchanged; that the client connected
// exactly there; and that pasvgate logged a rewrite exactly when it made
// one.
func checkPassiveWire(c cell, pkts, wpkts []lab.Packet, server netip.AddrPort, logCell string) []string {
	var fails []string
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	lanReplies := lab.Stream(pkts, server, netip.AddrPort{})
	wanReplies := lab.Stream(wpkts, server, netip.AddrPort{})
	var got []netip.AddrPort
	rewrites := strings.Count(logCell, "227 rewritten")
	if c.cmd == cmdEPSV {
		lan, wan := lab.Parse229s(lanReplies), lab.Parse229s(wanReplies)
		if len(lan) == 0 || !slices.Equal(lan, wan) {
			failf("229 ports: server sent %v, client got %v; want the same", wan, lan)
		}
		for _, p := range lan {
			got = append(got, netip.AddrPortFrom(addr(lab.WANServerAddr), p))
		}
		if rewrites != 0 {
			failf("pasvgate logged %d 227 rewrites for EPSV", rewrites)
		}
	} else {
		lan, wan := lab.Parse227s(lanReplies), lab.Parse227s(wanReplies)
		advertised := lab.WANServerAddr
		if c.server == srvWrong {
			advertised = wrongPASV
		}
		if len(lan) == 0 || len(lan) != len(wan) {
			failf("227s: server sent %v, client got %v", wan, lan)
		}
		for i := range min(len(lan), len(wan)) {
			if wan[i].Addr() != addr(advertised) {
				failf("server advertised %v, want %s (server configuration not in effect?)", wan[i], advertised)
			}
			if lan[i] != netip.AddrPortFrom(addr(lab.WANServerAddr), wan[i].Port()) {
				failf("client got 227 %v for the server's %v, want %s and the same port", lan[i], wan[i], lab.WANServerAddr)
			}
		}
		got = lan
		want := 0
		if c.server == srvWrong {
			want = len(wan)
		}
		if rewrites != want {
			failf("pasvgate logged %d \"227 rewritten\", want %d", rewrites, want)
		}
	}
	for _, a := range got {
		if want := (lab.Connect{From: addr(lab.LANClientAddr), To: a}); !slices.Contains(lab.Connects(pkts), want) {
			failf("client did not connect to %v (SYNs %v)", a, lab.Connects(pkts))
		}
	}
	return fails
}

// probeReport is what the intruders found in a raw active cell.
type probeReport struct {
	ran        bool
	why        string
	target     netip.AddrPort
	rulesLines int
	tries      []string
	intruded   []string
}

func (r probeReport) verdict() []string {
	if !r.ran {
		return []string{"intruder probe did not run: " + r.why}
	}
	var fails []string
	if r.rulesLines == 0 {
		fails = append(fails, "no mapping listed while the probe ran: the probe proves nothing")
	}
	for _, in := range r.intruded {
		fails = append(fails, "intruder got in: "+in)
	}
	return fails
}

func (r probeReport) note() string {
	if !r.ran {
		return "probe: " + r.why
	}
	return fmt.Sprintf("probe of %v with %d rules-list lines: %s",
		r.target, r.rulesLines, strings.Join(r.tries, "; "))
}

// activeHook is the raw active client's hook between its PORT/EPRT and its
// RETR: it reads the router's port Q from the server's link and lets
// another host on the internet side try it. The transfer that follows is
// the positive control that the mapping admits the server: a connection
// from the server's own address here would use the mapping up (it admits
// one connection, the first), and the server's data connection would then
// be refused.
func (e *env) activeHook(ctx context.Context, wanCap *lab.Capture, r *probeReport) func() (int, error) {
	server := netip.AddrPortFrom(addr(lab.WANServerAddr), 21)
	return func() (int, error) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if told := lab.ParseActive(lab.Stream(wanCap.Packets(), netip.AddrPort{}, server)); len(told) > 0 {
				r.target = told[len(told)-1].Addr
				break
			}
			if time.Now().After(deadline) {
				r.why = "the rewritten command did not show on the server's link within 5s"
				return 0, errors.New(r.why)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if out, err := e.rulesList(ctx); err == nil {
			r.rulesLines = len(lab.SplitList(strings.ReplaceAll(strings.TrimSpace(out), "\n", ",")))
		}
		ok, err := dialFrom(ctx, e.l, e.l.Server, lab.WANIntruderAddr, r.target)
		who := fmt.Sprintf("%s -> %v", lab.WANIntruderAddr, r.target)
		if ok {
			r.intruded = append(r.intruded, who)
			r.tries = append(r.tries, who+": connected")
		} else {
			r.tries = append(r.tries, who+": "+shortErr(err))
		}
		r.ran = true
		if len(r.intruded) > 0 {
			return 0, fmt.Errorf("intruder got in: %v", r.intruded)
		}
		return 0, nil
	}
}

// dialFrom tries a TCP connection from local in namespace ns to target,
// with a short timeout: a correct router refuses or drops it.
func dialFrom(ctx context.Context, l *lab.Lab, ns, local string, target netip.AddrPort) (bool, error) {
	dctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancel()
	conn, err := l.Dial(dctx, ns, local, target.String())
	if err != nil {
		return false, err
	}
	conn.Close()
	return true, nil
}

// shortErr names a dial error by its kind.
func shortErr(err error) string {
	switch {
	case err == nil:
		return "no error"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out (dropped)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	}
	return err.Error()
}

func (e *env) rulesList(ctx context.Context) (string, error) {
	return e.l.Exec(ctx, e.l.GW, e.bin, "rules", "list", "--backend", e.v.backend, "--iptables-path", e.l.IPTables)
}

// ctMarkArg is the conntrack mark that pasvgate's nftables backend sets on
// the connections it admits (its default, DefaultCtMark), as iptables
// writes it.
const ctMarkArg = "0x10000000/0x10000000"

// ownChains are pasvgate's chains: the mapping chains and the
// interception chains. Their names are an interface with installed
// systems.
var ownChains = []string{"PASVGATE-DNAT", "PASVGATE-SNAT", "PASVGATE-FORWARD", "PASVGATE-ADMIT", "PASVGATE-INTERCEPT", "PASVGATE-TPROXY"}

// saves returns iptables-save and ip6tables-save of the router.
func (e *env) saves(ctx context.Context) (string, error) {
	v4, err := e.l.Exec(ctx, e.l.GW, e.l.IPTables+"-save")
	if err != nil {
		return "", err
	}
	v6, err := e.l.Exec(ctx, e.l.GW, e.l.IP6Tables+"-save")
	return v4 + v6, err
}

// mappingRules returns the rules of pasvgate's chains that belong to a
// mapping (their comment carries an id), or with the nftables backend the
// lines of `nft list ruleset` that hold a mapping's elements.
func (e *env) mappingRules(ctx context.Context) ([]string, error) {
	if e.v.nft() {
		out, err := e.nftRuleset(ctx)
		if err != nil {
			return nil, err
		}
		var elems []string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, `comment "id=`) {
				elems = append(elems, strings.TrimSpace(line))
			}
		}
		return elems, nil
	}
	out, err := e.saves(ctx)
	if err != nil {
		return nil, err
	}
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A PASVGATE-") && strings.Contains(line, "id=") {
			rules = append(rules, line)
		}
	}
	return rules, nil
}

// nftRuleset returns `nft list ruleset` of the router.
func (e *env) nftRuleset(ctx context.Context) (string, error) {
	return e.l.Exec(ctx, e.l.GW, "nft", "list", "ruleset")
}

// waitDrained polls, for up to 3 s, until no mapping is listed or left in
// the kernel, and returns "" or what was left.
func (e *env) waitDrained(ctx context.Context) string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		var problems []string
		if out, err := e.rulesList(ctx); err != nil {
			problems = append(problems, fmt.Sprintf("rules list: %v", err))
		} else if s := strings.TrimSpace(out); s != "" {
			problems = append(problems, "rules list prints "+lastLines(s, 5))
		}
		if rules, err := e.mappingRules(ctx); err != nil {
			problems = append(problems, fmt.Sprintf("reading the rules: %v", err))
		} else if len(rules) > 0 {
			problems = append(problems, "mapping rules left: "+strings.Join(rules, " | "))
		}
		if len(problems) == 0 {
			return ""
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return strings.Join(problems, "; ")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestCheckPassiveWire proves the passive-mode check can fail: on a
// made-up exchange with the misconfigured server it passes, and a 227
// left unfixed, a fix not logged, a fix logged for a 227 that needed none,
// or a client that ignored the 227 are reported.
func TestCheckPassiveWire(t *testing.T) {
	ap := netip.MustParseAddrPort
	server := ap(lab.WANServerAddr + ":21")
	reply := func(text string) lab.Packet {
		return lab.Packet{Src: server, Dst: ap(lab.RouterWANAddr + ":50000"), Payload: []byte(text + "\r\n")}
	}
	lan := func(text, dataTo string) []lab.Packet {
		return []lab.Packet{
			{Src: server, Dst: ap(lab.LANClientAddr + ":50000"), Payload: []byte(text + "\r\n")},
			{Src: ap(lab.LANClientAddr + ":50001"), Dst: ap(dataTo), SYN: true},
		}
	}
	wrong := cell{server: srvWrong, cmd: cmdPASV}
	right := cell{server: srvDefault, cmd: cmdPASV}
	fixed := "227 Entering Passive Mode (203,0,113,20,117,48)."
	for _, tc := range []struct {
		name   string
		c      cell
		pkts   []lab.Packet
		wan    string
		log    string
		expect string
	}{
		{"fixed", wrong, lan(fixed, "203.0.113.20:30000"), "227 Entering Passive Mode (192,0,2,99,117,48).", "227 rewritten", ""},
		{"unfixed", wrong, lan("227 Entering Passive Mode (192,0,2,99,117,48).", "192.0.2.99:30000"),
			"227 Entering Passive Mode (192,0,2,99,117,48).", "", "client got 227 192.0.2.99:30000"},
		{"fix not logged", wrong, lan(fixed, "203.0.113.20:30000"), "227 Entering Passive Mode (192,0,2,99,117,48).", "", "logged 0"},
		{"needless fix logged", right, lan(fixed, "203.0.113.20:30000"), fixed, "227 rewritten", "logged 1"},
		{"client ignored the 227", wrong, lan(fixed, "203.0.113.20:30001"), "227 Entering Passive Mode (192,0,2,99,117,48).", "227 rewritten",
			"client did not connect to 203.0.113.20:30000"},
	} {
		fails := strings.Join(checkPassiveWire(tc.c, tc.pkts, []lab.Packet{reply(tc.wan)}, server, tc.log), "; ")
		switch {
		case tc.expect == "" && fails != "":
			t.Errorf("%s: %s", tc.name, fails)
		case tc.expect != "" && !strings.Contains(fails, tc.expect):
			t.Errorf("%s: got %q, want a failure with %q", tc.name, fails, tc.expect)
		}
	}
}
