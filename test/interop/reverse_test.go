package interop

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The reverse-mode cell runner shared by the active-mode suite
// (active_test.go) and the IPv6 suite (ipv6_test.go): one client run
// through pasvgate in the gateway lab, with a capture on each side of the
// gateway, judged by what the user gets, what crossed each link, where
// each data connection went, and what the kernel holds afterwards.

var (
	flagActiveServers = flag.String("interop.active-servers", lab.EnvOr("PASVGATE_INTEROP_ACTIVE_SERVERS", lab.Vsftpd),
		"comma-separated servers of the active-mode and IPv6 suites [$PASVGATE_INTEROP_ACTIVE_SERVERS]")
	flagActiveClients = flag.String("interop.active-clients", lab.EnvOr("PASVGATE_INTEROP_ACTIVE_CLIENTS", "curl,lftp,ftplib,raw"),
		"comma-separated clients of the active-mode and IPv6 suites [$PASVGATE_INTEROP_ACTIVE_CLIENTS]")
	flagActiveRate = flag.Int("interop.active-rate", 1<<20,
		"bytes/s of the client's link in the active-mode and IPv6 suites, so that the intruder probe runs while a mapping is open")
)

// requirePasvgateMode skips a suite made only of pasvgate cells when the
// selected modes leave pasvgate out.
func requirePasvgateMode(t *testing.T) {
	t.Helper()
	if !slices.Contains(lab.SplitList(*flagModes), viaPasvgate) {
		t.Skipf("mode %s not selected (-interop.modes)", viaPasvgate)
	}
}

// side holds the addresses of one family in the gateway lab, so that one
// runner serves IPv4 and IPv6 cells.
type side struct {
	name string
	// client and intruder are on the client's network; the client dials
	// gwPublic. snat is where the client sees an active-mode data
	// connection come from: the gateway's public address (--public-addr,
	// for IPv4; IPv6 has none, so the address the client dialed).
	client, intruder, gwPublic, snat string
	// gwPrivate, server and neighbor are on the server's network.
	gwPrivate, server, neighbor string
	// private must never reach the client's link. What must never reach
	// the server's link is the client's address: the gateway's own public
	// address may (lftp sends it in an RFC 7151 HOST command, which
	// pasvgate rightly passes on).
	private []string
}

