package interop

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Selections. Each flag's default comes from an environment variable, so
// that `go test ./...` (where -args would reach every package's test
// binary, and the others reject unknown flags) can be narrowed too.
var (
	flagModes    = flag.String("interop.modes", lab.EnvOr("PASVGATE_INTEROP_MODES", "direct,static,pasvgate"), "comma-separated modes to run: direct (client on the server's LAN), static (a static NAT gateway; the reference) and pasvgate [$PASVGATE_INTEROP_MODES]")
	flagServers  = flag.String("interop.servers", lab.EnvOr("PASVGATE_INTEROP_SERVERS", strings.Join(lab.Servers, ",")), "comma-separated servers to run [$PASVGATE_INTEROP_SERVERS]")
	flagClients  = flag.String("interop.clients", lab.EnvOr("PASVGATE_INTEROP_CLIENTS", "curl,lftp,ftplib,jlaffaye,raw"), "comma-separated clients to run [$PASVGATE_INTEROP_CLIENTS]")
	flagIPTables = flag.String("interop.iptables", lab.EnvOr("PASVGATE_INTEROP_IPTABLES", lab.DefaultIPTables), "iptables binary of the gateway namespace, also given to pasvgate [$PASVGATE_INTEROP_IPTABLES]")
	flagBackend  = flag.String("interop.backend", lab.EnvOr("PASVGATE_INTEROP_BACKEND", "iptables"), "pasvgate's --backend: iptables or nftables; with nftables pasvgate adds the accept for its conntrack mark to the gw's FORWARD DROP itself (--host-firewall auto), which every cell's data connections then prove [$PASVGATE_INTEROP_BACKEND]")
	flagRate     = flag.Int("interop.rate", 512<<10, "bytes/s of the client's link (shaped), so the intruder probe runs while a transfer's mapping is open")
	flagNSPrefix = flag.String("interop.ns-prefix", os.Getenv("PASVGATE_INTEROP_NS_PREFIX"), "namespace name prefix of the gateway labs instead of pglab- [$PASVGATE_INTEROP_NS_PREFIX]")
	flagPasvgate = flag.String("interop.pasvgate", os.Getenv("PASVGATE_BIN"), "pasvgate binary (default: $PASVGATE_BIN, else built from ./cmd/pasvgate)")
)

// labOptions are the lab options every pasvgate lab here starts from:
// the gw's iptables. The gw's FORWARD drops and gets no rule for the
// nftables backend: pasvgate adds its own accept (--host-firewall auto,
// the default), so every cell also proves that accept.
func labOptions(rate int, ipv6 bool) lab.Options {
	return lab.Options{IPTables: *flagIPTables, ClientLinkRate: rate, IPv6: ipv6, NSPrefix: *flagNSPrefix}
}

// backendArgs are pasvgate's arguments naming its kernel backend.
func backendArgs(l *lab.Lab) []string {
	return []string{"--backend", *flagBackend, "--iptables-path", l.IPTables}
}

// Public data port range given to pasvgate; the servers' own passive range
// is lab's default 30000-30099, so a port in a 227 tells who wrote it.
const pasvgateDataPorts = "40000-40999"

// Ways the client reaches the server.
const (
	// viaNone: no gateway; the client runs in the gateway namespace, on
	// the server's LAN, and dials the server. Proves that every server,
	// client driver and capture works, with nothing in between.
	viaNone = ""
	// viaStatic: a classic static NAT on the gateway (DNAT of port 21 and
	// of the server's whole passive range, SNAT towards the server) and a
	// server configured to announce the gateway's second public address.
	// The reference for every check of a proxied cell except the rules:
	// clients must trust the 227 address, nothing private leaks, and the
	// raw cell's intruder must get in (the static DNAT admits anyone),
	// which proves the intruder probe can see an open door.
	viaStatic = "static"
	// viaPasvgate: pasvgate on the gateway, the server announcing its
	// private address. The cells this suite exists for.
	viaPasvgate = "pasvgate"
)

