package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
	"github.com/pasvgate/pasvgate/test/bench/load"
)

// The FTPS bench (`go run ./test/bench -tls`): the same lab, vsftpd with
// TLS, and these columns, rounds interleaved:
//
//	T   direct TLS: the client straight to vsftpd, routed by the gw without
//	    NAT or helper (column C's rules), PROT P
//	TC  the same, PROT C, and T0 the same in plain FTP: what TLS on the
//	    control connection alone costs without pasvgate (PC against P0)
//	P   pasvgate with TLS on both legs, PROT P: data TLS terminated by
//	    pasvgate and relayed
//	PC  the same pasvgate, PROT C: control TLS, clear data on the kernel
//	    path
//	P0  the same pasvgate, plain FTP: what PC's bulk is held to
//	MT  ProFTPD mod_proxy, reverse proxy, FTPS on both legs, PROT P
//
// Every download is checked against the file's SHA-256 as it arrives,
// every upload on the server's disk afterwards; a PROT P column must show
// a TLS handshake on every data connection, resumed from the control
// connection's session and with the certificate of whoever the column says
// terminates it (the server for T, the gw for P and MT); a PROT C column
// must show clear data connections on pasvgate's kernel path. A column that
// fails is reported with its error and left out of the rounds after; the
// bench then exits 1, after its table.

// Names in the bench's certificates (RFC 2606's reserved .example).
const (
	serverTLSName = "server.pgbench.example"
	gwTLSName     = "gw.pgbench.example"
)

// benchPKI is a CA made at start-up and the two certificates it signs:
// the server's (name serverTLSName and IP serverAddr, the default name
// pasvgate checks) and the gateway's (gwTLSName and its two public
// addresses), all ECDSA P-256. Files are PEM under dir.
type benchPKI struct {
	ca                    string
	serverCert, serverKey string
	gwCert, gwKey         string
	pool                  *x509.CertPool
}

// newPKI writes the CA and the two certificates under dir.
func newPKI(dir string) (*benchPKI, error) {
	ca, err := probetest.NewCA("pgbench CA")
	if err != nil {
		return nil, err
	}
	p := &benchPKI{ca: filepath.Join(dir, "ca.pem"), pool: x509.NewCertPool()}
	p.pool.AddCert(ca.Cert)
	if err := os.WriteFile(p.ca, ca.PEM, 0o644); err != nil {
		return nil, err
	}
	now := time.Now()
	leaf := func(name string, ips []string, certFile, keyFile *string) error {
		c, err := ca.Issue(name, append([]string{name}, ips...), now.Add(-time.Hour), now.Add(48*time.Hour))
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			return err
		}
		*certFile, *keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		// The chain: the leaf, then the CA, as servers are usually set up.
		if err := writePEM(*certFile, 0o644, "CERTIFICATE", c.Certificate[0], ca.Cert.Raw); err != nil {
			return err
		}
		return writePEM(*keyFile, 0o600, "PRIVATE KEY", keyDER)
	}
	if err := leaf(serverTLSName, []string{serverAddr}, &p.serverCert, &p.serverKey); err != nil {
		return nil, err
	}
	if err := leaf(gwTLSName, []string{gwPublic, gwPublic2}, &p.gwCert, &p.gwKey); err != nil {
		return nil, err
	}
	return p, nil
}

func writePEM(path string, mode os.FileMode, typ string, ders ...[]byte) error {
	var b []byte
	for _, der := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})...)
	}
	return os.WriteFile(path, b, mode)
}

// vsftpdTLSConfig is what the FTPS bench adds to vsftpdConfig (%s: the
// certificate chain and its key). Anonymous users may use TLS and need not:
// column P0 logs in clear and PC keeps its data clear, so neither logins
// nor data are forced to TLS (force_anon_*_ssl=NO), which leaves PROT P to
// the client; the client proves that it got it. require_ssl_reuse is
// vsftpd's default, written out: every PROT P data connection must resume
// the control connection's TLS session. vsftpd leaves OpenSSL's session
// tickets on and TLS 1.3 allowed (it only turns SSLv2, SSLv3 and, with
// ssl_tlsv1=NO, TLS 1.0 off); Go's client resumes only from tickets.
// ssl_ciphers' default (DES-CBC3-SHA) would rule TLS 1.2 out; HIGH keeps
// it possible, though every client here negotiates TLS 1.3. No client
// certificate is asked for.
const vsftpdTLSConfig = `ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=NO
force_anon_data_ssl=NO
require_ssl_reuse=YES
ssl_request_cert=NO
ssl_ciphers=HIGH
rsa_cert_file=%s
rsa_private_key_file=%s
`