var (
	side4 = side{"IPv4", lab.ClientAddr, lab.IntruderAddr, lab.GWPublicAddr, lab.GWPublicAddr2,
		lab.GWPrivateAddr, lab.ServerAddr, lab.NeighborAddr,
		[]string{lab.PrivatePrefix}}
	side6 = side{"IPv6", lab.ClientAddr6, lab.IntruderAddr6, lab.GWPublicAddr6, lab.GWPublicAddr6,
		lab.GWPrivateAddr6, lab.ServerAddr6, lab.NeighborAddr6,
		[]string{lab.PrivatePrefix6, lab.PrivatePrefix}}
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// Data-connection commands, the columns of a cell's mode.
const (
	cmdPASV = "PASV"
	cmdEPSV = "EPSV"
	cmdPORT = "PORT"
	cmdEPRT = "EPRT"
)

var dataCommands = []string{cmdPASV, cmdEPSV, cmdPORT, cmdEPRT}

// rcell is one reverse-mode cell.
type rcell struct {
	side   side
	server string
	client string
	cmd    string
	op     lab.Op
	// ignore: the client ignores the 227's address and connects to the
	// one it dialed (lab.Transfer.IgnorePASVAddr).
	ignore bool
}

func (c rcell) active() bool   { return c.cmd == cmdPORT || c.cmd == cmdEPRT }
func (c rcell) extended() bool { return c.cmd == cmdEPSV || c.cmd == cmdEPRT }
func (c rcell) row() []string  { return []string{c.side.name, c.server, c.clientName(), c.cmd} }
func (c rcell) String() string {
	return fmt.Sprintf("%s/%s/%s/%s/%s", c.side.name, c.server, c.clientName(), c.cmd, c.op)
}

// clientName is the client as reports name it.
func (c rcell) clientName() string {
	if c.ignore {
		return c.client + "-ignoring-227-addr"
	}
	return c.client
}

// revEnv is one server's gateway lab with pasvgate in front of it.
type revEnv struct {
	l      *lab.Lab
	srv    *lab.Server
	pg     *pasvgate
	probe  bool // the client's link is slow enough to probe during a transfer
	port20 bool // the server makes active data connections from port 20
}

// startPasvgateArgs starts pasvgate in the gw with args after "run" and
// waits for its greeting on every address of waitOn from the client.
func startPasvgateArgs(t *testing.T, l *lab.Lab, bin string, waitOn []string, args ...string) (*pasvgate, error) {
	p, err := l.Start(l.GW, bin, append([]string{"run"}, args...)...)
	if err != nil {
		return nil, err
	}
	for _, a := range waitOn {
		if err := l.WaitFTP(t.Context(), p, l.Client, a); err != nil {
			p.Stop()
			return nil, fmt.Errorf("%w\n%s", err, lastLines(p.Output(), 20))
		}
	}
	return &pasvgate{l: l, bin: bin, proc: p}, nil
}

// runCell runs c, records it in g, and fails t if it failed.
func (e *revEnv) runCell(t *testing.T, g *lab.Grid, c rcell) {
	start := time.Now()
	client, err := lab.ClientByName(c.client)
	if err != nil {
		g.Set(c.row(), string(c.op), lab.StatusSkip, oneLine(err.Error()), 0)
		t.Skip(err)
	}
	fails, notes, skip := e.check(t, c, client)
	setCell(t, g, c.row(), string(c.op), time.Since(start), fails, notes, skip, e.pg, e.srv)
}

// setCell logs a cell's notes and records its outcome in g and on t: a
// skip with its reason, a failure with what went wrong and the tails of
// pasvgate's (if pg is not nil) and the server's logs, or a pass.
func setCell(t *testing.T, g *lab.Grid, row []string, col string, took time.Duration, fails, notes []string, skip string, pg *pasvgate, srv *lab.Server) {
	t.Helper()
	for _, n := range notes {
		t.Log(n)
	}
	switch {
	case skip != "":
		g.Set(row, col, lab.StatusSkip, skip, 0)
		t.Skip(skip)
	case len(fails) > 0:
		g.Set(row, col, lab.StatusFail, strings.Join(fails, "; "), took)
		t.Error(strings.Join(fails, "\n"))
		if pg != nil {
			t.Logf("pasvgate log (tail):\n%s", lastLines(pg.proc.Output(), 15))
		}
		t.Logf("server log (tail):\n%s", lastLines(srv.Proc.Output(), 15))
	default:
		g.Set(row, col, lab.StatusOK, strings.Join(notes, "; "), took)
	}
}

// check runs the cell and returns what went wrong, notes worth a log, and
// a reason to skip when the client cannot do what the cell asks.
func (e *revEnv) check(t *testing.T, c rcell, client lab.Client) (fails, notes []string, skip string) {
	ctx := t.Context()
	l := e.l
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	ctl := netip.AddrPortFrom(addr(c.side.gwPublic), 21)
	upstream := netip.AddrPortFrom(addr(c.side.server), 21)

	cliCap, err := l.Capture(l.Client, lab.ClientIface)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}
	srvCap, err := l.Capture(l.GW, lab.GWPrivateIface)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}

	base := strings.ReplaceAll(c.String(), "/", "-")
	tr := lab.Transfer{NS: l.Client, Host: c.side.gwPublic, User: e.srv.User, Password: e.srv.Password,
		EPSV: c.extended(), Active: c.active(), IgnorePASVAddr: c.ignore, Op: c.op, Timeout: 60 * time.Second}
	putSHA, err := setFiles(&tr, l.Dir, base)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}

	var (
		res     lab.Result
		runErr  error
		rawSHA  string
		peers   []netip.AddrPort // raw active: who connected to the client's data port
		pr      probeReport
		ended   = make(chan struct{})
		probing = client != nil && c.op != lab.List && e.probe
	)
	go func() {
		defer close(ended)
		switch {
		case client != nil:
			res, runErr = client.Run(ctx, l, tr)
		case c.active():
			rawSHA, peers, runErr = l.RawActiveRetr(ctx, lab.RawSession{NS: l.Client, Local: c.side.client,
				Host: c.side.gwPublic, User: e.srv.User, Password: e.srv.Password}, c.cmd == cmdEPRT, e.activeHook(ctx, c, srvCap, &pr))
		default:
			rawSHA, runErr = rawRetr(ctx, l, l.Client, c.side.client, c.side.gwPublic,
				e.srv.User, e.srv.Password, c.extended(), e.passiveHook(ctx, c, &pr))
		}
	}()
	if probing {
		pr = e.probeDuring(ctx, c, cliCap, srvCap, ended)
	}
	<-ended
	pkts, capErr := cliCap.Stop()
	spkts, scapErr := srvCap.Stop()
	defer os.Remove(tr.Local)
	if errors.Is(runErr, lab.ErrUnsupported) {
		return nil, nil, oneLine(runErr.Error())
	}

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

	// 2. The client used the cell's command and no other.
	cmds := lab.Stream(pkts, netip.AddrPort{}, ctl)
	for _, v := range dataCommands {
		if sent := sentCommand(cmds, v); sent != (v == c.cmd) {
			failf("client sent %s: %v, want %v", v, sent, v == c.cmd)
		}
	}

	// 3. Where the data connection went.
	if c.active() {
		fails = append(fails, checkActiveWire(c, pkts, spkts, ctl, upstream)...)
		if e.port20 && !slices.ContainsFunc(spkts, func(p lab.Packet) bool {
			return p.SYN && !p.ACK && p.Src == netip.AddrPortFrom(addr(c.side.server), 20)
		}) {
			failf("the server made no connection from port 20 (connect_from_port_20 not in effect?)")
		}
	} else {
		fails = append(fails, checkPassiveWire(c, pkts, ctl)...)
	}

	// 4. Nothing of one side's addresses crosses to the other.
	for _, p := range c.side.private {
		if leaks := lab.Leaks(lab.Payloads(pkts), p); len(leaks) > 0 {
			failf("%s reached the client: %s", p, strings.Join(leaks, ", "))
		}
	}
	if leaks := lab.Leaks(lab.Payloads(spkts), c.side.client); len(leaks) > 0 {
		failf("the client's %s reached the server: %s", c.side.client, strings.Join(leaks, ", "))
	}
	if err := errors.Join(capErr, scapErr); err != nil {
		failf("capture incomplete, leak checks inconclusive: %v", err)
	}

	// 5. The intruders, where they ran.
	if probing || client == nil {
		fails = append(fails, pr.verdict(c)...)
		notes = append(notes, pr.note())
	}
	if c.active() && client == nil {
		for _, p := range peers {
			if p.Addr() != addr(c.side.snat) {
				failf("a data connection reached the client from %v, want the gateway's %s", p, c.side.snat)
			}
		}
	}

	// 6. The kernel is clean once the transfer is over.
	if left := e.pg.waitDrained(ctx); left != "" {
		failf("after the transfer: %s", left)
	}
	return fails, notes, ""
}