// mode is where the client sits and what it dials.
type mode struct {
	name string
	via  string
}

// remote reports whether the client sits on the public side, in the
// client namespace, and dials the gateway.
func (m mode) remote() bool { return m.via != viaNone }

func (m mode) clientNS(l *lab.Lab) string {
	if m.remote() {
		return l.Client
	}
	return l.GW
}

// host is the control address the client dials.
func (m mode) host() string {
	if m.remote() {
		return lab.GWPublicAddr
	}
	return lab.ServerAddr
}

// pasvAddr is the address a correct 227 announces: through the gateway the
// second public address, deliberately not the one the client dialed, so a
// client that ignores the 227 address fails; directly, the server's own.
func (m mode) pasvAddr() netip.Addr {
	if m.remote() {
		return netip.MustParseAddr(lab.GWPublicAddr2)
	}
	return netip.MustParseAddr(lab.ServerAddr)
}

// capture is the interface whose traffic the cell inspects: the client's
// own link.
func (m mode) capture(l *lab.Lab) (ns, iface string) {
	if m.remote() {
		return l.Client, lab.ClientIface
	}
	return l.GW, lab.GWPrivateIface
}

var allModes = []mode{{"direct", viaNone}, {"static", viaStatic}, {"pasvgate", viaPasvgate}}

// tools are the programs the matrix builds; a nil-path entry has an error
// that says why its cells cannot run.
type tools struct {
	jlclient, testftpd, pasvgate          string
	jlclientErr, testftpdErr, pasvgateErr error
}

func buildTools(t *testing.T) tools {
	dir := t.TempDir()
	var tl tools
	var wg sync.WaitGroup
	wg.Go(func() { tl.jlclient, tl.jlclientErr = lab.BuildGo(t.Context(), dir, "./test/interop/cmd/jlclient") })
	wg.Go(func() { tl.testftpd, tl.testftpdErr = lab.BuildGo(t.Context(), dir, "./test/ftpd/cmd/testftpd") })
	wg.Go(func() { tl.pasvgate, tl.pasvgateErr = pasvgateBin(t.Context(), dir) })
	wg.Wait()
	return tl
}

// pasvgateBin returns -interop.pasvgate, or builds ./cmd/pasvgate into dir.
func pasvgateBin(ctx context.Context, dir string) (string, error) {
	if *flagPasvgate != "" {
		if _, err := os.Stat(*flagPasvgate); err != nil {
			return "", err
		}
		return *flagPasvgate, nil
	}
	return lab.BuildGo(ctx, dir, "./cmd/pasvgate")
}

func (tl tools) client(name string) (lab.Client, error) {
	switch name {
	case "curl":
		return lab.Curl{}, nil
	case "lftp":
		return lab.Lftp{}, nil
	case "ftplib":
		return lab.Ftplib{}, nil
	case "jlaffaye":
		if tl.jlclientErr != nil {
			return nil, tl.jlclientErr
		}
		return lab.JLFTP{Bin: tl.jlclient}, nil
	}
	return nil, fmt.Errorf("unknown client %q", name)
}

// TestMatrix runs every selected cell of servers x clients x {PASV, EPSV} x
// {get, put, list} in every selected mode and prints a table of results.
// One lab (and one server) per server kind; labs run in parallel up to
// -test.parallel, cells within a lab one after another.
func TestMatrix(t *testing.T) {
	lab.RequireRoot(t)
	start := time.Now()
	modes := selectModes(t)
	servers := lab.SplitList(*flagServers)
	clients := lab.SplitList(*flagClients)
	tl := buildTools(t)
	rep := &report{}
	t.Run("servers", func(t *testing.T) {
		for _, kind := range servers {
			t.Run(kind, func(t *testing.T) {
				t.Parallel()
				runServer(t, kind, modes, clients, tl, rep)
			})
		}
	})
	rep.print(os.Stdout, modes, servers, clients, time.Since(start))
}

