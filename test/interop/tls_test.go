package interop

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The FTPS suite. pasvgate terminates the client's TLS on the control
// channel and speaks TLS to the server. Clear data (PROT C) stays on the
// kernel path (DNAT, no byte in userspace), exactly as for plain FTP;
// protected data (PROT P) is relayed by pasvgate, which terminates the
// data connection's TLS on each side (protp_test.go has its checks).

var flagTLSServers = flag.String("interop.tls-servers", lab.EnvOr("PASVGATE_INTEROP_TLS_SERVERS", strings.Join(lab.Servers, ",")),
	"comma-separated servers of the FTPS suite [$PASVGATE_INTEROP_TLS_SERVERS]")

// tlsNSPrefix names the FTPS suite's namespaces, apart from the other
// suites' (pglab-).
const tlsNSPrefix = "pgt-"

// Routes of an FTPS cell: how the client reaches the server, and what
// pasvgate does with TLS.
const (
	// routeDirect: the client on the server's LAN (the gw namespace),
	// FTPS straight to the server. The positive control of the
	// certificate and wire checks: there the client must see the
	// server's certificate.
	routeDirect = "direct"
	// routeExplicit: AUTH TLS to pasvgate on port 21, which (with
	// --upstream-tls auto) sends AUTH TLS to the server in turn.
	routeExplicit = "explicit"
	// routeImplicit: TLS from the first byte, to pasvgate's --listen-tls.
	routeImplicit = "implicit"
	// routeActive: routeExplicit in active mode (PORT): with PROT P the
	// server connects to pasvgate, which dials the client, which stays
	// the TLS client of the data connection.
	routeActive = "explicit-active"
	// routeIntruder: routeExplicit, PROT P, with an intruder on the
	// client's network connecting to the announced data port before the
	// client does: refused, and the client's transfer still works.
	routeIntruder = "intruder-first"
	// routeRequireReuse: routeExplicit to a pasvgate with
	// --tls-require-reuse: a protected data connection whose TLS session
	// does not resume the control connection's is refused.
	routeRequireReuse = "require-reuse"
	// routeOffload: AUTH TLS to pasvgate with --upstream-tls never, in
	// front of a server that speaks plain FTP.
	routeOffload = "offload"
	// routeRequireClear: a client in clear through pasvgate with --tls
	// require: its USER gets 530 from pasvgate and never reaches the
	// server.
	routeRequireClear = "require-clear"
	// routeWrongName: AUTH TLS to pasvgate told a name
	// (--upstream-server-name) that the server's certificate does not
	// have: the session must fail, and nothing of the login reach the
	// server.
	routeWrongName = "wrong-upstream-name"
	// routeAlwaysClear: a client in clear through pasvgate with
	// --upstream-tls always, to a server that requires protected data
	// (ProFTPD's TLSRequired on refuses PROT C): pasvgate's start-up
	// upgrade falls back to PROT P, and relays the data, clear on the
	// client's side and TLS on the server's.
	routeAlwaysClear = "always-clear"
	// routeReload: AUTH TLS to the offloading pasvgate after its
	// certificate was renewed on disk and it got SIGHUP: the client must
	// be shown the new certificate.
	routeReload = "cert-reload"
)

// Data protection of a cell, the PROT column: clear data on the kernel
// path, or protected data that pasvgate relays.
const (
	protC = "C"
	protP = "P"
)

// What a cell wants, the want column: the transfer done, or the client's
// protected data connection refused.
const (
	// wantOK: the file arrives whole.
	wantOK = "ok"
	// want522: vsftpd refuses the data connection of a client that does
	// not resume its control session (require_ssl_reuse=YES):
	// "522 SSL connection failed: session reuse required". The negative
	// control of the cells where pasvgate makes such a client work.
	want522 = "fail-522"
	// want425: ProFTPD does (its default, no NoSessionReuseRequired):
	// "425 Unable to build data connection: Operation not permitted",
	// and its TLSLog says why ("did not reuse TLS session").
	want425 = "fail-425"
	// wantNoReuse: pasvgate (--tls-require-reuse) refuses the client's
	// data handshake, which did not resume.
	wantNoReuse = "fail-no-reuse"
)

// Subjects of the certificates of the routeReload cells, neither a part
// of the other, nor of the PKI's.
const (
	reloadCNBefore = "pasvgate reload test gateway 1"
	reloadCNAfter  = "pasvgate reload test gateway 2"
)

// wrongServerName is the --upstream-server-name of the routeWrongName
// cells: a name of the lab's own domain that no certificate carries.
const wrongServerName = "other.server.test"

// offloadServer names the row group of the offload lab: vsftpd without
// TLS, behind pasvgate --tls require --upstream-tls never.
const offloadServer = "vsftpd-clear"

// tcell is one FTPS cell.
type tcell struct {
	server, client, route, prot, want string
	op                                lab.Op
}

func (c tcell) row() []string { return []string{c.server, c.client, c.route, c.prot, c.want} }
func (c tcell) String() string {
	return fmt.Sprintf("%s/%s/%s/%s/%s/%s", c.server, c.client, c.route, c.prot, c.want, c.op)
}

// tlsPart is a group of cells of one route and protection level: its
// clients and operations, and what they want (wantOK if empty).
type tlsPart struct {
	route   string
	prot    string
	clients []string
	ops     []lab.Op
	want    string
}

func (p tlsPart) wants() string {
	if p.want == "" {
		return wantOK
	}
	return p.want
}

func (p tlsPart) cell(server, client string, op lab.Op) tcell {
	return tcell{server: server, client: client, route: p.route, prot: p.prot, want: p.wants(), op: op}
}

var (
	getPut = []lab.Op{lab.Get, lab.Put}
	get    = []lab.Op{lab.Get}
)

// tlsPartsTLSServer are the cells run against a server that requires
// TLS on its control channel: first with clear data allowed (PROT C),
// then against the same kind of server restarted to require protected
// data (PROT P).
var tlsPartsTLSServer = []tlsPart{
	{routeDirect, protC, []string{"curl", "lftp", "ftplib"}, get, ""},
	{routeExplicit, protC, []string{"curl", "lftp", "ftplib"}, getPut, ""},
	{routeExplicit, protC, []string{"raw"}, get, ""},
	{routeImplicit, protC, []string{"lftp"}, getPut, ""},

	{routeDirect, protP, []string{"curl"}, get, ""},
	{routeExplicit, protP, []string{"curl", "lftp", "ftplib", "jlaffaye"}, getPut, ""},
	{routeImplicit, protP, []string{"curl"}, getPut, ""},
}

