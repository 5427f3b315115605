// Package probe checks an FTP server's data connections the way a client
// sees them: it logs in, asks for passive (and optionally active) data
// connections, tries to open each one and list the root directory, and
// explains what it found, with a fix named in the setting of the server
// software that answered.
//
// `pasvgate probe` is a thin command around Run; tests call Run directly.
// All FTP parsing goes through proxy/ftp, so the probe reads a 227 exactly
// as the proxy would.
package probe

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// DefaultTimeout bounds each step when Options.Timeout is zero. A data
// port that has not answered in this long will not answer a real client
// either: FTP clients wait about as long before they give up on PASV.
const DefaultTimeout = 3 * time.Second

// Anonymous login, as curl sends it (RFC 1635: the password is a mail
// address by convention and checked by no current server).
const (
	anonymousUser     = "anonymous"
	anonymousPassword = "ftp@example.com"
)

// Limits on what a server can make the probe read. The probe is pointed
// at servers that are broken by assumption; none of them may keep it busy
// beyond a timeout per step or make it hold much memory.
const (
	maxReplyLines  = 1000 // lines in one reply (a FEAT list is ~20)
	maxPreliminary = 5    // 1xx replies before the final one
	maxTextLen     = 300  // bytes of a server line kept in a report
	pollInterval   = 50 * time.Millisecond
)

// Options say what to probe and how.
type Options struct {
	// Addr is the server's control address, "host:port". host may be a
	// name; the Dialer resolves it.
	Addr string
	// User and Password log in. An empty User logs in anonymously.
	User, Password string
	// Timeout bounds each step: the control connection, each reply, each
	// data connection and each listing. Zero means DefaultTimeout.
	Timeout time.Duration
	// Active also tries active mode (PORT and EPRT): the probe listens on
	// its own end of the control connection and asks the server to
	// connect there.
	Active bool
	// CAFile names a PEM file of the CA certificates the server's TLS
	// certificate must chain to, instead of the system's roots.
	CAFile string
	// ServerName is the name the server's TLS certificate must be valid
	// for, and the SNI sent; empty means the host in Addr.
	ServerName string
	// Dialer makes the control and data connections, and ListenConfig the
	// active-mode listener; nil means the zero value.
	Dialer       *net.Dialer
	ListenConfig *net.ListenConfig
}