func selectModes(t *testing.T) []mode {
	var out []mode
	for _, name := range lab.SplitList(*flagModes) {
		i := slices.IndexFunc(allModes, func(m mode) bool { return m.name == name })
		if i < 0 {
			t.Fatalf("unknown mode %q", name)
		}
		out = append(out, allModes[i])
	}
	return out
}

// cell names one run of the matrix.
type cell struct {
	mode   mode
	server string
	client string
	epsv   bool
	op     lab.Op
}

func (c cell) dir() string {
	if c.epsv {
		return "epsv"
	}
	return "pasv"
}

func (c cell) String() string {
	return fmt.Sprintf("%s/%s/%s/%s/%s", c.mode.name, c.server, c.client, c.dir(), c.op)
}

// opsFor lists the operations a client runs: the raw driver only downloads.
func opsFor(client string) []lab.Op {
	if client == "raw" {
		return []lab.Op{lab.Get}
	}
	return lab.Ops
}

// env is one server kind's lab, shared by its cells, and the server and
// gateway set-up of the mode being run.
type env struct {
	l   *lab.Lab
	srv *lab.Server
	pg  *pasvgate // only in pasvgate mode
	tl  tools
}

func runServer(t *testing.T, kind string, modes []mode, clients []string, tl tools, rep *report) {
	all := func(m mode, status, why string) {
		for _, cl := range clients {
			for _, epsv := range []bool{false, true} {
				for _, op := range opsFor(cl) {
					rep.set(cell{m, kind, cl, epsv, op}, status, why)
				}
			}
		}
	}
	if kind == lab.BuiltIn && tl.testftpdErr != nil {
		for _, m := range modes {
			all(m, "skip", oneLine(tl.testftpdErr.Error()))
		}
		t.Skipf("built-in server: %v", tl.testftpdErr)
	}
	// The client's link is slow, so that a 1 MiB transfer through the
	// gateway lasts about two seconds: time for the intruder probe. The
	// direct mode does not cross that link and stays fast.
	l := lab.New(t, labOptions(*flagRate, false))
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if m.via == viaPasvgate && tl.pasvgateErr != nil {
				all(m, "skip", "pasvgate binary: "+oneLine(tl.pasvgateErr.Error()))
				t.Skipf("pasvgate binary: %v", tl.pasvgateErr)
			}
			// A server per mode: the static mode configures the server to
			// announce the public address.
			opt := lab.ServerOptions{Binary: tl.testftpd}
			if m.via == viaStatic {
				opt.PublicAddr = lab.GWPublicAddr2
			}
			srv, err := l.StartServer(t.Context(), kind, opt)
			if err != nil {
				if errors.Is(err, lab.ErrMissing) {
					all(m, "skip", oneLine(err.Error()))
					t.Skip(err)
				}
				all(m, "FAIL", "server did not start: "+oneLine(err.Error()))
				t.Fatal(err)
			}
			defer srv.Proc.Stop()
			e := &env{l: l, srv: srv, tl: tl}
			switch m.via {
			case viaStatic:
				undo, err := staticNAT(t.Context(), l)
				if err != nil {
					all(m, "FAIL", "static NAT: "+oneLine(err.Error()))
					t.Fatal(err)
				}
				defer undo()
			case viaPasvgate:
				pg, err := startPasvgate(t, l, tl.pasvgate)
				if err != nil {
					all(m, "FAIL", "pasvgate did not start: "+oneLine(err.Error()))
					t.Fatal(err)
				}
				defer pg.stop(t)
				e.pg = pg
			}
			for _, cl := range clients {
				for _, epsv := range []bool{false, true} {
					for _, op := range opsFor(cl) {
						c := cell{m, kind, cl, epsv, op}
						t.Run(cl+"/"+c.dir()+"/"+string(op), func(t *testing.T) {
							e.run(t, c, rep)
						})
					}
				}
			}
		})
	}
}