// tlsPartsVsftpd are run against vsftpd only, after the others of its
// protection level. pasvgate's certificate check, active mode, the
// intruder and --tls-require-reuse do not depend on the server; vsftpd
// is the one that requires session reuse by default and says so.
var tlsPartsVsftpd = []tlsPart{
	{routeWrongName, protC, []string{"curl"}, get, ""},

	{routeDirect, protP, []string{"ftplib"}, get, want522},
	{routeActive, protP, []string{"lftp"}, getPut, ""},
	{routeIntruder, protP, []string{"raw"}, get, ""},
	{routeRequireReuse, protP, []string{"curl"}, get, ""},
	{routeRequireReuse, protP, []string{"ftplib"}, get, wantNoReuse},
}

// tlsPartsProFTPD are run against ProFTPD only: the negative control of
// its session reuse requirement, which the cells through pasvgate meet
// with every client.
var tlsPartsProFTPD = []tlsPart{
	{routeDirect, protP, []string{"ftplib"}, get, want425},
	{routeAlwaysClear, protP, []string{"curl"}, getPut, ""},
}

// tlsPartsOffload are the cells of the offload lab.
var tlsPartsOffload = []tlsPart{
	{routeOffload, protC, []string{"curl", "ftplib"}, getPut, ""},
	{routeRequireClear, protC, []string{"curl"}, get, ""},
	{routeReload, protC, []string{"curl"}, get, ""},
}