// Run probes the server and returns the report. The error is only for
// Options that cannot be used; everything that goes wrong on the network
// is a finding in the report (see Report.Verdict).
//
// Run makes every socket on the goroutine that called it, so a caller
// whose thread has entered a network namespace gets all of the probe's
// sockets there: it waits for a data connection and a reply by polling
// both in turn rather than in two goroutines. ctx bounds the whole probe
// (its end interrupts a blocked step at once); each step is further
// bounded by Options.Timeout.
func Run(ctx context.Context, opt Options) (Report, error) {
	if opt.Addr == "" {
		return Report{}, errors.New("probe: no server address")
	}
	if strings.ContainsAny(opt.User+opt.Password, "\r\n\x00") {
		// They are sent as command arguments: a line break would be a
		// second command.
		return Report{}, errors.New("probe: user or password contains a line break or NUL")
	}
	p := &prober{ctx: ctx, opt: opt, timeout: opt.Timeout, dialer: opt.Dialer, lc: opt.ListenConfig,
		serverName: opt.ServerName, rootsName: systemRoots}
	if p.serverName == "" {
		host, _, err := net.SplitHostPort(opt.Addr)
		if err != nil {
			return Report{}, fmt.Errorf("probe: server address: %w", err)
		}
		p.serverName = host
	}
	if opt.CAFile != "" {
		pem, err := os.ReadFile(opt.CAFile)
		if err != nil {
			return Report{}, fmt.Errorf("probe: reading the CA file: %w", err)
		}
		p.roots = x509.NewCertPool()
		if !p.roots.AppendCertsFromPEM(pem) {
			return Report{}, fmt.Errorf("probe: %s holds no PEM certificate", opt.CAFile)
		}
		p.rootsName = "CA file " + opt.CAFile
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	if p.dialer == nil {
		p.dialer = &net.Dialer{}
	}
	if p.lc == nil {
		p.lc = &net.ListenConfig{}
	}
	p.user, p.pass = opt.User, opt.Password
	target := url.URL{Scheme: "ftp", Host: opt.Addr}
	if p.user == "" {
		p.user, p.pass = anonymousUser, anonymousPassword
	} else {
		target.User = url.User(p.user)
	}
	p.rep.Target = target.String()
	p.rep.User = p.user
	p.rep.Modes = []ModeResult{}
	p.run()
	p.rep.Findings = analyze(&p.rep, p.timeout)
	p.rep.Verdict = verdictOf(&p.rep)
	return p.rep, nil
}

// prober is the state of one Run.
type prober struct {
	ctx        context.Context
	opt        Options
	timeout    time.Duration
	dialer     *net.Dialer
	lc         *net.ListenConfig
	user, pass string
	rep        Report
	c          *ctrl // the logged-in session, nil when there is none
	// The FTPS checks' settings: the name and roots the certificate is
	// checked against, and how the roots are named in reports.
	serverName string
	roots      *x509.CertPool // nil: the system's
	rootsName  string
}

func (p *prober) run() {
	p.plain()
	if p.rep.Connected && p.rep.AuthTLS == AuthOffered {
		p.rep.TLS = p.probeTLS()
	}
}

// now is the time certificates are judged at.
func (p *prober) now() time.Time { return time.Now() }

// plain probes over plain FTP: the greeting, whether AUTH TLS is offered,
// the login and each data-connection mode.
func (p *prober) plain() {
	c, err := p.connect(true)
	if err != nil {
		p.rep.failure = err.Error()
		return
	}
	p.rep.Connected = true
	if p.checkAuth(c) {
		// The server now expects a TLS handshake (or the channel is out
		// of step): start over on a new connection.
		c.close()
		if c, err = p.connect(false); err != nil {
			p.rep.failure = err.Error()
			return
		}
	}
	if err := p.login(c); err != nil {
		p.rep.failure = err.Error()
		c.close()
		return
	}
	p.rep.LoggedIn = true
	p.c = c
	defer p.quit() // before the FTPS checks, which use p.c for their session

	p.rep.Modes = append(p.rep.Modes, p.passive("PASV"), p.passive("EPSV"))
	if p.opt.Active {
		p.rep.Modes = append(p.rep.Modes, p.active("PORT"), p.active("EPRT"))
	}
}

// deadline is when the current step must be done: already past once ctx
// has ended, so that no step after an interruption waits.
func (p *prober) deadline() time.Time {
	if p.ctx.Err() != nil {
		return time.Unix(1, 0)
	}
	d := time.Now().Add(p.timeout)
	if cd, ok := p.ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

// connect opens a control connection and reads the greeting. The first
// connection records the addresses and the greeting in the report.
func (p *prober) connect(first bool) (*ctrl, error) {
	if err := p.ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted: %w", err)
	}
	ctx, cancel := context.WithDeadline(p.ctx, p.deadline())
	defer cancel()
	conn, err := p.dialer.DialContext(ctx, "tcp", p.opt.Addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %s", p.opt.Addr, p.describe(err))
	}
	c := &ctrl{conn: conn, r: ftp.NewReader(conn, 0), stop: p.interruptible(conn)}
	p.rep.ControlAddress = addrPortOf(conn.RemoteAddr()).String()
	p.rep.LocalAddress = addrPortOf(conn.LocalAddr()).Addr().String()
	var r reply
	for range maxPreliminary {
		if r, err = c.readReply(p.deadline()); err != nil || r.code != 120 {
			break // 120: "ready in a few minutes", the greeting follows
		}
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("no greeting from %s: %s", p.rep.ControlAddress, p.describe(err))
	}
	if first {
		p.rep.Banner = clean(r.lines[0])
		p.rep.Server, p.rep.ServerVersion = Identify(r.lines)
		p.rep.ServerVersion = clean(p.rep.ServerVersion)
	}
	if r.code != ftp.CodeServiceReady {
		c.close()
		return nil, fmt.Errorf("%s greeted with %s", p.rep.ControlAddress, clean(r.last()))
	}
	return c, nil
}

// checkAuth finds out whether the server offers FTPS, without starting
// TLS: FEAT first, and only if FEAT lists no AUTH, the AUTH TLS command
// itself, before login as RFC 4217 has it. It reports whether the
// connection can no longer be used for plain FTP.
func (p *prober) checkAuth(c *ctrl) (reopen bool) {
	r, err := c.command(p, "FEAT")
	if err != nil {
		p.rep.AuthTLS, p.rep.AuthReply = AuthNoAnswer, "FEAT: "+p.describe(err)
		return true
	}
	if r.code == ftp.CodeSystemStatus && len(r.lines) > 2 {
		for _, line := range r.lines[1 : len(r.lines)-1] {
			if isAuthTLSFeature(line) {
				p.rep.AuthTLS, p.rep.AuthReply = AuthOffered, "FEAT lists "+clean(strings.TrimSpace(line))
				return false
			}
		}
	}
	r, err = c.command(p, "AUTH TLS")
	if err != nil {
		p.rep.AuthTLS, p.rep.AuthReply = AuthNoAnswer, "AUTH TLS: "+p.describe(err)
		return true
	}
	p.rep.AuthReply = clean(r.last())
	switch r.code {
	case ftp.CodeAuthOK, 334:
		// 334 is the RFC 2228 "ADAT needed" some old servers give to
		// AUTH TLS. Either way the server now waits for a handshake.
		p.rep.AuthTLS = AuthOffered
		return true
	case ftp.CodePolicyRefused:
		p.rep.AuthTLS = AuthRefused
		if isPasvgateAuthRefusal(r.last()) {
			p.rep.AuthTLS = AuthByPasvgate
		}
	default:
		p.rep.AuthTLS = AuthNotOffered
	}
	return false
}

// isAuthTLSFeature reports whether a FEAT line offers AUTH TLS (RFC 4217
// lists the mechanisms after AUTH, separated by ';': "AUTH TLS;TLS-C;SSL").
func isAuthTLSFeature(line string) bool {
	f := strings.Fields(line)
	if len(f) < 2 || !strings.EqualFold(f[0], "AUTH") {
		return false
	}
	for _, m := range strings.FieldsFunc(strings.Join(f[1:], " "), func(r rune) bool { return r == ';' || r == ' ' }) {
		if strings.EqualFold(m, "TLS") || strings.EqualFold(m, "TLS-C") {
			return true
		}
	}
	return false
}

// login sends USER and, when asked for it, PASS.
func (p *prober) login(c *ctrl) error {
	r, err := c.command(p, "USER "+p.user)
	if err == nil && (r.code == ftp.CodeNeedPassword || r.code == 332) {
		r, err = c.command(p, "PASS "+p.pass)
	}
	switch {
	case err != nil:
		return fmt.Errorf("login as %s: %s", p.user, p.describe(err))
	case r.code != ftp.CodeLoggedIn && r.code != 202:
		// 202: "command superfluous", what some servers answer a PASS
		// they did not need.
		return fmt.Errorf("login as %s refused: %s", p.user, clean(r.last()))
	}
	return nil
}

// session returns the logged-in control connection, making a new one if
// an earlier step left the old one out of step. It returns nil and why
// when there is none to be had.
func (p *prober) session() (*ctrl, string) {
	if p.c != nil {
		return p.c, ""
	}
	c, err := p.connect(false)
	if err != nil {
		return nil, "could not connect again: " + err.Error()
	}
	if err := p.login(c); err != nil {
		c.close()
		return nil, "could not log in again: " + err.Error()
	}
	p.c = c
	return c, ""
}

// drop abandons the session after a step that left a reply unread: the
// next step starts a new one rather than read an old reply as its own.
func (p *prober) drop() {
	if p.c != nil {
		p.c.close()
		p.c = nil
	}
}

func (p *prober) quit() {
	if p.c == nil {
		return
	}
	if err := p.c.send(p, "QUIT"); err == nil {
		_, _ = p.c.readReply(time.Now().Add(min(p.timeout, time.Second)))
	}
	p.drop()
}

// passive runs PASV or EPSV: ask, connect where the reply says, list.
func (p *prober) passive(mode string) ModeResult {
	m := ModeResult{Mode: mode, Attempts: []Attempt{}}
	c, why := p.session()
	if c == nil {
		m.Skipped = why
		return m
	}
	ctrlAddr := addrPortOf(c.conn.RemoteAddr())
	adv, ok := p.askPassive(c, &m)
	if !ok {
		return m
	}
	var first Attempt
	if adv.Addr().IsUnspecified() {
		// Connecting to 0.0.0.0 reaches this host on Linux, which would
		// prove nothing about the server.
		first = Attempt{Via: "advertised", Address: adv.String(), Error: "not an address to connect to"}
	} else {
		first = p.tryPassive(c, "advertised", adv)
	}
	m.Attempts = append(m.Attempts, first)
	if mode != "PASV" || adv.Addr() == ctrlAddr.Addr() {
		return m
	}
	// Where clients that ignore the 227 address connect. The server is
	// still listening on the port if the first attempt did not connect;
	// otherwise that port is used up and a second PASV gives another.
	port := adv.Port()
	if first.Connected {
		if c, why = p.session(); c == nil {
			m.Attempts = append(m.Attempts, Attempt{Via: "control", Error: why})
			return m
		}
		again := ModeResult{Mode: "PASV"}
		ap, ok := p.askPassive(c, &again)
		if !ok {
			m.Attempts = append(m.Attempts, Attempt{Via: "control", Error: "the second PASV got no address: " + strings.TrimSpace(again.Reply+" "+again.Error)})
			return m
		}
		port = ap.Port()
	}
	m.Attempts = append(m.Attempts, p.tryPassive(c, "control", netip.AddrPortFrom(ctrlAddr.Addr(), port)))
	return m
}

// askPassive sends PASV or EPSV (m.Mode) and returns the data address the
// reply names: for EPSV, the control connection's address with the 229's
// port. ok is false when the reply gives no address; m says why.
func (p *prober) askPassive(c *ctrl, m *ModeResult) (ap netip.AddrPort, ok bool) {
	r, err := c.command(p, m.Mode)
	if err != nil {
		m.Error = p.describe(err)
		p.drop()
		return ap, false
	}
	m.Code, m.Reply = r.code, clean(r.last())
	switch {
	case m.Mode == "PASV" && r.code == ftp.CodeEnteringPassive:
		ap, err = ftp.ParsePASV(r.text())
		if err == nil {
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			m.Class = Classify(ap.Addr())
		}
	case m.Mode == "EPSV" && r.code == ftp.CodeEnteringExtPassive:
		var port uint16
		port, err = ftp.ParseEPSV(r.text())
		ap = netip.AddrPortFrom(addrPortOf(c.conn.RemoteAddr()).Addr(), port)
	default:
		return ap, false
	}
	if err != nil {
		m.Error = err.Error()
		return netip.AddrPort{}, false
	}
	m.Advertised = ap.String()
	return ap, true
}

// tryPassive connects to a passive data address and lists over it.
func (p *prober) tryPassive(c *ctrl, via string, to netip.AddrPort) Attempt {
	a := Attempt{Via: via, Address: to.String()}
	ctx, cancel := context.WithDeadline(p.ctx, p.deadline())
	defer cancel()
	data, err := p.dialer.DialContext(ctx, "tcp", to.String())
	if err != nil {
		// Nothing was sent: the control channel is still in step, and
		// the server still waits on that port.
		a.Error = p.describe(err)
		return a
	}
	a.Connected = true
	defer data.Close()
	defer p.interruptible(data)()
	if err := c.send(p, "LIST"); err != nil {
		a.Error = "sending LIST: " + p.describe(err)
		p.drop()
		return a
	}
	p.transfer(c, data, false, &a)
	return a
}

// transfer reads a listing from data and the replies to LIST around it.
// prelim says a 1xx reply has already been read. It drops the session if
// it leaves a reply unread.
func (p *prober) transfer(c *ctrl, data net.Conn, prelim bool, a *Attempt) {
	if !prelim {
		r, err := c.readReply(p.deadline())
		if err != nil {
			a.Error = "no reply to LIST: " + p.describe(err)
			p.drop()
			return
		}
		if r.code >= 200 {
			// Refused, or done without a transfer.
			a.ListCode, a.ListReply = r.code, clean(r.last())
			return
		}
	}
	n, err := drain(data, p.deadline())
	a.ListBytes = n
	// Close before waiting for the final reply, as clients do: ProFTPD
	// holds its 226 back until the client has closed the data connection
	// (its lingering close).
	data.Close()
	if err != nil {
		a.Error = "listing did not finish: " + p.describe(err)
		p.drop()
		return
	}
	r, err := c.final(p)
	if err != nil {
		a.Error = "no reply after the listing: " + p.describe(err)
		p.drop()
		return
	}
	a.ListCode, a.ListReply = r.code, clean(r.last())
	a.Listed = r.code == ftp.CodeClosingData || r.code == ftp.CodeFileActionOK
}

// active runs PORT or EPRT: listen, tell the server, wait for it.
func (p *prober) active(mode string) (m ModeResult) {
	m = ModeResult{Mode: mode, Attempts: []Attempt{}}
	c, why := p.session()
	if c == nil {
		m.Skipped = why
		return m
	}
	local := addrPortOf(c.conn.LocalAddr()).Addr()
	if mode == "PORT" && !local.Is4() {
		m.Skipped = "PORT carries only IPv4 addresses, and the control connection is IPv6"
		return m
	}
	ln, err := p.lc.Listen(p.ctx, "tcp", netip.AddrPortFrom(local, 0).String())
	if err != nil {
		m.Skipped = "could not listen on " + local.String() + ": " + p.describe(err)
		return m
	}
	defer ln.Close()
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		m.Skipped = fmt.Sprintf("listener is a %T, not TCP", ln)
		return m
	}
	defer p.interruptible(tl)()
	at := netip.AddrPortFrom(local, addrPortOf(ln.Addr()).Port())
	var line []byte
	if mode == "PORT" {
		line = ftp.AppendPORT(nil, at)
	} else {
		line = ftp.AppendEPRT(nil, at)
	}
	r, err := c.exchange(p, line)
	if err != nil {
		m.Error = p.describe(err)
		p.drop()
		return m
	}
	m.Code, m.Reply = r.code, clean(r.last())
	m.Advertised = at.String()
	if r.code != ftp.CodeOK {
		return m
	}
	a := Attempt{Via: "server", Address: at.String()}
	// m is the named result, so the attempt lands in what is returned.
	defer func() { m.Attempts = append(m.Attempts, a) }()
	if err := c.send(p, "LIST"); err != nil {
		a.Error = "sending LIST: " + p.describe(err)
		p.drop()
		return m
	}
	data, prelim := p.connectBack(c, tl, &a)
	if data == nil {
		return m
	}
	defer data.Close()
	defer p.interruptible(data)()
	a.Connected = true
	a.Peer = addrPortOf(data.RemoteAddr()).Addr().String()
	p.transfer(c, data, prelim, &a)
	return m
}