// setFiles fills in tr's Remote and Local for its Op, with names made of
// base in dir (the upload's remote name is base+".bin" in the upload
// directory), and for Put writes the random file to upload. It returns
// the upload's SHA-256.
func setFiles(tr *lab.Transfer, dir, base string) (putSHA string, err error) {
	switch tr.Op {
	case lab.Get:
		tr.Remote, tr.Local = lab.DataFile, filepath.Join(dir, base+".out")
	case lab.Put:
		tr.Remote, tr.Local = lab.UploadDir+"/"+base+".bin", filepath.Join(dir, base+".src")
		return lab.WriteRandomFile(tr.Local, lab.DataSize)
	}
	return "", nil
}

// checkActiveWire checks an active-mode cell's control channels and data
// connection on both links: the client offered its own address; the
// server was told the gateway's private address and a port Q of pasvgate's
// data range instead, in the same command; the server connected to
// exactly that; and the client got a connection from the gateway's
// public side to exactly the port it offered.
func checkActiveWire(c rcell, pkts, spkts []lab.Packet, ctl, upstream netip.AddrPort) []string {
	var fails []string
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	offered := lab.ParseActive(lab.Stream(pkts, netip.AddrPort{}, ctl))
	told := lab.ParseActive(lab.Stream(spkts, netip.AddrPort{}, upstream))
	if len(offered) == 0 {
		failf("no %s from the client in the capture", c.cmd)
		return fails
	}
	if len(told) != len(offered) {
		failf("client sent %d PORT/EPRT, server got %d: %v", len(offered), len(told), told)
	}
	for _, o := range offered {
		if o.Addr.Addr() != addr(c.side.client) {
			failf("client offered %v, not its own address (client driver broken?)", o.Addr)
		}
	}
	low, high := dataPortRange()
	for _, s := range told {
		if s.Verb != c.cmd {
			failf("server got %s for the client's %s", s.Verb, c.cmd)
		}
		if s.Addr.Addr() != addr(c.side.gwPrivate) || s.Addr.Port() < low || s.Addr.Port() > high {
			failf("server was told %v, want %s and a port in %s", s.Addr, c.side.gwPrivate, pasvgateDataPorts)
		}
	}
	if len(told) == 0 {
		return fails
	}
	q := told[len(told)-1].Addr
	p := offered[len(offered)-1].Addr
	if want := (lab.Connect{From: addr(c.side.server), To: q}); !slices.Contains(lab.Connects(spkts), want) {
		failf("no connection %v on the server's link (SYNs %v)", want, lab.Connects(spkts))
	}
	if want := (lab.Connect{From: addr(c.side.snat), To: p}); !slices.Contains(lab.Connects(pkts), want) {
		failf("no data connection %v on the client's link (SYNs %v)", want, lab.Connects(pkts))
	}
	return fails
}