// tlsConfig is column MT's configuration beyond column M's: the module
// directory (both modules linked into one, as ModulePath takes one), the
// mod_tls lines that go before mod_proxy is loaded, and the ProxyTLS lines
// inside its block. mod_tls serves the client leg: TLS 1.2 and 1.3, no
// client certificates, TLS not required (as vsftpd here); its default of
// requiring that a data connection's session resume the control
// connection's is kept, as vsftpd's is. mod_proxy's leg to the server is
// always TLS (ProxyTLSEngine on) with the server's certificate verified,
// and protected data to the server (ProxyTLSTransferProtectionPolicy's
// default, required, written out).
//
// That leg is TLS 1.2 unless -modproxy-tls13. Over TLS 1.3, mod_proxy
// 0.9.3 fails uploads now and then: vsftpd (OpenSSL) sends a session
// ticket after each resumed handshake on a data connection; mod_proxy,
// which only writes on an upload's data connection, closes it with that
// ticket unread, so the kernel sends a reset right behind its
// close_notify, and vsftpd answers "426 Failure reading network stream."
// when the reset overtakes its reads (seen with tcpdump in the server's
// namespace: [FP.] then [R.] from the gw). Over TLS 1.2 the ticket comes
// inside the handshake, and nothing is left unread.
func (g *modProxyGW) tlsConfig() (modules string, tlsModule, proxyTLS []string, err error) {
	_, modDir := modProxyPaths()
	modTLS := modTLSPath()
	if _, err := os.Stat(modTLS); err != nil {
		return "", nil, nil, fmt.Errorf("column MT needs mod_tls (proftpd-mod-crypto unpacked under the test cache): %w", err)
	}
	modules = filepath.Join(g.dir, "modules")
	if err := os.MkdirAll(modules, 0o755); err != nil {
		return "", nil, nil, err
	}
	for name, target := range map[string]string{"mod_proxy.so": filepath.Join(modDir, "mod_proxy.so"), "mod_tls.so": modTLS} {
		link := filepath.Join(modules, name)
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return "", nil, nil, err
		}
	}
	tlsModule = []string{
		`LoadModule mod_tls.c`,
		`<IfModule mod_tls.c>`,
		`  TLSEngine on`,
		`  TLSLog ` + filepath.Join(g.dir, "tls.log"),
		`  TLSProtocol TLSv1.2 TLSv1.3`,
		`  TLSECCertificateFile ` + g.tls.gwCert,
		`  TLSECCertificateKeyFile ` + g.tls.gwKey,
		`  TLSRequired off`,
		`  TLSVerifyClient off`,
		`</IfModule>`,
	}
	serverLeg := "TLSv1.2"
	if g.tls13 {
		serverLeg = "TLSv1.2 TLSv1.3"
	}
	proxyTLS = []string{
		`  ProxyLog ` + filepath.Join(g.dir, "proxy.log"),
		`  ProxyTLSEngine on`,
		`  ProxyTLSProtocol ` + serverLeg,
		`  ProxyTLSCACertificateFile ` + g.tls.ca,
		`  ProxyTLSVerifyServer on`,
		`  ProxyTLSTransferProtectionPolicy required`,
	}
	return modules, tlsModule, proxyTLS, nil
}

// modTLSPath is mod_tls.so in the unpacked proftpd-mod-crypto.
func modTLSPath() string {
	bin, _ := modProxyPaths()
	cache := filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(bin))))
	return filepath.Join(cache, "proftpd-mod-crypto/usr/lib/proftpd/mod_tls.so")
}