// connectBack waits for the server's data connection, and meanwhile for a
// reply that says it will not come. Both are polled in turn on this
// goroutine (see Run). It returns the connection, or nil with a.Error set,
// and whether a 1xx reply has been read.
func (p *prober) connectBack(c *ctrl, ln *net.TCPListener, a *Attempt) (net.Conn, bool) {
	deadline := p.deadline()
	prelim := false
	for time.Now().Before(deadline) {
		_ = ln.SetDeadline(earliest(time.Now().Add(pollInterval), deadline))
		data, err := ln.Accept()
		if err == nil {
			return data, prelim
		}
		if !isTimeout(err) {
			a.Error = "accepting: " + p.describe(err)
			p.drop()
			return nil, prelim
		}
		r, err := c.readReply(earliest(time.Now().Add(pollInterval/5), deadline))
		switch {
		case err == nil && r.code < 200:
			prelim = true
		case err == nil:
			// The server gave up connecting, or never tried.
			a.ListCode, a.ListReply = r.code, clean(r.last())
			a.Error = "the server did not connect back: " + a.ListReply
			return nil, prelim
		case !isTimeout(err):
			a.Error = "waiting for the server: " + p.describe(err)
			p.drop()
			return nil, prelim
		}
	}
	a.Error = fmt.Sprintf("the server did not connect back within %s", p.timeout)
	// Its reply to LIST is still to come.
	p.drop()
	return nil, prelim
}