// checkPassiveWire checks a passive-mode cell: what was announced, and
// that the client connected exactly there (the check that it trusted the
// 227 address; a 229 names the address the client dialed). A client that
// ignores the 227's address must have connected to the address it dialed
// with the 227's port, and not to the announced address: the proof that
// the mapping admits it on the dialed address.
func checkPassiveWire(c rcell, pkts []lab.Packet, ctl netip.AddrPort) []string {
	var fails []string
	replies := lab.Stream(pkts, ctl, netip.AddrPort{})
	var announced []netip.AddrPort
	if c.cmd == cmdEPSV {
		for _, p := range parse229s(replies) {
			announced = append(announced, netip.AddrPortFrom(ctl.Addr(), p))
		}
	} else {
		announced = parse227s(replies)
		for _, a := range announced {
			if a.Addr() != addr(lab.GWPublicAddr2) {
				fails = append(fails, fmt.Sprintf("227 announced %v, want address %s", a, lab.GWPublicAddr2))
			}
		}
	}
	if len(announced) == 0 {
		fails = append(fails, "no passive reply in the control channel")
	}
	for _, a := range announced {
		if c.ignore && c.cmd == cmdPASV {
			dialed := netip.AddrPortFrom(ctl.Addr(), a.Port())
			if !slices.Contains(lab.SYNs(pkts), dialed) || slices.Contains(lab.SYNs(pkts), a) {
				fails = append(fails, fmt.Sprintf("client did not connect to the dialed %v only, for the announced %v (SYNs to %v)", dialed, a, lab.SYNs(pkts)))
			}
			continue
		}
		if !slices.Contains(lab.SYNs(pkts), a) {
			fails = append(fails, fmt.Sprintf("client did not connect to the announced %v (SYNs to %v)", a, lab.SYNs(pkts)))
		}
	}
	return fails
}

// dataPortRange is pasvgateDataPorts as numbers.
func dataPortRange() (uint16, uint16) {
	lo, hi, _ := strings.Cut(pasvgateDataPorts, "-")
	l, _ := strconv.Atoi(lo)
	h, _ := strconv.Atoi(hi)
	return uint16(l), uint16(h)
}

// probeReport is what the intruders found in one cell.
type probeReport struct {
	ran        bool   // the probe ran while the mapping was open
	why        string // why not, if !ran
	target     netip.AddrPort
	rulesLines int      // lines of `pasvgate rules list` at the time
	tries      []string // "who -> target: result" for each intruder
	intruded   []string // the intruders that got in
}