// tlsColumn is one column of the FTPS bench: a gateway and how the client
// speaks through it.
type tlsColumn struct {
	gateway
	k, name string
	// args are ftpload's FTPS flags; none for plain FTP.
	args []string
	// prot is the data protection the client asks for: 'P', 'C', or 0 for
	// plain FTP.
	prot byte
	// pid is the gateway's process, whose CPU time a bulk transfer is
	// charged (with its children's: ProFTPD forks a process a session);
	// nil when the gateway is the kernel.
	pid func() int
	// wantData checks where the data connections went; nil leaves it to
	// the gateway's own check.
	wantData func(load.Result) error
	// idle says this column measures the memory of idle TLS sessions;
	// idleOnce, only in the first measured round (mod_proxy opens a few
	// sessions a second: 200 take half a minute).
	idle, idleOnce bool
	// rss says whether the idle sessions' cost is VmRSS (one process) or
	// the PSS of the gateway's process tree (a process a session).
	rss bool
}

func (c *tlsColumn) key() string          { return c.k }
func (c *tlsColumn) title() string        { return c.name }
func (c *tlsColumn) clientArgs() []string { return c.args }

// check proves the path: the TLS the client saw, then where its data
// connections went.
func (c *tlsColumn) check(ctx context.Context, res load.Result) error {
	t := res.TLS
	switch {
	case c.prot == 0 && t != nil:
		return errors.New("plain FTP column, but the client spoke TLS")
	case c.prot != 0 && t == nil:
		return errors.New("FTPS column, but the client reports no TLS")
	case c.prot == 'P' && (t.DataHandshakes == 0 || t.DataResumed != t.DataHandshakes || t.DataClear != 0):
		return fmt.Errorf("PROT P column: %d data TLS handshakes, %d resumed, %d clear data connections", t.DataHandshakes, t.DataResumed, t.DataClear)
	case c.prot == 'C' && (t.DataClear == 0 || t.DataHandshakes != 0):
		return fmt.Errorf("PROT C column: %d clear data connections, %d with TLS", t.DataClear, t.DataHandshakes)
	}
	if c.wantData != nil {
		return c.wantData(res)
	}
	return c.gateway.check(ctx, res)
}

// logTail is the gateway's log, for a failure's message.
func (c *tlsColumn) logTail() string {
	if lg, ok := c.gateway.(interface{ logTail() string }); ok {
		return lg.logTail()
	}
	return ""
}

// tlsRound is what one round measured through one column.
type tlsRound struct {
	small, bulk load.Result
	// cpu is the gateway's CPU time during the bulk transfers, client the
	// client's, and bulkBytes what they moved, both ways. The server's is
	// not measured: vsftpd's FTPS sessions end so that their processes are
	// not all waited for by one that lives on, and their time is lost.
	cpu, client time.Duration
	bulkBytes   int64
	// idleKiB is the memory one idle TLS session costs the gateway, when
	// idleDone says this round measured it.
	idleKiB  float64
	idleDone bool
}

// tlsBench is the FTPS bench's state.
type tlsBench struct {
	o     options
	l     *lab
	r     *runner
	pki   *benchPKI
	root  string // the server's root, where uploads land
	cols  []*tlsColumn
	small []string // ftpload's flags for the small part of a round
	bulk  []string // and for the bulk part
	upSum string   // SHA-256 every upload must have
	// results and failed are per column key.
	results map[string][]tlsRound
	failed  map[string]error
}