// staticNAT programs the gateway as a plain static NAT in front of the
// server: port 21 and the server's passive range, on both public addresses
// (EPSV clients use the control address, PASV ones the announced one),
// forwarded to the server from anyone, and SNAT to the gateway's private
// address so servers that check the data connection's source accept it.
// undo deletes exactly these rules.
func staticNAT(ctx context.Context, l *lab.Lab) (undo func(), err error) {
	var rules [][]string
	for _, pub := range []string{lab.GWPublicAddr, lab.GWPublicAddr2} {
		rules = append(rules, []string{"-t", "nat", "PREROUTING", "-d", pub, "-p", "tcp", "-m", "multiport",
			"--dports", "21,30000:30099", "-j", "DNAT", "--to-destination", lab.ServerAddr})
	}
	rules = append(rules,
		[]string{"-t", "nat", "POSTROUTING", "-o", lab.GWPrivateIface, "-d", lab.ServerAddr, "-j", "SNAT", "--to-source", lab.GWPrivateAddr},
		[]string{"-t", "filter", "FORWARD", "-d", lab.ServerAddr, "-p", "tcp", "-m", "multiport", "--dports", "21,30000:30099", "-j", "ACCEPT"},
		[]string{"-t", "filter", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
	)
	mod := func(op string, r []string) error {
		args := append([]string{"-w", "5", r[0], r[1], op, r[2]}, r[3:]...)
		_, err := l.Exec(ctx, l.GW, l.IPTables, args...)
		return err
	}
	undo = func() {
		for i := len(rules) - 1; i >= 0; i-- {
			_ = mod("-D", rules[i])
		}
	}
	for _, r := range rules {
		if err := mod("-A", r); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, nil
}

// run executes one cell and records its outcome.
func (e *env) run(t *testing.T, c cell, rep *report) {
	var (
		client lab.Client
		err    error
	)
	if c.client != "raw" {
		if client, err = e.tl.client(c.client); err == nil {
			err = client.Available()
		}
		if err != nil {
			rep.set(c, "skip", oneLine(err.Error()))
			t.Skip(err)
		}
	}
	fails, notes := e.check(t, c, client)
	for _, n := range notes {
		t.Log(n)
	}
	if len(fails) > 0 {
		rep.set(c, "FAIL", strings.Join(fails, "; "))
		t.Error(strings.Join(fails, "\n"))
		if e.pg != nil {
			t.Logf("pasvgate log (tail):\n%s", lastLines(e.pg.proc.Output(), 15))
		}
		t.Logf("server log (tail):\n%s", lastLines(e.srv.Proc.Output(), 15))
		return
	}
	rep.set(c, "ok", strings.Join(notes, "; "))
}

// check runs the cell and returns what went wrong, and notes worth a log.
func (e *env) check(t *testing.T, c cell, client lab.Client) (fails, notes []string) {
	ctx := t.Context()
	l := e.l
	m := c.mode
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	ctl := netip.AddrPortFrom(netip.MustParseAddr(m.host()), 21)

	capNS, capIface := m.capture(l)
	capture, err := l.Capture(capNS, capIface)
	if err != nil {
		return []string{err.Error()}, nil
	}

	base := strings.ReplaceAll(c.String(), "/", "-")
	tr := lab.Transfer{
		NS:       m.clientNS(l),
		Host:     m.host(),
		User:     e.srv.User,
		Password: e.srv.Password,
		EPSV:     c.epsv,
		Op:       c.op,
		Timeout:  60 * time.Second,
	}
	var putSHA string
	switch c.op {
	case lab.Get:
		tr.Remote = lab.DataFile
		tr.Local = filepath.Join(l.Dir, base+".out")
	case lab.Put:
		tr.Remote = lab.UploadDir + "/" + base + ".bin"
		tr.Local = filepath.Join(l.Dir, base+".src")
		if putSHA, err = lab.WriteRandomFile(tr.Local, lab.DataSize); err != nil {
			return []string{err.Error()}, nil
		}
	}
	// Transfers through the gateway cross the lab's slow client link, so
	// the intruder probe runs while the mapping is still installed.
	probing := m.remote() && c.op != lab.List && c.client != "raw"

	var (
		res       lab.Result
		runErr    error
		clientEnd = make(chan struct{})
		rawSHA    string
		probe     probeResult
	)
	go func() {
		defer close(clientEnd)
		if c.client == "raw" {
			rawSHA, runErr = rawRetr(ctx, l, tr.NS, "", tr.Host, tr.User, tr.Password, c.epsv, e.rawBetween(ctx, c, &probe))
			return
		}
		res, runErr = client.Run(ctx, l, tr)
	}()
	if probing {
		probe = e.probeDuringTransfer(ctx, c, capture, ctl, clientEnd)
	}
	<-clientEnd
	pkts, capErr := capture.Stop()

	// 1. The operation itself, judged by what the user gets.
	if runErr != nil {
		failf("client: %v", runErr)
	} else {
		if bad := e.srv.CheckOutcome(c.op, res, tr.Local, rawSHA, base+".bin", putSHA); bad != "" {
			failf("%s", bad)
		}
	}
	_ = os.Remove(tr.Local)

	// 2. The mode the cell is about was used, and only it: some clients
	// fall back from EPSV to PASV by themselves.
	cmds := lab.Stream(pkts, netip.AddrPort{}, ctl)
	replies := lab.Stream(pkts, ctl, netip.AddrPort{})
	want, other := "PASV", "EPSV"
	if c.epsv {
		want, other = other, want
	}
	if !sentCommand(cmds, want) {
		failf("client never sent %s", want)
	}
	if sentCommand(cmds, other) {
		failf("client also sent %s", other)
	}

	// 3. What was announced, and that the client connected exactly there:
	// the check that the client trusted the 227 address.
	var announced []netip.AddrPort
	if c.epsv {
		for _, p := range parse229s(replies) {
			announced = append(announced, netip.AddrPortFrom(ctl.Addr(), p))
		}
	} else {
		announced = parse227s(replies)
		for _, a := range announced {
			if a.Addr() != m.pasvAddr() {
				failf("227 announced %v, want address %v", a, m.pasvAddr())
			}
		}
	}
	if len(announced) == 0 {
		failf("no %s reply in the control channel", map[bool]string{false: "227", true: "229"}[c.epsv])
	}
	syns := lab.SYNs(pkts)
	for _, a := range announced {
		if !slices.Contains(syns, a) {
			failf("client did not connect to the announced %v (SYNs to %v)", a, syns)
		}
	}

	// 4. The private address never reaches the client. Directly, a PASV
	// cell must see it: that proves the capture and Leaks work.
	leaks := lab.Leaks(lab.Payloads(pkts), lab.PrivatePrefix)
	switch {
	case m.remote() && len(leaks) > 0:
		failf("private address reached the client: %s", strings.Join(leaks, ", "))
	case m.remote() && capErr != nil:
		failf("capture incomplete, leak check inconclusive: %v", capErr)
	case !m.remote() && !c.epsv && len(leaks) == 0:
		failf("direct PASV: capture shows no %s (capture or Leaks broken; %v)", lab.PrivatePrefix, capErr)
	case capErr != nil:
		notes = append(notes, fmt.Sprintf("capture: %v", capErr))
	}

	// 5. The intruder. Through pasvgate it must never get in, and the
	// mapping must be gone once the transfer is over. Behind the static
	// NAT the raw cell's intruder must get in (the positive control of the
	// probe); during a real client's transfer the server has stopped
	// listening, so there the result is only noted.
	if m.remote() && (c.client == "raw" || c.op != lab.List) {
		switch {
		case !probe.done:
			failf("intruder probe did not run: %s", probe.why)
		case m.via == viaStatic && c.client == "raw" && !probe.connected:
			failf("static NAT: intruder could not connect to %v (%v): the probe cannot see an open door", probe.target, probe.dialErr)
		case m.via == viaPasvgate && probe.connected:
			failf("intruder %s connected to %v", lab.IntruderAddr, probe.target)
		case probe.connected:
			notes = append(notes, fmt.Sprintf("intruder connected to %v", probe.target))
		case !probe.dialed:
			notes = append(notes, fmt.Sprintf("passive reply for %v seen during the transfer; intruder not dialed behind the static NAT", probe.target))
		default:
			notes = append(notes, fmt.Sprintf("intruder refused at %v (%v); rules during transfer: %d lines",
				probe.target, probe.dialErr, probe.rulesLines))
		}
	}
	if e.pg != nil {
		if left := e.pg.waitDrained(ctx); left != "" {
			failf("after the transfer: %s", left)
		}
	}
	if runErr != nil && res.Log != "" {
		notes = append(notes, "client log: "+lastLines(res.Log, 10))
	}
	return fails, notes
}

// probeResult is what an intruder probe found.
type probeResult struct {
	done       bool   // the probe ran while the transfer was in progress
	why        string // why not, if !done
	target     netip.AddrPort
	dialed     bool // false behind the static NAT, see probeDuringTransfer
	connected  bool
	dialErr    error
	rulesLines int // lines of `pasvgate rules list` while the mapping was open
}

// probeDuringTransfer waits for the 227/229 to show up in the live capture,
// then tries to connect to the announced address from the intruder address
// while the (slowed) transfer runs. Most servers stop listening after the
// first data connection, so this mostly checks the gateway (no DNAT for
// other sources, no open FORWARD); the raw cells try before the client.
//
// Behind the static NAT the intruder does not dial: the door is open by
// design (the raw cells prove the probe sees that), and a server that keeps
// listening (ftpserverlib does) would let the intruder break the transfer.
func (e *env) probeDuringTransfer(ctx context.Context, c cell, capture *lab.Capture, ctl netip.AddrPort, clientEnd <-chan struct{}) probeResult {
	var target netip.AddrPort
	deadline := time.After(20 * time.Second)
wait:
	for {
		replies := lab.Stream(capture.Packets(), ctl, netip.AddrPort{})
		if c.epsv {
			if p := parse229s(replies); len(p) > 0 {
				target = netip.AddrPortFrom(ctl.Addr(), p[len(p)-1])
				break wait
			}
		} else if a := parse227s(replies); len(a) > 0 {
			target = a[len(a)-1]
			break wait
		}
		select {
		case <-clientEnd:
			return probeResult{why: "the client ended before a passive reply was captured"}
		case <-deadline:
			return probeResult{why: "no passive reply captured within 20s"}
		case <-time.After(20 * time.Millisecond):
		}
	}
	r := probeResult{target: target}
	r.rulesLines = e.countRules(ctx)
	if c.mode.via != viaStatic {
		r.dialed = true
		r.connected, r.dialErr = e.intruderDial(ctx, target)
	}
	select {
	case <-clientEnd:
		r.why = "the transfer ended before the probe finished (lower -interop.rate)"
	default:
		r.done = true
	}
	return r
}

// intruderDial tries a TCP connection from the intruder address, which
// shares the client's link, to target; a short timeout, since a correct
// gateway drops or refuses it.
func (e *env) intruderDial(ctx context.Context, target netip.AddrPort) (bool, error) {
	dctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancel()
	conn, err := e.l.Dial(dctx, e.l.Client, lab.IntruderAddr, target.String())
	if err != nil {
		return false, err
	}
	conn.Close()
	return true, nil
}

// rawBetween is the raw client's hook between the passive reply and the
// data connection: through a gateway, the intruder tries first, while the
// server still listens behind the mapping. Through pasvgate that must fail
// and the client then connects itself. Behind the static NAT it succeeds,
// and the intruder's connection is handed over as the data connection: the
// download then shows what the intruder would have got. Directly there is
// no intruder; the client connects as usual.
func (e *env) rawBetween(ctx context.Context, c cell, probe *probeResult) func(netip.AddrPort) (net.Conn, error) {
	return func(target netip.AddrPort) (net.Conn, error) {
		if !c.mode.remote() {
			return nil, nil
		}
		probe.target = target
		probe.rulesLines = e.countRules(ctx)
		dctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
		defer cancel()
		conn, err := e.l.Dial(dctx, e.l.Client, lab.IntruderAddr, target.String())
		probe.dialed, probe.connected, probe.dialErr, probe.done = true, err == nil, err, true
		if err == nil && c.mode.via == viaPasvgate {
			conn.Close()
			return nil, fmt.Errorf("intruder connected to %v", target)
		}
		return conn, nil
	}
}

// countRules returns how many lines `pasvgate rules list` prints now (0
// when pasvgate is not in use).
func (e *env) countRules(ctx context.Context) int {
	if e.pg == nil {
		return 0
	}
	out, err := e.pg.rulesList(ctx)
	if err != nil {
		return 0
	}
	return len(lab.SplitList(strings.ReplaceAll(strings.TrimSpace(out), "\n", ",")))
}

// pasvgate is the proxy under test, running in the gateway namespace.
type pasvgate struct {
	l    *lab.Lab
	bin  string
	proc *lab.Proc
}

func startPasvgate(t *testing.T, l *lab.Lab, bin string) (*pasvgate, error) {
	p, err := l.Start(l.GW, bin, "run",
		"--listen", lab.GWPublicAddr+":21",
		"--upstream", lab.ServerAddr+":21",
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", pasvgateDataPorts,
		"--backend", *flagBackend,
		"--iptables-path", l.IPTables,
		"--log-format", "json")
	if err != nil {
		return nil, err
	}
	if err := l.WaitFTP(t.Context(), p, l.Client, lab.GWPublicAddr+":21"); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%w\n%s", err, lastLines(p.Output(), 20))
	}
	return &pasvgate{l: l, bin: bin, proc: p}, nil
}

func (p *pasvgate) rulesList(ctx context.Context) (string, error) {
	return p.l.Exec(ctx, p.l.GW, p.bin, append([]string{"rules", "list"}, backendArgs(p.l)...)...)
}

// pasvgateChains are pasvgate's own chains (DESIGN.md: every rule lives
// only there). Their names are an interface with installed systems.
var pasvgateChains = []string{"PASVGATE-DNAT", "PASVGATE-FORWARD", "PASVGATE-SNAT", "PASVGATE-ADMIT"}

// mappingRules returns the rules in pasvgate's chains that belong to a
// mapping: those whose comment carries a mapping id, or that name a port or
// a NAT target. Static rules (an ESTABLISHED accept, the admit mark) do not
// count. In a lab with IPv6 the ip6tables rules are read too.
func (p *pasvgate) mappingRules(ctx context.Context) ([]string, error) {
	if *flagBackend == "nftables" {
		return p.mapElements(ctx)
	}
	out, err := p.l.Exec(ctx, p.l.GW, p.l.IPTables+"-save")
	if err != nil {
		return nil, err
	}
	if p.l.IPv6 {
		out6, err := p.l.Exec(ctx, p.l.GW, p.l.IP6Tables+"-save")
		if err != nil {
			return nil, err
		}
		out += out6
	}
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		for _, ch := range pasvgateChains {
			if !strings.HasPrefix(line, "-A "+ch+" ") {
				continue
			}
			for _, mark := range []string{"id=", "--dport", "--to-destination", "--to-source", "-j DNAT", "-j SNAT"} {
				if strings.Contains(line, mark) {
					rules = append(rules, line)
					break
				}
			}
		}
	}
	return rules, nil
}