// verdict turns the report into failures.
func (r probeReport) verdict(c rcell) []string {
	var fails []string
	if !r.ran {
		return []string{"intruder probe did not run: " + r.why}
	}
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
	s := fmt.Sprintf("probe of %v with %d rules-list lines: %s", r.target, r.rulesLines, strings.Join(r.tries, "; "))
	return s
}

// intruders are who must not get through the data port of c's mapping:
// in active mode a neighbour of the server and a host on the client's
// network; in passive mode the host on the client's network.
func intruders(l *lab.Lab, c rcell) [][2]string {
	out := [][2]string{{l.Client, c.side.intruder}}
	if c.active() {
		out = append([][2]string{{l.Server, c.side.neighbor}}, out...)
	}
	return out
}

// tryIntruders dials target from each intruder and records the outcome.
func (e *revEnv) tryIntruders(ctx context.Context, c rcell, target netip.AddrPort, r *probeReport) {
	r.target = target
	if out, err := e.pg.rulesList(ctx); err == nil {
		r.rulesLines = len(lab.SplitList(strings.ReplaceAll(strings.TrimSpace(out), "\n", ",")))
	}
	for _, in := range intruders(e.l, c) {
		ok, err := dialFrom(ctx, e.l, in[0], in[1], target)
		who := fmt.Sprintf("%s -> %v", in[1], target)
		if ok {
			r.intruded = append(r.intruded, who)
			r.tries = append(r.tries, who+": connected")
		} else {
			r.tries = append(r.tries, fmt.Sprintf("%s: %v", who, shortErr(err)))
		}
	}
}

// dialFrom tries a TCP connection from local in namespace ns to target,
// with a short timeout: a correct gateway refuses or drops it.
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

// shortErr names a dial error by its kind, for notes.
func shortErr(err error) string {
	switch {
	case err == nil:
		return "no error"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out (dropped)"
	case strings.Contains(err.Error(), "connection refused"):
		return "refused"
	}
	return err.Error()
}

// probeDuring waits, while a real client's (slowed) transfer runs, for the
// data address to show up in the live captures: the 229 on the client's
// link in passive mode, pasvgate's rewritten PORT/EPRT on the server's link
// in active mode. Then the intruders try it.
func (e *revEnv) probeDuring(ctx context.Context, c rcell, cliCap, srvCap *lab.Capture, ended <-chan struct{}) probeReport {
	var r probeReport
	target, err := waitDataAddr(ctx, c, cliCap, srvCap, ended)
	if err != nil {
		r.why = err.Error()
		return r
	}
	e.tryIntruders(ctx, c, target, &r)
	select {
	case <-ended:
		r.why = "the transfer ended before the probe finished (lower -interop.active-rate)"
	default:
		r.ran = true
	}
	return r
}