// benchTLS is `bench -tls`; everything it starts or creates is gone when
// it returns.
func benchTLS(ctx context.Context, o options, out, progress io.Writer) (retErr error) {
	start := time.Now()
	if o.server != "vsftpd" {
		return errors.New("-tls measures against vsftpd only")
	}
	bins, dataDir, root, cleanup, err := prepare(ctx, o)
	if err != nil {
		return err
	}
	defer cleanup()
	smallSize, bigSize := int64(1024), o.bulkMiB<<20
	smallSum, err := fileSHA256(filepath.Join(root, smallFile))
	if err != nil {
		return err
	}
	bigSum, err := fileSHA256(filepath.Join(root, bigFile))
	if err != nil {
		return err
	}
	pkiDir := filepath.Join(dataDir, "pki")
	if err := os.Mkdir(pkiDir, 0o755); err != nil {
		return err
	}
	pki, err := newPKI(pkiDir)
	if err != nil {
		return fmt.Errorf("making the bench's certificates: %w", err)
	}

	l, err := newLab(ctx, false, o.nsPrefix)
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, l.close()) }()
	if o.reserveDataPorts {
		// pasvgate listens for a PROT P data connection on a port of
		// --data-ports; the range lies inside the kernel's ephemeral
		// one, so one of the gw's own outgoing connections (to the
		// server) can hold the port. pasvgate then tries another, up to
		// four; the README advises this reservation where much PROT P
		// is relayed.
		if err := l.gw.Sysctl("net.ipv4.ip_local_reserved_ports", dataPorts); err != nil {
			return err
		}
	}
	srv, err := startServer(ctx, l, "vsftpd", "", dataDir, root, fmt.Sprintf(vsftpdTLSConfig, pki.serverCert, pki.serverKey))
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.stop(10 * time.Second); err != nil && !isSignalled(err) {
			retErr = errors.Join(retErr, fmt.Errorf("server: %w", err))
		}
	}()

	b := &tlsBench{o: o, l: l, pki: pki, root: root,
		r: &runner{l: l, ftpload: bins.ftpload, progress: progress,
			files: []string{"-small", smallFile, "-small-size", fmt.Sprint(smallSize), "-small-sha256", smallSum,
				"-big", bigFile, "-big-size", fmt.Sprint(bigSize), "-big-sha256", bigSum,
				"-upload", uploadFile, "-upload-size", fmt.Sprint(bigSize), "-keep-uploads", "-session-retr=false"}},
		small:   []string{"-gets", fmt.Sprint(o.gets), "-sessions", fmt.Sprint(o.sessions)},
		bulk:    []string{"-bulk", fmt.Sprint(o.bulk)},
		upSum:   load.UploadSHA256(bigSize),
		results: map[string][]tlsRound{},
		failed:  map[string]error{},
	}
	modProxyDir := ""
	if o.modProxy {
		if !modProxyAvailable() {
			fmt.Fprintln(progress, "bench: proftpd-core or proftpd-mod-proxy not unpacked (test/install-deps.sh): column MT left out")
		} else if modProxyDir, err = os.MkdirTemp(dataDir, "modproxy-"); err != nil {
			return err
		}
	}
	for _, c := range b.columns(bins.pasvgate, modProxyDir) {
		if slices.Contains(strings.Split(o.tlsColumns, ","), c.k) {
			b.cols = append(b.cols, c)
		}
	}
	if len(b.cols) == 0 {
		return fmt.Errorf("-tls-columns %q names no column", o.tlsColumns)
	}

	fmt.Fprintf(progress, "bench: lab up after %.1fs; check round\n", time.Since(start).Seconds())
	check := []string{"-gets", "3", "-sessions", "3"}
	for _, c := range b.cols {
		if _, err := b.round(ctx, c, check, []string{"-bulk", "1"}, false); err != nil {
			if !b.columnFailed(ctx, c, "check round", err, progress) {
				return err
			}
		}
	}
	deadline, _ := ctx.Deadline()
	roundsStart := time.Now()
	rounds := 0
	for round := 1; round <= o.rounds; round++ {
		if done := round - 1; done > 0 {
			if per := time.Since(roundsStart) / time.Duration(done); time.Until(deadline) < per+time.Minute {
				fmt.Fprintf(progress, "bench: stopped after %d of %d rounds to stay within -timeout %v\n", done, o.rounds, o.timeout)
				break
			}
		}
		for _, c := range b.cols {
			if b.failed[c.k] != nil {
				continue
			}
			t := time.Now()
			res, err := b.round(ctx, c, b.small, b.bulk, true)
			if err != nil {
				if !b.columnFailed(ctx, c, fmt.Sprintf("round %d", round), err, progress) {
					return err
				}
				continue
			}
			b.results[c.k] = append(b.results[c.k], res)
			fmt.Fprintf(progress, "bench: round %d/%d %-2s %5.1fs  get %.0f/s  sessions %.0f/s  down %.0f MB/s  up %.0f MB/s  cpu/GiB gw %.2fs client %.2fs",
				round, o.rounds, c.k, time.Since(t).Seconds(), res.small.PASVPerSec, res.small.SessionsPerSec,
				median(res.bulk.DownMBps), median(res.bulk.UpMBps), cpuPerGiB(res), perGiB(res.client, res))
			if res.idleDone {
				fmt.Fprintf(progress, "  idle %.1f KiB", res.idleKiB)
			}
			fmt.Fprintln(progress)
		}
		rounds = round
	}
	rep := &tlsReport{b: b, rounds: rounds, elapsed: time.Since(start), load: loadAvg()}
	if v, err := runLimit(ctx, 10*time.Second, l.gw, "", bins.pasvgate, "version"); err == nil {
		rep.version = strings.TrimSpace(v)
	}
	rep.write(out)
	if len(b.failed) > 0 {
		var keys []string
		for _, c := range b.cols {
			if b.failed[c.k] != nil {
				keys = append(keys, c.k)
			}
		}
		return fmt.Errorf("columns %s failed (see above)", strings.Join(keys, ", "))
	}
	return nil
}