// describe puts a network error in a few stable words: the same failure
// reads the same in every report, without the ports and syscall names Go's
// errors carry.
func (p *prober) describe(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled), p.ctx.Err() != nil && isTimeout(err):
		return "interrupted"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("timed out after %s", p.timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	case errors.Is(err, errTooManyLines):
		return "reply too long"
	case errors.Is(err, ftp.ErrMalformed):
		return "malformed reply"
	}
	return clean(err.Error())
}

// interruptible makes the end of ctx interrupt a blocked read, write or
// accept on x at once. The returned function undoes it.
func (p *prober) interruptible(x interface{ SetDeadline(time.Time) error }) (stop func() bool) {
	return context.AfterFunc(p.ctx, func() { _ = x.SetDeadline(time.Unix(1, 0)) })
}

// ctrl is one control connection.
type ctrl struct {
	conn net.Conn
	r    *ftp.Reader
	st   ftp.ReplyState
	stop func() bool // undoes interruptible
	// lines holds the lines of a reply not yet complete, so that a read
	// that timed out (a poll in connectBack) can resume it.
	lines []string
}

// reply is one complete server reply.
type reply struct {
	code  int
	lines []string // each line's text, code and all
}

func (r reply) last() string { return r.lines[len(r.lines)-1] }

// text is what ParsePASV and ParseEPSV take: the lines joined with "\n".
func (r reply) text() []byte { return []byte(strings.Join(r.lines, "\n")) }