// waitDataAddr polls the captures (up to 20 s, or until the client ends)
// for the address a data connection of c will be made to.
func waitDataAddr(ctx context.Context, c rcell, cliCap, srvCap *lab.Capture, ended <-chan struct{}) (netip.AddrPort, error) {
	ctl := netip.AddrPortFrom(addr(c.side.gwPublic), 21)
	upstream := netip.AddrPortFrom(addr(c.side.server), 21)
	deadline := time.After(20 * time.Second)
	for {
		if c.active() {
			if told := lab.ParseActive(lab.Stream(srvCap.Packets(), netip.AddrPort{}, upstream)); len(told) > 0 {
				return told[len(told)-1].Addr, nil
			}
		} else if c.cmd == cmdEPSV {
			if p := parse229s(lab.Stream(cliCap.Packets(), ctl, netip.AddrPort{})); len(p) > 0 {
				return netip.AddrPortFrom(ctl.Addr(), p[len(p)-1]), nil
			}
		} else if a := parse227s(lab.Stream(cliCap.Packets(), ctl, netip.AddrPort{})); len(a) > 0 {
			if c.ignore {
				// Where this client's data connection goes.
				return netip.AddrPortFrom(ctl.Addr(), a[len(a)-1].Port()), nil
			}
			return a[len(a)-1], nil
		}
		select {
		case <-ended:
			return netip.AddrPort{}, errors.New("the client ended before its data address was captured")
		case <-deadline:
			return netip.AddrPort{}, errors.New("no data address captured within 20s")
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// passiveHook is the raw passive client's hook between the 227/229 and its
// data connection: the intruder tries first, while the server still
// listens behind the mapping; then the client connects itself.
func (e *revEnv) passiveHook(ctx context.Context, c rcell, r *probeReport) func(netip.AddrPort) (net.Conn, error) {
	return func(target netip.AddrPort) (net.Conn, error) {
		e.tryIntruders(ctx, c, target, r)
		r.ran = true
		if len(r.intruded) > 0 {
			return nil, fmt.Errorf("intruder connected to %v", target)
		}
		return nil, nil
	}
}

// activeHook is the raw active client's hook between its PORT/EPRT and
// its RETR: it reads the gateway's port Q from the server's link and lets
// the intruders try it. The transfer that follows is the positive control
// that the mapping, which must refuse the others, admits the server: a
// connection from the server's own address here would use the mapping up
// (it admits one connection, the first), and the server's own data
// connection would then be refused.
func (e *revEnv) activeHook(ctx context.Context, c rcell, srvCap *lab.Capture, r *probeReport) func() (int, error) {
	return func() (int, error) {
		target, err := waitDataAddr(ctx, c, nil, srvCap, nil)
		if err != nil {
			r.why = err.Error()
			return 0, err
		}
		e.tryIntruders(ctx, c, target, r)
		r.ran = true
		if len(r.intruded) > 0 {
			return 0, fmt.Errorf("intruder got in: %v", r.intruded)
		}
		return 0, nil
	}
}

// TestCheckActiveWire proves the active-mode wire check can fail: on a
// made-up exchange it passes, and each thing pasvgate could get wrong
// (passing the client's PORT through, as before active mode was mapped;
// a port outside the data range; another command; the data connection
// reaching the client without SNAT) is reported.
func TestCheckActiveWire(t *testing.T) {
	ap := netip.MustParseAddrPort
	ctl, upstream := ap("203.0.113.1:21"), ap("192.0.2.10:21")
	c := rcell{side: side4, cmd: cmdPORT}
	client := func(dataFrom string) []lab.Packet {
		return []lab.Packet{
			{Src: ap("203.0.113.10:50000"), Dst: ctl, Payload: []byte("PORT 203,0,113,10,156,64\r\n")},
			{Src: ap(dataFrom + ":50001"), Dst: ap("203.0.113.10:40000"), SYN: true},
		}
	}
	server := func(cmd, to string) []lab.Packet {
		return []lab.Packet{
			{Src: ap("192.0.2.1:50002"), Dst: upstream, Payload: []byte(cmd + "\r\n")},
			{Src: ap("192.0.2.10:50003"), Dst: ap(to), SYN: true},
		}
	}
	for _, tc := range []struct {
		name   string
		pkts   []lab.Packet
		spkts  []lab.Packet
		expect string // "" for no failure
	}{
		{"correct", client("203.0.113.2"), server("PORT 192,0,2,1,156,65", "192.0.2.1:40001"), ""},
		{"passed through", client("203.0.113.2"), server("PORT 203,0,113,10,156,64", "203.0.113.10:40000"), "server was told 203.0.113.10:40000"},
		{"port outside the range", client("203.0.113.2"), server("PORT 192,0,2,1,0,80", "192.0.2.1:80"), "server was told 192.0.2.1:80"},
		{"command changed", client("203.0.113.2"), server("EPRT |1|192.0.2.1|40001|", "192.0.2.1:40001"), "server got EPRT"},
		{"no SNAT", client("192.0.2.10"), server("PORT 192,0,2,1,156,65", "192.0.2.1:40001"), "no data connection 203.0.113.2->203.0.113.10:40000"},
		{"server went elsewhere", client("203.0.113.2"), server("PORT 192,0,2,1,156,65", "192.0.2.1:40002"), "no connection 192.0.2.10->192.0.2.1:40001"},
	} {
		fails := strings.Join(checkActiveWire(c, tc.pkts, tc.spkts, ctl, upstream), "; ")
		switch {
		case tc.expect == "" && fails != "":
			t.Errorf("%s: %s", tc.name, fails)
		case tc.expect != "" && !strings.Contains(fails, tc.expect):
			t.Errorf("%s: got %q, want a failure with %q", tc.name, fails, tc.expect)
		}
	}
}