// columnFailed records a column's failure, unless it is the lab's (rules
// left behind, which would bend every column after it) or the bench was
// stopped: then it returns false and the bench stops.
func (b *tlsBench) columnFailed(ctx context.Context, c *tlsColumn, when string, err error, progress io.Writer) bool {
	var lab *labError
	// An interrupt or the bench's -timeout fails no column: it ends the
	// bench.
	if errors.As(err, &lab) || ctx.Err() != nil {
		return false
	}
	b.failed[c.k] = fmt.Errorf("in the %s: %w", when, err)
	fmt.Fprintf(progress, "bench: %s FAILED %s\n", c.k, failureText(b.failed[c.k]))
	return true
}

// columnError is a column's failure with the gateway's log at the time.
type columnError struct {
	err error
	log string
}

func (e *columnError) Error() string { return e.err.Error() + "\ngateway's output:\n" + e.log }
func (e *columnError) Unwrap() error { return e.err }

// failureText is a column's failure for people: what the client said
// (without ftpload's long command line), then the end of the gateway's
// log.
func failureText(err error) string {
	msg, log := err.Error(), ""
	var ce *columnError
	if errors.As(err, &ce) {
		log = ce.log
		msg = strings.TrimSuffix(msg, ce.Error()) + ce.err.Error()
	}
	if i := strings.Index(msg, ": ftpload: "); i >= 0 {
		msg = msg[i+2:]
	}
	if log = strings.TrimSpace(log); log != "" {
		msg += "\n  the gateway's log ends:\n" + tail(log, 1500)
	}
	return msg
}

// labError is a failure to bring the lab back to its baseline.
type labError struct{ err error }

func (e *labError) Error() string { return e.err.Error() }
func (e *labError) Unwrap() error { return e.err }

// column is the column named k, or nil.
func (b *tlsBench) column(k string) *tlsColumn {
	for _, c := range b.cols {
		if c.k == k {
			return c
		}
	}
	return nil
}