var errTooManyLines = errors.New("reply has too many lines")

// readReply reads the next complete reply, until deadline. A timeout can
// be resumed by calling again.
func (c *ctrl) readReply(deadline time.Time) (reply, error) {
	_ = c.conn.SetReadDeadline(deadline)
	for {
		_, text, err := c.r.ReadLine()
		if errors.Is(err, ftp.ErrLineTooLong) || errors.Is(err, ftp.ErrLineEndless) {
			continue // dropped whole; the deadline bounds a flood of them
		}
		if err != nil {
			return reply{}, err
		}
		code, last, err := c.st.Feed(text)
		if err != nil {
			return reply{}, fmt.Errorf("reading reply: %w", err)
		}
		if len(c.lines) == maxReplyLines {
			return reply{}, errTooManyLines
		}
		c.lines = append(c.lines, string(text))
		if last {
			r := reply{code: code, lines: c.lines}
			c.lines = nil
			return r, nil
		}
	}
}

// final reads replies until one that is not preliminary (1xx).
func (c *ctrl) final(p *prober) (reply, error) {
	for range maxPreliminary {
		r, err := c.readReply(p.deadline())
		if err != nil || r.code >= 200 {
			return r, err
		}
	}
	return reply{}, errors.New("too many preliminary replies")
}