// partsOf returns parts in the order a lab runs them: by protection
// level (the server is restarted in between), the direct cells first in
// each.
func partsOf(server string) []tlsPart {
	var all []tlsPart
	switch server {
	case offloadServer:
		all = tlsPartsOffload
	case lab.Vsftpd:
		all = append(slices.Clone(tlsPartsTLSServer), tlsPartsVsftpd...)
	case lab.ProFTPD:
		all = append(slices.Clone(tlsPartsTLSServer), tlsPartsProFTPD...)
	default:
		all = tlsPartsTLSServer
	}
	var out []tlsPart
	for _, prot := range []string{protC, protP} {
		for _, direct := range []bool{true, false} {
			for _, p := range all {
				if p.prot == prot && (p.route == routeDirect) == direct {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// TestTLS runs FTPS through pasvgate in reverse mode, with clear data
// (PROT C) and protected data (PROT P), and prints the cells as a table.
//
// PROT C: curl --ftp-ssl-control, lftp (ftp:ssl-force, no data
// protection), Python's ftplib.FTP_TLS with prot_c(), the suite's raw Go
// client, and lftp over implicit ftps:// to pasvgate's --listen-tls,
// against vsftpd, ProFTPD (mod_tls), pure-ftpd and test/ftpd, each
// requiring TLS on its control channel and allowing clear data, with a
// certificate of the suite's own PKI; pasvgate told the wrong
// --upstream-server-name; and pasvgate as a TLS offloader (--upstream-tls
// never) in front of a plain vsftpd, whose --tls require also refuses a
// client in clear, and whose certificate, renewed on disk, is shown after
// a SIGHUP.
//
// PROT P, against the same servers restarted to require protected data
// (vsftpd force_anon_data_ssl with require_ssl_reuse at its default YES,
// ProFTPD TLSRequired on with its default reuse requirement, pure-ftpd
// -Y 3; test/ftpd takes either): curl --ssl-reqd, curl over implicit
// ftps://, lftp ftp:ssl-protect-data, ftplib prot_p() (which never
// resumes a session) and jlaffaye/ftp's explicit TLS; against vsftpd
// also lftp in active mode, the raw client with an intruder connecting to
// the data port first, and pasvgate with --tls-require-reuse (curl
// passes, ftplib is refused); against ProFTPD also a clear curl through
// pasvgate with --upstream-tls always, whose data pasvgate relays (clear
// on the client's side, TLS on the server's), since ProFTPD refuses
// PROT C. The direct cells (the client on the
// server's LAN) are the positive controls of the checks; ftplib's direct
// PROT P cells against vsftpd and ProFTPD are the negative controls of
// session reuse: they must fail, with vsftpd's 522 and ProFTPD's 425.
//
// Each cell checks the file's SHA-256 (download, and the upload as
// stored); that the certificate the client was shown is the gateway's
// (the server's in the direct cells), by the fingerprint or subject the
// client reports or, for lftp (capped at TLS 1.2 for this), by the
// Certificate message on the wire; that on the client's link each
// control connection is TLS records after AUTH SSL (curl) or AUTH TLS
// (the others), or from the first byte for implicit FTPS, so no 227, no
// 192.0.2.x and no login is in clear, and likewise on the server's link
// after pasvgate's own AUTH (or, offloaded, that the server's link is
// clear); and that no mapping is left afterwards. The data connection:
// with PROT C it went to pasvgate's --public-addr and a port of its data
// range, reached the server's passive port from the gateway's address,
// is a kernel DNAT in the gateway's conntrack table, and pasvgate's
// pasvgate_transfers_total{path="kernel"} rose by one and the relay's
// did not; with PROT P the client's data connection ended at the gateway
// itself (its conntrack entry is answered by the address it was made to),
// the gateway made its own to the server's passive port (in active mode:
// the server connected to the gateway's data port, and the gateway to
// the client), each is TLS records from its first byte on both links,
// and pasvgate_transfers_total{path="relay"} rose by one,
// pasvgate_relayed_bytes_total by the file's size at least, and the
// kernel's did not. The raw client also checks that TLS 1.1 is refused,
// and the answers to a second AUTH, PBSZ, PROT P, CCC and PROT C; the
// intruder's connection must get no TLS handshake and count as a
// relay-foreign-source refusal; --tls-require-reuse's refusal must count
// as a data-no-reuse TLS failure.
//
// Control-channel TLS does not depend on the kernel backend, so the
// suite runs in the default pass only and skips with another
// -interop.iptables or -interop.backend.
func TestTLS(t *testing.T) {
	lab.RequireRoot(t)
	requirePasvgateMode(t)
	if *flagIPTables != lab.DefaultIPTables || *flagBackend != "iptables" {
		t.Skipf("control-channel TLS is backend independent: runs with %s and the iptables backend only (-interop.iptables, -interop.backend)", lab.DefaultIPTables)
	}
	t.Parallel()
	start := time.Now()
	if err := lab.SweepPrefix(tlsNSPrefix); err != nil {
		t.Logf("sweeping stale %s namespaces: %v", tlsNSPrefix, err)
	}
	servers := lab.SplitList(*flagTLSServers)
	g := lab.NewGrid(fmt.Sprintf("FTPS, PROT C data on the kernel path and PROT P data relayed, reverse mode (%s)", *flagIPTables),
		[]string{"server", "client", "route", "PROT", "want"}, []string{"get", "put"})
	order := slices.Clone(servers)
	if slices.Contains(servers, lab.Vsftpd) {
		order = append(order, offloadServer)
	}
	for _, s := range order {
		for _, p := range partsOf(s) {
			for _, cl := range p.clients {
				c := p.cell(s, cl, "")
				g.Row(c.row()...)
				for _, op := range []lab.Op{lab.Get, lab.Put} {
					if !slices.Contains(p.ops, op) {
						g.Set(c.row(), string(op), lab.StatusNone, "", 0)
					}
				}
			}
		}
	}
	defer func() { g.Print(os.Stdout, time.Since(start)) }()

	tl := buildSome(t, slices.Contains(servers, lab.BuiltIn), true)
	pki, err := lab.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if tl.pasvgateErr == nil {
		tl.pasvgateErr = pasvgateHasTLS(t.Context(), tl.pasvgate)
	}
	t.Run("servers", func(t *testing.T) {
		for _, s := range order {
			t.Run(s, func(t *testing.T) {
				t.Parallel()
				runTLSServer(t, s, partsOf(s), tl, pki, g)
			})
		}
	})
}

// pasvgateHasTLS returns an error if the pasvgate binary has no FTPS
// flags: a build from before FTPS, whose cells are skipped, not failed.
func pasvgateHasTLS(ctx context.Context, bin string) error {
	out, _ := exec.CommandContext(ctx, bin, "run", "-h").CombinedOutput()
	if !strings.Contains(string(out), "-tls-cert") {
		return errors.New("this pasvgate has no --tls-cert: FTPS not implemented in this build")
	}
	return nil
}

// runTLSServer runs one row group (a server, or the offload lab) in a lab
// of its own: for each protection level, the server started for it, the
// direct cells, then the others, each run of parts with the same
// pasvgate configuration behind one pasvgate.
func runTLSServer(t *testing.T, name string, parts []tlsPart, tl tools, pki *lab.PKI, g *lab.Grid) {
	// rows sets every cell of ps (all parts if nil) that has no outcome
	// yet to status.
	rows := func(status, why string, ps []tlsPart) {
		if ps == nil {
			ps = parts
		}
		for _, p := range ps {
			for _, cl := range p.clients {
				g.SetRow(p.cell(name, cl, "").row(), status, why)
			}
		}
	}
	kind := name
	opt := lab.ServerOptions{Binary: tl.testftpd, TLS: &pki.Server}
	if name == offloadServer {
		kind, opt.TLS = lab.Vsftpd, nil
	}
	if kind == lab.BuiltIn && tl.testftpdErr != nil {
		rows(lab.StatusSkip, oneLine(tl.testftpdErr.Error()), nil)
		t.Skip(tl.testftpdErr)
	}
	l := lab.New(t, lab.Options{IPTables: *flagIPTables, NSPrefix: tlsNSPrefix})
	e := &tlsEnv{l: l, pki: pki, tl: tl}
	defer func() {
		if e.srv != nil {
			e.srv.Proc.Stop()
		}
	}()
	if slices.ContainsFunc(parts, func(p tlsPart) bool { return p.route == routeReload }) {
		// Its own files, which its cells renew.
		var err error
		if e.reloadGW, err = pki.IssueGateway(filepath.Join(l.Dir, "reload-cert"), reloadCNBefore); err != nil {
			rows(lab.StatusFail, oneLine(err.Error()), nil)
			t.Fatal(err)
		}
	}

	runPart := func(p tlsPart) {
		for _, cl := range p.clients {
			for _, op := range p.ops {
				c := p.cell(name, cl, op)
				t.Run(p.prot+"/"+p.route+"/"+cl+"/"+string(op), func(t *testing.T) { e.runCell(t, g, c) })
			}
		}
	}
	for _, prot := range []string{protC, protP} {
		var phase []tlsPart
		for _, p := range parts {
			if p.prot == prot {
				phase = append(phase, p)
			}
		}
		if len(phase) == 0 {
			continue
		}
		if e.srv != nil {
			e.srv.Proc.Stop()
		}
		opt.TLSRequireData = prot == protP
		e.srv = startServerOf(t, l, kind, opt, func(status, why string) { rows(status, why, nil) })
		// The direct cells need no pasvgate: they run whatever pasvgate
		// is.
		var run []tlsPart
		for i, p := range phase {
			if p.route == routeDirect {
				runPart(p)
				continue
			}
			if tl.pasvgateErr != nil {
				rows(lab.StatusSkip, "pasvgate: "+oneLine(tl.pasvgateErr.Error()), []tlsPart{p})
				continue
			}
			run = append(run, p)
			if i+1 < len(phase) && slices.Equal(e.pasvgateArgs(phase[i+1].route), e.pasvgateArgs(p.route)) {
				continue
			}
			args := append(e.pasvgateArgs(p.route), backendArgs(l)...)
			pg, err := startPasvgateArgs(t, l, tl.pasvgate, []string{lab.GWPublicAddr + ":21"}, args...)
			if err != nil {
				rows(lab.StatusFail, "pasvgate did not start: "+oneLine(err.Error()), run)
				t.Fatal(err)
			}
			e.pg = pg
			for _, r := range run {
				runPart(r)
			}
			pg.stop(t)
			e.pg, run = nil, nil
		}
	}
	if tl.pasvgateErr != nil {
		t.Skip(tl.pasvgateErr)
	}
}

// pasvgateMetrics is where each lab's pasvgate serves --metrics: on the
// gateway namespace's loopback, which nothing else in the lab reaches.
const pasvgateMetrics = "127.0.0.1:9464"

// pasvgateArgs are pasvgate's arguments (less the backend's) for the
// cells of route: with the gateway's certificate always (for routeReload,
// its own files), and metrics; in front of a server with TLS, also an
// implicit-FTPS listener and the server's CA and name (a wrong one for
// routeWrongName), and --tls-require-reuse for routeRequireReuse; as an
// offloader, --tls require and --upstream-tls never.
func (e *tlsEnv) pasvgateArgs(route string) []string {
	pki, gw := e.pki, e.pki.GW
	if route == routeReload {
		gw = e.reloadGW
	}
	args := []string{
		"--listen", lab.GWPublicAddr + ":21",
		"--upstream", lab.ServerAddr + ":21",
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", pasvgateDataPorts,
		"--tls-cert", gw.CertFile,
		"--tls-key", gw.KeyFile,
		"--metrics", pasvgateMetrics,
		"--log-format", "json",
	}
	switch route {
	case routeOffload, routeRequireClear, routeReload:
		return append(args, "--tls", "require", "--upstream-tls", "never")
	case routeWrongName:
		return append(args, "--upstream-ca", pki.CAFile, "--upstream-server-name", wrongServerName)
	case routeRequireReuse:
		args = append(args, "--tls-require-reuse")
	case routeAlwaysClear:
		args = append(args, "--upstream-tls", "always")
	}
	return append(args,
		"--listen-tls", fmt.Sprintf("%s:%d", lab.GWPublicAddr, lab.ImplicitPort),
		"--upstream-ca", pki.CAFile,
		"--upstream-server-name", lab.ServerTLSName)
}

// tlsEnv is one lab of the FTPS suite.
type tlsEnv struct {
	l   *lab.Lab
	srv *lab.Server // the server of the current protection level
	pg  *pasvgate   // nil in the direct cells' time
	pki *lab.PKI
	tl  tools
	// reloadGW is the certificate pasvgate was started with for the
	// routeReload cells (its files are renewed by them).
	reloadGW lab.Cert
}

// runCell runs c, records it in g, and fails t if it failed.
func (e *tlsEnv) runCell(t *testing.T, g *lab.Grid, c tcell) {
	start := time.Now()
	fails, notes, skip := e.check(t, c)
	setCell(t, g, c.row(), string(c.op), time.Since(start), fails, notes, skip, e.pg, e.srv)
}

// client returns c's client driver.
func (e *tlsEnv) client(c tcell) (lab.Client, error) {
	ct := &lab.ClientTLS{CAFile: e.pki.CAFile, Implicit: c.route == routeImplicit, TLS12: tls12(c.client), ProtectData: c.prot == protP}
	if c.route == routeRequireClear || c.route == routeAlwaysClear {
		ct = nil
	}
	var cl lab.Client
	switch c.client {
	case "curl":
		cl = lab.Curl{TLS: ct}
	case "lftp":
		cl = lab.Lftp{TLS: ct}
	case "ftplib":
		cl = lab.Ftplib{TLS: ct}
	case "jlaffaye":
		if e.tl.jlclientErr != nil {
			return nil, e.tl.jlclientErr
		}
		cl = lab.JLFTP{Bin: e.tl.jlclient, TLS: ct}
	case "raw":
		cl = rawFTPS{caFile: e.pki.CAFile, protP: c.prot == protP, intrude: e.intruder(c)}
	default:
		return nil, fmt.Errorf("client %q is not in this suite: %w", c.client, lab.ErrMissing)
	}
	return cl, cl.Available()
}

// tls12 says whether the client is capped at TLS 1.2 in this suite: lftp
// (GnuTLS, as Debian builds it) does not say which certificate it was
// shown, so the test reads it off the wire, which TLS 1.2 allows. The
// others use TLS 1.3 and report the certificate themselves.
func tls12(client string) bool { return client == "lftp" }

// check runs the cell and returns what went wrong, notes worth a log, and
// a reason to skip.
func (e *tlsEnv) check(t *testing.T, c tcell) (fails, notes []string, skip string) {
	ctx := t.Context()
	l := e.l
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	client, err := e.client(c)
	if err != nil {
		return nil, nil, oneLine(err.Error())
	}
	direct := c.route == routeDirect
	ns, host, from := l.Client, lab.GWPublicAddr, addr(lab.ClientAddr)
	capNS, capIface := l.Client, lab.ClientIface
	if direct {
		ns, host, from = l.GW, lab.ServerAddr, addr(lab.GWPrivateAddr)
		capNS, capIface = l.GW, lab.GWPrivateIface
	}
	ctl := netip.AddrPortFrom(addr(host), 21)
	if c.route == routeImplicit {
		ctl = netip.AddrPortFrom(ctl.Addr(), lab.ImplicitPort)
	}
	upstream := netip.AddrPortFrom(addr(lab.ServerAddr), 21)

	cliCap, err := l.Capture(capNS, capIface)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}
	var srvCap *lab.Capture
	if !direct {
		if srvCap, err = l.Capture(l.GW, lab.GWPrivateIface); err != nil {
			return []string{err.Error()}, nil, ""
		}
	}

	base := strings.ReplaceAll(c.String(), "/", "-")
	tr := lab.Transfer{NS: ns, Host: host, User: e.srv.User, Password: e.srv.Password, Op: c.op,
		Active: c.route == routeActive, Timeout: 30 * time.Second}
	putSHA, err := setFiles(&tr, l.Dir, base)
	if err != nil {
		return []string{err.Error()}, nil, ""
	}
	defer os.Remove(tr.Local)
	var logFrom int // where this cell's lines of pasvgate's log begin
	var before pgMetrics
	if e.pg != nil {
		logFrom = len(e.pg.proc.Output())
		if before, err = e.pg.scrape(ctx); err != nil {
			return []string{err.Error()}, nil, ""
		}
	}
	want, other := e.pki.GW, e.pki.Server // the certificate the client must be shown, and one it must not
	switch c.route {
	case routeDirect:
		want, other = other, want
	case routeReload:
		renewed, err := e.renewGW()
		if err != nil {
			return []string{err.Error()}, nil, ""
		}
		want, other = renewed, e.reloadGW
	}
	res, runErr := client.Run(ctx, l, tr)
	if errors.Is(runErr, lab.ErrUnsupported) {
		return nil, nil, oneLine(runErr.Error())
	}
	pkts, capErr := cliCap.Stop()
	var spkts []lab.Packet
	if srvCap != nil {
		var scapErr error
		spkts, scapErr = srvCap.Stop()
		capErr = errors.Join(capErr, scapErr)
	}
	if capErr != nil {
		failf("capture incomplete, wire checks inconclusive: %v", capErr)
	}

	// 1. What the user gets: the file, or for the clear client under
	// --tls require, a 530 and no login.
	switch c.route {
	case routeRequireClear:
		fails = append(fails, checkRefusedClear(runErr, pkts, spkts, ctl, upstream)...)
	case routeWrongName:
		if runErr == nil {
			failf("the client got through a gateway told the wrong server name %s", wrongServerName)
		} else {
			notes = append(notes, "client: "+lastLines(runErr.Error(), 3))
		}
		notes = append(notes, fmt.Sprintf("gateway's replies: %q", lab.Stream(pkts, ctl, netip.AddrPort{})))
		ucmds := lab.Stream(spkts, netip.AddrPort{}, upstream)
		for _, v := range []string{"USER", "PASS", "PASV"} {
			if sentCommand(ucmds, v) {
				failf("the gateway sent %s to the server in clear, its certificate unverified", v)
			}
		}
		if e.pg != nil {
			for _, line := range strings.Split(e.pg.proc.Settled()[logFrom:], "\n") {
				if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
					notes = append(notes, "pasvgate: "+line)
				}
			}
		}
	default:
		switch {
		case c.want != wantOK:
			rfails, rnotes := e.checkRefused(ctx, c, runErr, before, logFrom)
			fails, notes = append(fails, rfails...), append(notes, rnotes...)
		case runErr != nil:
			failf("client: %v", runErr)
			notes = append(notes, "client log: "+lastLines(res.Log, 15))
		default:
			if bad := e.srv.CheckOutcome(c.op, res, tr.Local, "", base+".bin", putSHA); bad != "" {
				failf("%s", bad)
			}
		}

		// 2. The certificate the client was shown.
		if c.route == routeAlwaysClear {
			// A clear client is shown none; its control channel is
			// clear on its link, and TLS on the server's (4). Its 227
			// must still name no private address.
			if leaks := lab.Leaks(lab.Payloads(pkts), lab.PrivatePrefix); len(leaks) > 0 {
				failf("client's link: %v", leaks)
			}
			if !sentCommand(lab.Stream(pkts, netip.AddrPort{}, ctl), "USER") {
				failf("client's link: no USER in clear: the client was not the clear one this cell is for")
			}
		} else if tls12(c.client) {
			mark := "234 "
			if c.route == routeImplicit {
				mark = ""
			}
			var wire string
			err := errors.New("no control connection in the capture")
			if peers := connsTo(pkts, ctl); len(peers) > 0 {
				wire, err = lab.WireCertificate(lab.StreamOnce(pkts, ctl, peers[len(peers)-1]), mark)
			}
			for _, f := range checkPeerCert(lab.PeerCert{SHA256: wire}, err, want, other) {
				failf("on the wire: %s", f)
			}
		} else {
			pc, err := lab.PeerCertOf(res)
			if err == nil {
				notes = append(notes, fmt.Sprintf("client saw %q %s", pc.Subject, pc.SHA256))
			}
			fails = append(fails, checkPeerCert(pc, err, want, other)...)
		}

		// 3. The control channel on the client's link: TLS after AUTH
		// (from the first byte, implicitly), so no 227, no private
		// address and no login in clear.
		var cfails, auths []string
		if c.route != routeAlwaysClear {
			cfails, auths = checkTLSControl("client's link", pkts, ctl, c.route == routeImplicit)
		}
		fails = append(fails, cfails...)
		// pasvgate takes both AUTH TLS and AUTH SSL: curl tries the
		// latter first, the others send the former.
		if c.route == routeExplicit || c.route == routeOffload || c.route == routeReload {
			want := "AUTH TLS"
			if c.client == "curl" {
				want = "AUTH SSL"
			}
			if len(auths) == 0 || auths[len(auths)-1] != want {
				failf("client's link: TLS began after %q, want after %q", auths, want)
			}
		}

		// 4. The control channel on the server's link.
		switch c.route {
		case routeExplicit, routeImplicit, routeAlwaysClear:
			sfails, _ := checkTLSControl("server's link", spkts, upstream, false)
			fails = append(fails, sfails...)
		case routeOffload, routeReload:
			fails = append(fails, checkClearUpstream(spkts, upstream)...)
		}

		// 5. The data connection took the kernel path (PROT C) or
		// pasvgate's relay (PROT P), and pasvgate counted it so.
		var dfails, dnotes []string
		switch {
		case c.want != wantOK:
			// Refused: checkRefused said what happened to it.
		case c.prot == protC:
			dfails, dnotes = e.checkDataPath(ctx, pkts, spkts, from, ctl, direct)
			if e.pg != nil {
				dfails = append(dfails, e.pg.checkCounts(ctx, before, kernelTransfer)...)
			}
		case tr.Active:
			dfails, dnotes = e.checkRelayActive(ctx, pkts, spkts)
		default:
			dfails, dnotes = e.checkRelayPath(ctx, pkts, spkts, from, ctl, direct, c.route == routeAlwaysClear)
		}
		if c.want == wantOK && c.prot == protP && e.pg != nil {
			dfails = append(dfails, e.pg.checkCounts(ctx, before, relayTransfer)...)
			if c.route == routeIntruder {
				for _, line := range strings.Split(res.Log, "\n") {
					if strings.HasPrefix(line, "intruder ") {
						dnotes = append(dnotes, line)
					}
				}
				dfails = append(dfails, e.pg.checkCounts(ctx, before, foreignRefused)...)
				dfails = append(dfails, checkLogged(e.pg.proc.Settled()[logFrom:], "protected data connection refused: not from the address it is for", lab.IntruderAddr)...)
			}
		}
		fails, notes = append(fails, dfails...), append(notes, dnotes...)
	}
	if !direct {
		if leaks := lab.Leaks(lab.Payloads(pkts), lab.PrivatePrefix); len(leaks) > 0 {
			failf("private address reached the client: %s", strings.Join(leaks, ", "))
		}
	}

	// 6. The kernel is clean once the transfer is over.
	if e.pg != nil {
		if left := e.pg.waitDrained(ctx); left != "" {
			failf("after the transfer: %s", left)
		}
	}
	return fails, notes, ""
}

// renewGW issues a new certificate into the files of e.reloadGW, sends
// pasvgate SIGHUP and waits (up to 5 s) for it to log that it reloaded.
// It returns the new certificate.
func (e *tlsEnv) renewGW() (lab.Cert, error) {
	renewed, err := e.pki.IssueGateway(filepath.Dir(e.reloadGW.CertFile), reloadCNAfter)
	if err != nil {
		return renewed, err
	}
	if renewed.CertFile != e.reloadGW.CertFile || renewed.KeyFile != e.reloadGW.KeyFile {
		return renewed, fmt.Errorf("renewed certificate in %s, not over %s", renewed.CertFile, e.reloadGW.CertFile)
	}
	const reloaded = `"msg":"reloaded"`
	before := strings.Count(e.pg.proc.Output(), reloaded)
	if err := syscall.Kill(e.pg.proc.Pid(), syscall.SIGHUP); err != nil {
		return renewed, fmt.Errorf("SIGHUP to pasvgate: %w", err)
	}
	for deadline := time.Now().Add(5 * time.Second); strings.Count(e.pg.proc.Output(), reloaded) == before; {
		if time.Now().After(deadline) {
			return renewed, fmt.Errorf("pasvgate logged no reload within 5s of SIGHUP:\n%s", lastLines(e.pg.proc.Output(), 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return renewed, nil
}

// checkPeerCert checks what a client reported of the certificate it was
// shown (err: nothing) against the one it should have been shown, by
// fingerprint where the client gives one, else by subject; other is the
// certificate it must not have been shown.
func checkPeerCert(pc lab.PeerCert, err error, want, other lab.Cert) []string {
	if err != nil {
		return []string{"peer certificate: " + err.Error()}
	}
	var fails []string
	if pc.SHA256 != "" && pc.SHA256 != want.SHA256 {
		name := "an unknown certificate"
		if pc.SHA256 == other.SHA256 {
			name = other.CommonName
		}
		fails = append(fails, fmt.Sprintf("client was shown %s (sha256 %s), want %s (%s)", name, pc.SHA256, want.CommonName, want.SHA256))
	}
	if pc.Subject != "" && (!strings.Contains(pc.Subject, want.CommonName) || strings.Contains(pc.Subject, other.CommonName)) {
		fails = append(fails, fmt.Sprintf("client was shown subject %q, want %q", pc.Subject, want.CommonName))
	}
	return fails
}

// checkTLSControl checks every control connection to ctl in a capture:
// both directions are TLS records from the end of the AUTH command and
// its 234 reply on (from the first byte, implicit), the clear part before
// carries no login, and no 227 can be read anywhere. It also returns the
// command after which each connection turned to TLS ("AUTH TLS", "AUTH
// SSL"; nothing for implicit FTPS).
func checkTLSControl(link string, pkts []lab.Packet, ctl netip.AddrPort, implicit bool) (fails, auths []string) {
	cmdMark, replyMark := "AUTH ", "234 "
	if implicit {
		cmdMark, replyMark = "", ""
	}
	peers := connsTo(pkts, ctl)
	if len(peers) == 0 {
		return []string{fmt.Sprintf("%s: no control connection to %v", link, ctl)}, nil
	}
	for _, peer := range peers {
		cmds := lab.StreamOnce(pkts, peer, ctl)
		replies := lab.StreamOnce(pkts, ctl, peer)
		n, err := lab.TLSRecordsAfter(cmds, cmdMark)
		if err != nil {
			fails = append(fails, fmt.Sprintf("%s, commands %v->%v: %v", link, peer, ctl, err))
		}
		clear := cmds[:n]
		if strings.Contains(clear, "USER ") || strings.Contains(clear, "PASS ") {
			fails = append(fails, fmt.Sprintf("%s: login in clear: %q", link, clear))
		}
		if err == nil && !implicit {
			lines := strings.Split(strings.TrimSuffix(clear, "\r\n"), "\r\n")
			auths = append(auths, lines[len(lines)-1])
		}
		if _, err := lab.TLSRecordsAfter(replies, replyMark); err != nil {
			fails = append(fails, fmt.Sprintf("%s, replies %v->%v: %v", link, ctl, peer, err))
		}
		if a := parse227s(replies); len(a) > 0 {
			fails = append(fails, fmt.Sprintf("%s: 227 in clear: %v", link, a))
		}
	}
	return fails, auths
}

// connsTo returns the far ends of the connections to dst that pkts show
// from their SYN on, in order: one per control connection, so that the
// streams of two are not read as one, and the end of one made before the
// capture (a previous cell's) is left out.
func connsTo(pkts []lab.Packet, dst netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range pkts {
		if p.SYN && !p.ACK && p.Dst == dst && !slices.Contains(out, p.Src) {
			out = append(out, p.Src)
		}
	}
	return out
}

// checkClearUpstream checks the server's link of an offloaded cell: the
// gateway logged in and asked for PASV in clear, and the server's 227
// (its own address) is there to read. Also the positive control of the
// TLS checks' readings of a capture.
func checkClearUpstream(spkts []lab.Packet, upstream netip.AddrPort) []string {
	var fails []string
	cmds := lab.Stream(spkts, netip.AddrPort{}, upstream)
	replies := lab.Stream(spkts, upstream, netip.AddrPort{})
	if sentCommand(cmds, "AUTH") {
		fails = append(fails, "--upstream-tls never: the gateway sent AUTH to the server")
	}
	for _, v := range []string{"USER", "PASS", "PASV"} {
		if !sentCommand(cmds, v) {
			fails = append(fails, fmt.Sprintf("--upstream-tls never: no %s in clear on the server's link", v))
		}
	}
	if a := parse227s(replies); len(a) == 0 || a[0].Addr() != addr(lab.ServerAddr) {
		fails = append(fails, fmt.Sprintf("--upstream-tls never: server's 227 not read in clear on its link: %v", a))
	}
	if len(lab.Leaks(lab.Payloads(spkts), lab.PrivatePrefix)) == 0 {
		fails = append(fails, "the server's link shows no "+lab.PrivatePrefix+" (capture or Leaks broken)")
	}
	return fails
}

// checkRefusedClear checks the clear client's cell under --tls require:
// the client failed with a 530, which came in clear on its link, and
// neither its USER nor its PASS reached the server.
func checkRefusedClear(runErr error, pkts, spkts []lab.Packet, ctl, upstream netip.AddrPort) []string {
	var fails []string
	replies := lab.Stream(pkts, ctl, netip.AddrPort{})
	cmds := lab.Stream(pkts, netip.AddrPort{}, ctl)
	if runErr == nil || !strings.Contains(runErr.Error(), "530") {
		fails = append(fails, fmt.Sprintf("clear client under --tls require: client error %v, want a 530", runErr))
	}
	if !sentCommand(cmds, "USER") {
		fails = append(fails, "the clear client sent no USER (capture broken?)")
	}
	if !strings.Contains(replies, "\n530 ") && !strings.HasPrefix(replies, "530 ") {
		fails = append(fails, fmt.Sprintf("no 530 on the client's link: %q", lastLines(replies, 5)))
	}
	for _, code := range []string{"230 ", "331 "} {
		if strings.Contains(replies, "\n"+code) {
			fails = append(fails, fmt.Sprintf("the clear client got a %s: %q", code, lastLines(replies, 5)))
		}
	}
	ucmds := lab.Stream(spkts, netip.AddrPort{}, upstream)
	for _, v := range []string{"USER", "PASS"} {
		if sentCommand(ucmds, v) {
			fails = append(fails, fmt.Sprintf("the clear client's %s reached the server", v))
		}
	}
	if slices.ContainsFunc(lab.Connects(pkts), func(cn lab.Connect) bool { return cn.To != ctl }) {
		fails = append(fails, fmt.Sprintf("the refused client made another connection: %v", lab.Connects(pkts)))
	}
	return fails
}

// checkDataPath checks where the cell's data connections went: from the
// client (from) to pasvgate's --public-addr and a port Q of its data
// range, which only a 227 it read inside TLS can have told it; from the
// gateway's private address to the server's passive port P; and, in the
// gateway's conntrack table, as one flow whose reply comes from the
// server's P: a kernel DNAT, not a relay in userspace. Direct, the client
// connects to the server's own passive port. The notes name each flow.
func (e *tlsEnv) checkDataPath(ctx context.Context, pkts, spkts []lab.Packet, from netip.Addr, ctl netip.AddrPort, direct bool) (fails, notes []string) {
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	// The data connections, by their SYNs: the client's port too, to find
	// exactly their conntrack entries.
	var data []lab.Packet
	for _, p := range pkts {
		if p.SYN && !p.ACK && p.Src.Addr() == from && p.Dst != ctl {
			data = append(data, p)
		}
	}
	if len(data) == 0 {
		return []string{fmt.Sprintf("no data connection from %v on the client's link (SYNs %v)", from, lab.Connects(pkts))}, nil
	}
	low, high := dataPortRange()
	for _, syn := range data {
		to := syn.Dst
		if direct {
			if to.Addr() != addr(lab.ServerAddr) || to.Port() < 30000 || to.Port() > 30099 {
				failf("direct data connection to %v, want %s and a passive port of the server", to, lab.ServerAddr)
			}
			continue
		}
		if to.Addr() != addr(lab.GWPublicAddr2) || to.Port() < low || to.Port() > high {
			failf("data connection to %v, want %s (--public-addr) and a port in %s", to, lab.GWPublicAddr2, pasvgateDataPorts)
			continue
		}
		reply, err := conntrackReplySource(ctx, e.l, syn.Src, to)
		switch {
		case err != nil:
			failf("conntrack: %v", err)
		case reply.Addr() != addr(lab.ServerAddr) || reply.Port() < 30000 || reply.Port() > 30099:
			failf("conntrack: the flow to %v is answered by %v, not by the server's passive port (no kernel DNAT)", to, reply)
		case !slices.Contains(lab.Connects(spkts), lab.Connect{From: addr(lab.GWPrivateAddr), To: reply}):
			failf("no connection %s->%v on the server's link (SYNs %v)", lab.GWPrivateAddr, reply, lab.Connects(spkts))
		default:
			notes = append(notes, fmt.Sprintf("data %v->%v: conntrack DNAT to %v", syn.Src, to, reply))
		}
	}
	return fails, notes
}

// conntrackReplySource returns the source of the reply direction of the
// gw's conntrack entry for the TCP flow from src to dst: for a DNATed
// flow, the backend it was sent to; for a connection the gateway itself
// accepted, dst again. The entry is matched on all four of its original
// addresses and ports, read back from the listing, so an older flow to
// the same port cannot stand in for it.
func conntrackReplySource(ctx context.Context, l *lab.Lab, src, dst netip.AddrPort) (netip.AddrPort, error) {
	out, err := l.Exec(ctx, l.GW, "conntrack", "-L", "-p", "tcp", "--orig-src", src.Addr().String(), "--orig-dst", dst.Addr().String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, line := range strings.Split(out, "\n") {
		// "tcp 6 117 TIME_WAIT src=A dst=B sport=a dport=b src=C dst=D
		// sport=c dport=d [ASSURED] ...": the original tuple, then the
		// reply's.
		kv := map[string][]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = append(kv[k], v)
			}
		}
		if len(kv["src"]) < 2 || len(kv["sport"]) < 2 || len(kv["dst"]) < 1 || len(kv["dport"]) < 1 {
			continue
		}
		orig, err1 := netip.ParseAddrPort(kv["src"][0] + ":" + kv["sport"][0])
		origDst, err2 := netip.ParseAddrPort(kv["dst"][0] + ":" + kv["dport"][0])
		if err1 != nil || err2 != nil || orig != src || origDst != dst {
			continue
		}
		return netip.ParseAddrPort(kv["src"][1] + ":" + kv["sport"][1])
	}
	return netip.AddrPort{}, fmt.Errorf("no entry for %v->%v in the gateway's conntrack table", src, dst)
}

// TestTLSWireChecks proves that the FTPS suite's wire checks can fail: on
// made-up control channels, TLS after AUTH passes, and a 227 or a login
// in clear, a stream that stops being TLS, and no AUTH at all are
// reported; a client shown the server's certificate is reported.
func TestTLSWireChecks(t *testing.T) {
	ap := netip.MustParseAddrPort
	ctl, cli := ap("203.0.113.1:21"), ap("203.0.113.10:50000")
	rec := func(typ byte, n int) string {
		return string([]byte{typ, 3, 3, byte(n >> 8), byte(n)}) + strings.Repeat("x", n)
	}
	tlsOK := rec(22, 300) + rec(23, 40)
	conn := func(cmds, replies string) []lab.Packet {
		return []lab.Packet{
			{Src: cli, Dst: ctl, SYN: true, Seq: 1000},
			{Src: ctl, Dst: cli, SYN: true, ACK: true, Seq: 5000},
			{Src: ctl, Dst: cli, Payload: []byte(replies), Seq: 5001},
			{Src: cli, Dst: ctl, Payload: []byte(cmds), Seq: 1001},
		}
	}
	greeting, auth := "220 hello\r\n234 go ahead\r\n", "AUTH TLS\r\n"
	for _, tc := range []struct {
		name     string
		pkts     []lab.Packet
		implicit bool
		expect   string // "" for no failure
	}{
		{"TLS after AUTH", conn(auth+tlsOK, greeting+tlsOK), false, ""},
		{"implicit", conn(tlsOK, tlsOK), true, ""},
		{"227 in clear", conn(auth+tlsOK, greeting+tlsOK+"227 Entering Passive Mode (203,0,113,2,156,64)\r\n"), false, "not a TLS record"},
		{"login in clear", conn("USER x\r\n"+auth+tlsOK, greeting+tlsOK), false, "login in clear"},
		{"no AUTH", conn("USER x\r\nPASV\r\n", "220 hi\r\n227 Entering Passive Mode (192,0,2,10,117,48)\r\n"), false, "227 in clear"},
		{"no AUTH, login", conn("USER x\r\nPASV\r\n", "220 hi\r\n"), false, "login in clear"},
		{"nothing after AUTH", conn(auth, greeting), false, "nothing follows"},
		{"implicit in clear", conn("USER x\r\n", "220 hi\r\n"), true, "not a TLS record"},
	} {
		f, _ := checkTLSControl("link", tc.pkts, ctl, tc.implicit)
		fails := strings.Join(f, "; ")
		switch {
		case tc.expect == "" && fails != "":
			t.Errorf("%s: %s", tc.name, fails)
		case tc.expect != "" && !strings.Contains(fails, tc.expect):
			t.Errorf("%s: got %q, want a failure with %q", tc.name, fails, tc.expect)
		}
	}

	gw := lab.Cert{CommonName: "pasvgate test gateway", SHA256: strings.Repeat("a", 64)}
	srv := lab.Cert{CommonName: "pasvgate test FTP server", SHA256: strings.Repeat("b", 64)}
	for _, tc := range []struct {
		name   string
		pc     lab.PeerCert
		err    error
		expect string
	}{
		{"gateway's", lab.PeerCert{SHA256: gw.SHA256, Subject: "CN=" + gw.CommonName}, nil, ""},
		{"gateway's subject only", lab.PeerCert{Subject: "CN=" + gw.CommonName}, nil, ""},
		{"server's", lab.PeerCert{SHA256: srv.SHA256, Subject: "CN=" + srv.CommonName}, nil, "shown " + srv.CommonName},
		{"server's subject only", lab.PeerCert{Subject: "CN=" + srv.CommonName}, nil, "shown subject"},
		{"none", lab.PeerCert{}, errors.New("nothing"), "peer certificate"},
	} {
		fails := strings.Join(checkPeerCert(tc.pc, tc.err, gw, srv), "; ")
		switch {
		case tc.expect == "" && fails != "":
			t.Errorf("%s: %s", tc.name, fails)
		case tc.expect != "" && !strings.Contains(fails, tc.expect):
			t.Errorf("%s: got %q, want a failure with %q", tc.name, fails, tc.expect)
		}
	}
}

// rawFTPS is the suite's own FTPS client, for what real clients do not
// try: it offers TLS 1.1 at most, which pasvgate (TLS 1.2 at least) must
// refuse, then on a second connection sends AUTH TLS twice, PBSZ 0, PROT
// P, CCC and PROT C, each with the answer pasvgate owes (503, 200, 200
// now that it relays protected data, a refusal, 200), logs in, and
// downloads in passive mode with the data back in clear, which must take
// the kernel path again. With protP it leaves PROT C out and downloads
// over TLS, resuming the control connection's session (it fails if the
// data handshake does not resume), and intrude, if set, runs between the
// PASV reply and its own data connection (an intruder's try). It reports
// the certificate it was shown as Ftplib does, and only downloads.
type rawFTPS struct {
	caFile  string
	protP   bool
	intrude func(ctx context.Context, target netip.AddrPort) (note string, err error)
}

func (rawFTPS) Name() string     { return "raw" }
func (rawFTPS) Available() error { return nil }
func (r rawFTPS) Run(ctx context.Context, l *lab.Lab, tr lab.Transfer) (lab.Result, error) {
	var log strings.Builder
	if tr.Op != lab.Get {
		return lab.Result{}, fmt.Errorf("raw FTPS client: %s: %w", tr.Op, lab.ErrUnsupported)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pem, err := os.ReadFile(r.caFile)
	if err != nil {
		return lab.Result{}, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	// The cache keeps the control connection's session (its TLS 1.3
	// ticket comes with the first replies) for the data connection.
	cfg := &tls.Config{RootCAs: roots, ServerName: tr.Host, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	err = r.run(ctx, l, tr, cfg, &log)
	return lab.Result{Log: log.String()}, err
}

// authTLS dials tr.Host:21, asks for AUTH TLS and makes the handshake
// with cfg.
func (rawFTPS) authTLS(ctx context.Context, l *lab.Lab, tr lab.Transfer, cfg *tls.Config) (*tls.Conn, error) {
	nc, err := l.Dial(ctx, tr.NS, "", net.JoinHostPort(tr.Host, "21"))
	if err != nil {
		return nil, fmt.Errorf("dial control: %w", err)
	}
	dl, _ := ctx.Deadline()
	_ = nc.SetDeadline(dl)
	// The server sends nothing after its 234 until the ClientHello, so
	// the reader's buffer holds nothing of the handshake (checked).
	c := textproto.NewConn(nc)
	if _, err := lab.RawCmd(c, 220, ""); err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := lab.RawCmd(c, 234, "AUTH TLS"); err != nil {
		nc.Close()
		return nil, err
	}
	if c.R.Buffered() > 0 {
		nc.Close()
		return nil, fmt.Errorf("%d bytes after the 234 in clear", c.R.Buffered())
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

func (r rawFTPS) run(ctx context.Context, l *lab.Lab, tr lab.Transfer, cfg *tls.Config, log *strings.Builder) error {
	old := cfg.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if tc, err := r.authTLS(ctx, l, tr, old); err == nil {
		v := tls.VersionName(tc.ConnectionState().Version)
		tc.Close()
		return fmt.Errorf("a TLS 1.1 client got a handshake (%s): want TLS 1.2 at least", v)
	} else {
		fmt.Fprintf(log, "TLS 1.1 refused: %v\n", err)
	}
	cfg.MinVersion = tls.VersionTLS12
	tc, err := r.authTLS(ctx, l, tr, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	st := tc.ConnectionState()
	leaf := st.PeerCertificates[0]
	sum := sha256.Sum256(leaf.Raw)
	fmt.Fprintf(log, "pglab peer certificate sha256=%s subject=%s\n", hex.EncodeToString(sum[:]), leaf.Subject)
	fmt.Fprintf(log, "%s\n", tls.VersionName(st.Version))
	c := textproto.NewConn(tc)
	type step struct {
		cmd    string
		expect int
	}
	steps := []step{{"AUTH TLS", 503}, {"PBSZ 0", 200}, {"PROT P", 200}, {"CCC", 5}, {"PROT C", 200}}
	if r.protP {
		steps = steps[:len(steps)-1]
	}
	steps = append(steps, step{"USER " + tr.User, 331}, step{"PASS " + tr.Password, 230}, step{"TYPE I", 200})
	for _, step := range steps {
		msg, err := lab.RawCmd(c, step.expect, "%s", step.cmd)
		fmt.Fprintf(log, "%s: %s\n", strings.Fields(step.cmd)[0], msg)
		if err != nil {
			return err
		}
	}
	msg, err := lab.RawCmd(c, 227, "PASV")
	if err != nil {
		return err
	}
	addrs := parse227s("227 " + msg)
	if len(addrs) != 1 {
		return fmt.Errorf("PASV: cannot parse %q", msg)
	}
	if r.intrude != nil {
		note, err := r.intrude(ctx, addrs[0])
		if err != nil {
			return err
		}
		fmt.Fprintln(log, note)
	}
	data, err := l.Dial(ctx, tr.NS, "", addrs[0].String())
	if err != nil {
		return fmt.Errorf("dial data %v: %w", addrs[0], err)
	}
	defer data.Close()
	dl, _ := ctx.Deadline()
	_ = data.SetDeadline(dl)
	var rd io.Reader = data
	if r.protP {
		// RETR first, then the handshake: a server may make its own with
		// the gateway only once it has the command, and the 150 may come
		// before or after it.
		if err := c.PrintfLine("RETR %s", tr.Remote); err != nil {
			return err
		}
		dtc := tls.Client(data, cfg)
		if err := dtc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("data connection's TLS handshake: %w", err)
		}
		if !dtc.ConnectionState().DidResume {
			return errors.New("the data connection's TLS session does not resume the control connection's")
		}
		fmt.Fprintln(log, "data TLS resumed the control session")
		if _, _, err := c.ReadResponse(1); err != nil {
			return fmt.Errorf("RETR: %w", err)
		}
		rd = dtc
	} else if _, err := lab.RawCmd(c, 1, "RETR %s", tr.Remote); err != nil {
		return err
	}
	f, err := os.Create(tr.Local)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, rd)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	// Closed before the 226 is awaited: ProFTPD lingers (TimeoutLinger)
	// until the client closes its side.
	data.Close()
	if err != nil {
		return fmt.Errorf("reading data: %w", err)
	}
	if _, err := lab.RawCmd(c, 226, ""); err != nil {
		return fmt.Errorf("after RETR: %w", err)
	}
	_, _ = lab.RawCmd(c, 2, "QUIT")
	return nil
}