// columns are the FTPS bench's columns, in the order each round runs them.
func (b *tlsBench) columns(pasvgate, modProxyDir string) []*tlsColumn {
	l, pki := b.l, b.pki
	ftps := func(name, prot string) []string {
		return []string{"-tls-ca", pki.ca, "-tls-name", name, "-prot", prot}
	}
	// pasvgate with its default flags (--backend auto) and TLS on both
	// legs: the server's certificate is checked against the bench's CA for
	// the server's address, --upstream's host. No limit per client
	// address: the idle sessions all come from one.
	pgArgs := []string{"--tls", "allow", "--tls-cert", pki.gwCert, "--tls-key", pki.gwKey,
		"--upstream-ca", pki.ca, "--max-sessions-per-ip", "0"}
	pg := func(k string) *pasvgateGW {
		return &pasvgateGW{k: k, ipt: iptNFT, l: l, bin: pasvgate, extra: pgArgs}
	}
	p, pc, p0 := pg("P"), pg("PC"), pg("P0")
	// The direct columns: column C's plain routing.
	routed := func() gateway {
		return &staticGW{k: "C", name: "routed", l: l, rules: routedRules,
			dial: mustAddrPort(serverAddr + ":21"), wantData: serverAddr}
	}
	pid := func(g *pasvgateGW) func() int { return func() int { return g.p.pid() } }
	cols := []*tlsColumn{{
		gateway: routed(), k: "T", name: "direct TLS: the client to vsftpd, routed by the gw without NAT or helper, PROT P",
		args: ftps(serverTLSName, "P"), prot: 'P',
	}, {
		gateway: routed(), k: "TC", name: "direct TLS, PROT C: what PC is to P0 without pasvgate",
		args: ftps(serverTLSName, "C"), prot: 'C',
	}, {
		gateway: routed(), k: "T0", name: "direct plain FTP (no AUTH): TC's reference",
	}, {
		gateway: p, k: "P", name: "pasvgate, TLS on both legs (--tls allow, --upstream-tls auto), PROT P: data TLS terminated and relayed by pasvgate",
		args: ftps(gwTLSName, "P"), prot: 'P', pid: pid(p),
		// Where pasvgate takes a protected data connection is its own
		// business, as long as it is the gw's: the certificate and the
		// resumed session prove who terminated it.
		wantData: func(res load.Result) error {
			if res.PASVAddr == "" {
				return errors.New("pasvgate PROT P: no data address recorded")
			}
			for _, a := range []string{res.PASVAddr, res.EPSVAddr} {
				if a == "" {
					continue // no EPSV in a bulk run
				}
				ap, err := netip.ParseAddrPort(a)
				if err != nil || (ap.Addr().String() != gwPublic && ap.Addr().String() != gwPublic2) {
					return fmt.Errorf("pasvgate PROT P: a data connection went to %q, not to the gw", a)
				}
			}
			return nil
		},
	}, {
		gateway: pc, k: "PC", name: "the same pasvgate, PROT C: control TLS on both legs, data clear through the kernel (DNAT mapping)",
		args: ftps(gwTLSName, "C"), prot: 'C', pid: pid(pc), idle: true, rss: true,
	}, {
		gateway: p0, k: "P0", name: "the same pasvgate, plain FTP (no AUTH): what PC's bulk is held to",
		pid: pid(p0),
	}}
	if modProxyDir != "" {
		m := &modProxyGW{l: l, dir: modProxyDir, tls: pki, tls13: b.o.modProxyTLS13}
		cols = append(cols, &tlsColumn{
			gateway: m, k: "MT", name: m.title(),
			args: ftps(gwTLSName, "P"), prot: 'P', pid: func() int { return m.p.pid() }, idle: true, idleOnce: true,
		})
	}
	return cols
}

// round runs one column once: the small transfers and sessions, then the
// bulk transfers with the gateway's CPU time read around them, then (when
// measured) idle sessions; checks the path and the uploads; and takes the
// gateway down, leaving the gw at its baseline.
func (b *tlsBench) round(ctx context.Context, c *tlsColumn, small, bulk []string, idle bool) (res tlsRound, err error) {
	idle = idle && c.idle && b.o.idle > 0 && (!c.idleOnce || len(b.results[c.k]) == 0)
	defer func() {
		if err != nil {
			err = &columnError{err: err, log: c.logTail()}
		}
		// A gateway that fails to stop fails its column; rules left
		// behind fail the lab.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		err = errors.Join(err, c.down(fctx))
		if lerr := errors.Join(b.l.checkClean(fctx, c.k+" ("+c.name+")"), b.l.flushConntrack()); lerr != nil {
			err = errors.Join(err, &labError{lerr})
		}
	}()
	if err := c.up(ctx, false); err != nil {
		return res, err
	}
	args := func(a []string) []string { return append(append([]string(nil), c.args...), a...) }
	if res.small, err = b.r.load(ctx, b.l.client, c.target(), args(small)...); err != nil {
		return res, err
	}
	if err := c.check(ctx, res.small); err != nil {
		return res, err
	}
	var cpu0 time.Duration
	if c.pid != nil {
		if cpu0, err = settledCPU(c.pid()); err != nil {
			return res, err
		}
	}
	if res.bulk, err = b.r.load(ctx, b.l.client, c.target(), args(bulk)...); err != nil {
		return res, err
	}
	if c.pid != nil {
		cpu1, err := settledCPU(c.pid())
		if err != nil {
			return res, err
		}
		res.cpu = cpu1 - cpu0
	}
	res.client = time.Duration(res.bulk.ClientCPUSeconds * float64(time.Second))
	if err := c.check(ctx, res.bulk); err != nil {
		return res, err
	}
	for _, up := range res.bulk.Uploads {
		path := filepath.Join(b.root, filepath.FromSlash(up))
		sum, err := fileSHA256(path)
		if err != nil {
			return res, fmt.Errorf("checking upload %s: %w", up, err)
		}
		if sum != b.upSum {
			return res, fmt.Errorf("upload %s: the server has SHA-256 %s, want %s", up, sum, b.upSum)
		}
		res.bulkBytes += 2 * (b.o.bulkMiB << 20) // that upload and its download
		if err := os.Remove(path); err != nil {
			return res, err
		}
	}
	if len(res.bulk.Uploads) != len(res.bulk.DownMBps) {
		return res, fmt.Errorf("%d uploads for %d downloads", len(res.bulk.Uploads), len(res.bulk.DownMBps))
	}
	if idle {
		if res.idleKiB, err = b.idleSessions(ctx, c); err != nil {
			return res, fmt.Errorf("idle sessions: %w", err)
		}
		res.idleDone = true
	}
	return res, nil
}