// send writes one command line.
func (c *ctrl) send(p *prober, cmd string) error {
	return c.write(p, ftp.AppendLine(nil, []byte(cmd)))
}

func (c *ctrl) write(p *prober, line []byte) error {
	_ = c.conn.SetWriteDeadline(p.deadline())
	_, err := c.conn.Write(line)
	return err
}

// command sends cmd and reads its final reply.
func (c *ctrl) command(p *prober, cmd string) (reply, error) {
	return c.exchange(p, ftp.AppendLine(nil, []byte(cmd)))
}

// exchange sends a formatted command line and reads its final reply.
func (c *ctrl) exchange(p *prober, line []byte) (reply, error) {
	if err := c.write(p, line); err != nil {
		return reply{}, err
	}
	return c.final(p)
}

func (c *ctrl) close() {
	c.stop()
	_ = c.conn.Close()
}

// drain reads a data connection to its end, until deadline, and returns
// how many bytes came. The bytes are not kept: only that a listing came
// through matters.
func drain(conn net.Conn, deadline time.Time) (int, error) {
	_ = conn.SetReadDeadline(deadline)
	n, err := io.Copy(io.Discard, conn)
	return int(n), err
}

// addrPortOf returns a TCP address as a netip.AddrPort, IPv4-mapped
// addresses unmapped: a dual-stack socket reports an IPv4 peer that way,
// and a 227 names it as plain IPv4.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// clean makes a server's text safe to print: a hostile server must not
// reach the operator's terminal with escape sequences, nor a report with
// a megabyte of text. Control bytes and invalid UTF-8 become '?'.
func clean(s string) string {
	var b strings.Builder
	for i, r := range s {
		if b.Len() >= maxTextLen {
			b.WriteString("...")
			break
		}
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			b.WriteByte('?')
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