// elementIDs matches the mapping id in an element's comment.
var elementIDs = regexp.MustCompile(`id=[^ "]+`)

// mapElements is mappingRules for the nftables backend: the elements of
// its maps, each of which carries a mapping id in its comment.
func (p *pasvgate) mapElements(ctx context.Context) ([]string, error) {
	fams := []string{"ip"}
	if p.l.IPv6 {
		fams = append(fams, "ip6")
	}
	var els []string
	for _, f := range fams {
		out, err := p.l.Exec(ctx, p.l.GW, "nft", "list", "table", f, "pasvgate")
		if err != nil {
			// No table: nothing of pasvgate's.
			if strings.Contains(err.Error(), "No such file or directory") {
				continue
			}
			return nil, err
		}
		// nft may print several elements on a line.
		els = append(els, elementIDs.FindAllString(out, -1)...)
	}
	return els, nil
}

// waitDrained polls, for up to 3 s (removal is off the critical path, after
// the final reply), until `rules list` prints nothing and no mapping rule
// is left. It returns "" or what was left.
func (p *pasvgate) waitDrained(ctx context.Context) string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		var problems []string
		out, err := p.rulesList(ctx)
		if err != nil {
			problems = append(problems, fmt.Sprintf("rules list: %v", err))
		} else if s := strings.TrimSpace(out); s != "" {
			problems = append(problems, "rules list prints "+lastLines(s, 5))
		}
		rules, err := p.mappingRules(ctx)
		if err != nil {
			problems = append(problems, fmt.Sprintf("iptables-save: %v", err))
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

// stop ends pasvgate and logs what it leaves in the kernel, if anything.
func (p *pasvgate) stop(t *testing.T) {
	p.proc.Stop()
	if rules, err := p.mappingRules(context.Background()); err == nil && len(rules) > 0 {
		t.Logf("pasvgate left mapping rules after stopping: %v", rules)
	}
}

// report collects cell outcomes from parallel labs.
type report struct {
	mu    sync.Mutex
	cells map[string]outcome
}

type outcome struct{ status, why string }

func (r *report) set(c cell, status, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cells == nil {
		r.cells = map[string]outcome{}
	}
	r.cells[c.String()] = outcome{status, why}
}

// print writes the matrix as a table, then why cells did not pass, each
// reason once with the cells it applies to.
func (r *report) print(w io.Writer, modes []mode, servers, clients []string, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "\ninterop matrix (%s, %v)\n", *flagIPTables, took.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tserver\tclient\tdir\tget\tput\tlist\t")
	var reasons []string // "status: why", in first-seen order
	cellsOf := map[string][]string{}
	counts := map[string]int{}
	for _, m := range modes {
		for _, s := range servers {
			for _, cl := range clients {
				for _, epsv := range []bool{false, true} {
					c := cell{m, s, cl, epsv, ""}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t", m.name, s, cl, c.dir())
					for _, op := range lab.Ops {
						c.op = op
						o, ok := r.cells[c.String()]
						switch {
						case !slices.Contains(opsFor(cl), op):
							o.status = "-"
						case !ok:
							o.status = "n/a"
						}
						fmt.Fprintf(tw, "%s\t", o.status)
						if o.status != "-" {
							counts[o.status]++
						}
						if o.status == "FAIL" || o.status == "skip" {
							key := o.status + ": " + o.why
							if cellsOf[key] == nil {
								reasons = append(reasons, key)
							}
							cellsOf[key] = append(cellsOf[key], c.String())
						}
					}
					fmt.Fprintln(tw)
				}
			}
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "cells: %d ok, %d FAIL, %d skip, %d n/a\n", counts["ok"], counts["FAIL"], counts["skip"], counts["n/a"])
	for _, key := range reasons {
		cs := cellsOf[key]
		which := strings.Join(cs, " ")
		if len(cs) > 3 {
			which = fmt.Sprintf("%s and %d more", strings.Join(cs[:2], " "), len(cs)-2)
		}
		fmt.Fprintf(w, "  %s\n      in %s\n", key, which)
	}
}

// oneLine squeezes a (possibly multi-line) error into one line for the
// report, keeping it short.
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