// idleSessions opens b.o.idle TLS sessions through c (AUTH TLS, login,
// PBSZ, PROT), leaves them idle for a moment, and returns what each cost
// the gateway in KiB: the growth of its VmRSS (or of its process tree's
// PSS, for a gateway with a process per session) divided by their number.
// They are closed with QUIT before it returns.
func (b *tlsBench) idleSessions(ctx context.Context, c *tlsColumn) (float64, error) {
	mem := func() (int64, error) {
		if c.rss {
			rss, _, err := procMemory(c.pid())
			return rss, err
		}
		return treePSS(c.pid())
	}
	before, err := mem()
	if err != nil {
		return 0, err
	}
	name := gwTLSName
	t := load.TLS{Config: &tls.Config{RootCAs: b.pki.pool, ServerName: name}, Private: c.prot == 'P'}
	var stats load.TLSStats
	var conns []*load.Conn
	defer func() {
		for _, cn := range conns {
			_ = cn.Quit()
		}
	}()
	for i := range b.o.idle {
		nc, err := b.l.client.Dial(ctx, "tcp", "", c.target().String())
		if err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		cn, err := load.NewConn(nc, c.target(), 30*time.Second)
		if err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		conns = append(conns, cn)
		if err := cn.StartTLS(ctx, t, &stats); err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		if err := cn.Login(); err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		if err := cn.Protect(); err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
	}
	// Whatever the gateway does once a session is set up (a timer, a
	// buffer given back) has had time to happen.
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(time.Second):
	}
	after, err := mem()
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(len(conns)), nil
}

// procCPU is a process's CPU time, user and system, its own and that of
// its children it has waited for (/proc/PID/stat fields 14-17).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing one, where field 3 is.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("reading /proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, fmt.Errorf("reading /proc/%d/stat: %q", pid, b)
	}
	var ticks int64
	for _, s := range f[11:15] {
		var n int64
		if _, err := fmt.Sscan(s, &n); err != nil {
			return 0, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	// USER_HZ is 100 on every Linux this runs on.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// settledCPU is procCPU once pid has no child process left, so that a
// ProFTPD session that has just ended is counted: its time joins its
// parent's when the parent has waited for it. Bounded by 10 s.
func settledCPU(pid int) (time.Duration, error) {
	for deadline := time.Now().Add(10 * time.Second); ; {
		kids, err := children(pid)
		if err != nil {
			return 0, err
		}
		if len(kids) == 0 {
			return procCPU(pid)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("pid %d still has children %v after 10 s", pid, kids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// children are the PIDs whose parent is pid.
func children(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, e := range ents {
		var p int
		if _, err := fmt.Sscan(e.Name(), &p); err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue // gone meanwhile
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == fmt.Sprint(pid) {
			kids = append(kids, p)
		}
	}
	return kids, nil
}

// treePSS is the proportional set size (kB) of pid and its children.
func treePSS(pid int) (int64, error) {
	kids, err := children(pid)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range append(kids, pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				var n int64
				if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &n); err != nil {
					return 0, err
				}
				total += n
			}
		}
	}
	return total, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// cpuPerGiB is the gateway's CPU seconds per GiB of bulk data relayed.
func cpuPerGiB(r tlsRound) float64 { return perGiB(r.cpu, r) }

// perGiB is d in seconds per GiB of r's bulk data.
func perGiB(d time.Duration, r tlsRound) float64 {
	if r.bulkBytes == 0 {
		return 0
	}
	return d.Seconds() / (float64(r.bulkBytes) / (1 << 30))
}
