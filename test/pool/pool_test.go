// Package pool tests pasvgate's server pools (issue 15) end to end, in the
// netns lab: the real binary in the gateway namespace in front of three
// real FTP servers in one pool, vsftpd at 192.0.2.10, pure-ftpd at
// 192.0.2.12 and ProFTPD at 192.0.2.13, each serving its own random
// lab.DataFile. A download's SHA-256 therefore names the server that sent
// it, independently of anything pasvgate says; pasvgate's own log line
// for the session (backend=ADDR:PORT) must name the same server.
//
// The tests prove what the issue asks of pools and health: sessions spread
// under each policy (round-robin even, least-conn to the least loaded,
// source and user sticky), every transfer byte-exact and from the
// session's own server, a killed server never seen by a client, a
// blackholed server taken out of rotation and put back within 10 s (with
// the figures the closing note quotes), and a drain by reload that breaks
// no open session. Independent labs run in parallel.
//
// The three servers share no login: vsftpd takes only anonymous logins
// without a PAM account, pure-ftpd (with -E) only its virtual user, and
// neither can be given the other's without touching the machine's own
// accounts. So the sessions are spoken by the test's own client (the
// in-repo raw client, which dials exactly the address of the 227 reply,
// a second public address of the gateway, so that a client that did not
// trust it would fail), which reads the server's greeting through
// pasvgate and logs in with that server's account. The user policy,
// where pasvgate greets the client itself, is tested by the pick it makes
// at USER (see TestPolicies).
package pool

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/lab"
)

// nsPrefix names this package's namespaces, so that its own sweep finds
// only its leftovers.
const nsPrefix = "pgpl-"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		if err := lab.SweepPrefix(nsPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "pool: sweeping stale namespaces:", err)
		}
	}
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// member is one server of the pool.
type member struct {
	kind  string
	addr  string // IPv4 address in the server namespace
	ports [2]int // its own passive range, distinct so a 227 tells who wrote it
}

// members is the pool, in the order pasvgate is given it.
var members = []member{
	{lab.Vsftpd, lab.ServerAddr, [2]int{30000, 30099}},
	{lab.PureFTPd, "192.0.2.12", [2]int{30100, 30199}},
	{lab.ProFTPD, "192.0.2.13", [2]int{30200, 30299}},
}

// Where pasvgate listens and what it announces: a public address other
// than the dialed one, so only a client that trusts the 227 gets data.
const (
	listenAddr  = lab.GWPublicAddr + ":21"
	metricsAddr = "127.0.0.1:9100"
	dataPorts   = "40000-40999"
)

// poolLab is a gateway lab with the three servers and pasvgate in front.
type poolLab struct {
	l       *lab.Lab
	bin     string
	servers []*lab.Server // in members order; an entry is replaced on restart
	pg      *lab.Proc

	// lastPort is the client port the last session was given. Each
	// session has its own, below the kernel's ephemeral range (32768 on),
	// so that pasvgate's log names each session's client once: with
	// ports the kernel picks, a later session may reuse an earlier one's,
	// and its log line may come after the earlier one's was read.
	lastPort atomic.Uint32
}

// firstPort is the client port of the first session of a lab; a run opens
// a few hundred sessions, far fewer than 32768-firstPort.
const firstPort = 20000

// newPoolLab builds a lab with opt (NSPrefix set here) and starts the
// three servers. It skips t if a server kind is not installed.
func newPoolLab(t *testing.T, opt lab.Options) *poolLab {
	t.Helper()
	lab.RequireRoot(t)
	// $PASVGATE_BIN runs a given binary, as the interop suite does.
	bin := os.Getenv("PASVGATE_BIN")
	if bin == "" {
		bin, _ = bins.Build(t)
	}
	opt.NSPrefix = nsPrefix
	p := &poolLab{l: lab.New(t, opt), bin: bin}
	p.lastPort.Store(firstPort - 1)
	for _, m := range members {
		if m.addr != lab.ServerAddr {
			if err := p.l.AddServerAddr(t.Context(), m.addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range members {
		s, err := p.startServer(t.Context(), i)
		if errors.Is(err, lab.ErrMissing) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		p.servers = append(p.servers, s)
	}
	return p
}

// startServer starts members[i] (again, after a kill: with a new file).
func (p *poolLab) startServer(ctx context.Context, i int) (*lab.Server, error) {
	m := members[i]
	opt := lab.ServerOptions{PassivePorts: m.ports}
	if m.addr != lab.ServerAddr {
		opt.Addr = m.addr
	}
	return p.l.StartServer(ctx, m.kind, opt)
}

// upstreamArgs is the pool on the command line.
func upstreamArgs() []string {
	var args []string
	for _, m := range members {
		args = append(args, "--upstream", m.addr+":21")
	}
	return args
}

// start (re)starts pasvgate with the common flags and extra, and waits
// for its listener. A pasvgate already running is stopped first.
func (p *poolLab) start(t *testing.T, extra ...string) {
	t.Helper()
	if p.pg != nil {
		p.pg.Stop()
	}
	args := append([]string{"run",
		"--listen", listenAddr,
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", dataPorts,
		"--metrics", metricsAddr,
		"--backend", "iptables",
		"--iptables-path", p.l.IPTables,
		"--log-format", "json"}, extra...)
	pg, err := p.l.Start(p.l.GW, p.bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	p.pg = pg
	if err := p.l.WaitFTP(t.Context(), pg, p.l.Client, listenAddr); err != nil {
		pg.Stop()
		t.Fatalf("pasvgate %s did not come up: %v\n%s", strings.Join(extra, " "), err, lastLines(pg.Output(), 20))
	}
}

// serverAt returns the server whose control address is backend
// ("192.0.2.12:21"), or nil.
func (p *poolLab) serverAt(backend string) *lab.Server {
	for _, s := range p.servers {
		if s.Addr == backend {
			return s
		}
	}
	return nil
}

// serverBySum returns the server whose file has the hex SHA-256 sum, or nil.
func (p *poolLab) serverBySum(sum string) *lab.Server {
	for _, s := range p.servers {
		if s.DataSHA256 == sum {
			return s
		}
	}
	return nil
}

// session is one FTP control connection through pasvgate, spoken by the
// test itself so that it can pick the login by the server behind it, hold
// a session open, and pause a transfer.
type session struct {
	p      *poolLab
	nc     net.Conn
	r      *bufio.Reader
	client netip.AddrPort // the client as pasvgate logs it
	greet  string         // the greeting's lines
}

// dial opens a control connection from src (lab.ClientAddr or
// lab.IntruderAddr) and reads the greeting. The connection's deadline is
// ctx's, or 60 s.
func (p *poolLab) dial(ctx context.Context, src string) (*session, error) {
	port := p.lastPort.Add(1)
	if port >= 32768 {
		return nil, fmt.Errorf("dial from %s: the test ran out of client ports", src)
	}
	nc, err := p.l.Dial(ctx, p.l.Client, net.JoinHostPort(src, strconv.Itoa(int(port))), listenAddr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", listenAddr, src, err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(60 * time.Second)
	}
	_ = nc.SetDeadline(dl)
	s := &session{p: p, nc: nc, r: bufio.NewReader(nc), client: nc.LocalAddr().(*net.TCPAddr).AddrPort()}
	code, text, err := s.reply()
	if err != nil || code != 220 {
		nc.Close()
		return nil, fmt.Errorf("greeting: %d %q: %v", code, text, err)
	}
	s.greet = text
	return s, nil
}

// reply reads one reply, multi-line ones whole, and returns its code and
// its lines joined by newlines.
func (s *session) reply() (int, string, error) {
	var lines []string
	for range 100 {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(lines, "\n"), err
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(lines[0]) < 4 {
			return 0, line, fmt.Errorf("malformed reply %q", line)
		}
		// The last line of a reply repeats the first's code with a space.
		if len(line) >= 4 && line[:3] == lines[0][:3] && line[3] == ' ' {
			var code int
			if _, err := fmt.Sscanf(line[:3], "%d", &code); err != nil {
				return 0, line, fmt.Errorf("malformed reply %q", line)
			}
			return code, strings.Join(lines, "\n"), nil
		}
	}
	return 0, strings.Join(lines, "\n"), errors.New("reply too long")
}

// cmd sends line and reads the reply; a reply whose first digit is not
// wantClass is an error.
// An empty line sends nothing: it reads the next reply.
func (s *session) cmd(wantClass int, line string) (string, error) {
	if line != "" {
		if _, err := fmt.Fprintf(s.nc, "%s\r\n", line); err != nil {
			return "", fmt.Errorf("%s: %w", verb(line), err)
		}
	}
	code, text, err := s.reply()
	if err != nil {
		return text, fmt.Errorf("%s: %w", verb(line), err)
	}
	if code/100 != wantClass {
		return text, fmt.Errorf("%s: got %q", verb(line), text)
	}
	return text, nil
}

// verb names a command in errors (never its argument: no passwords).
func verb(line string) string {
	if line == "" {
		return "reply"
	}
	v, _, _ := strings.Cut(line, " ")
	return v
}

// greeter returns the server a greeting comes from: each kind says so in
// its own words (the lab's ProFTPD greets with "pglab proftpd ready").
func (p *poolLab) greeter(greet string) *lab.Server {
	marks := map[string]string{lab.Vsftpd: "vsFTPd", lab.PureFTPd: "Pure-FTPd", lab.ProFTPD: "pglab proftpd"}
	for _, s := range p.servers {
		if strings.Contains(greet, marks[s.Kind]) {
			return s
		}
	}
	return nil
}

// login logs in with the account of the server that greeted, and sets
// binary type.
func (s *session) login() error {
	srv := s.p.greeter(s.greet)
	if srv == nil {
		return fmt.Errorf("greeting of no known server: %q", s.greet)
	}
	return s.loginAs(srv.User, srv.Password)
}

// loginAs logs in as user with password and sets binary type.
func (s *session) loginAs(user, password string) error {
	text, err := s.cmd(3, "USER "+user)
	if err != nil && !strings.HasPrefix(text, "230") {
		return err
	}
	if err != nil { // 230 at USER: no password needed
		_, err = s.cmd(2, "TYPE I")
		return err
	}
	if _, err := s.cmd(2, "PASS "+password); err != nil {
		return err
	}
	_, err = s.cmd(2, "TYPE I")
	return err
}

// transfer is a RETR of lab.DataFile in progress.
type transfer struct {
	s    *session
	data net.Conn
	sum  *hashReader
}

// startRetr sends PASV, connects to the address of the 227 reply (a
// client that trusts it), sends RETR and reads the preliminary reply. The
// data is read by finish.
func (s *session) startRetr(ctx context.Context) (*transfer, error) {
	text, err := s.cmd(2, "PASV")
	if err != nil {
		return nil, err
	}
	addrs := lab.Parse227s(text)
	if len(addrs) != 1 {
		return nil, fmt.Errorf("PASV: cannot parse %q", text)
	}
	if got := addrs[0].Addr().String(); got != lab.GWPublicAddr2 {
		return nil, fmt.Errorf("PASV: 227 names %s, want pasvgate's public address %s", got, lab.GWPublicAddr2)
	}
	data, err := s.p.l.Dial(ctx, s.p.l.Client, s.client.Addr().String(), addrs[0].String())
	if err != nil {
		return nil, fmt.Errorf("dial data %v: %w", addrs[0], err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = data.SetDeadline(dl)
	}
	if _, err := s.cmd(1, "RETR "+lab.DataFile); err != nil {
		data.Close()
		return nil, err
	}
	return &transfer{s: s, data: data, sum: newHashReader(data)}, nil
}

// read reads n bytes of the data, for a test that pauses mid-transfer.
func (tr *transfer) read(n int64) error {
	return tr.sum.readN(n)
}

// inProgress reports whether the server has not yet sent the final reply
// of the transfer: none arrives within wait. The control connection's
// deadline is restored to dl after.
func (tr *transfer) inProgress(wait time.Duration, dl time.Time) (bool, error) {
	_ = tr.s.nc.SetReadDeadline(time.Now().Add(wait))
	defer tr.s.nc.SetReadDeadline(dl)
	_, err := tr.s.r.Peek(1)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true, nil
	}
	return false, err
}

// finish reads the data to its end and the final reply, and returns the
// data's hex SHA-256.
func (tr *transfer) finish() (string, error) {
	defer tr.data.Close()
	if err := tr.sum.readAll(); err != nil {
		return "", fmt.Errorf("reading data: %w", err)
	}
	tr.data.Close()
	if _, err := tr.s.cmd(2, ""); err != nil {
		return "", fmt.Errorf("after RETR: %w", err)
	}
	return tr.sum.hex(), nil
}

// retr downloads lab.DataFile and returns its hex SHA-256.
func (s *session) retr(ctx context.Context) (string, error) {
	tr, err := s.startRetr(ctx)
	if err != nil {
		return "", err
	}
	return tr.finish()
}

// close says QUIT (best effort) and closes the connection.
func (s *session) close() {
	_ = s.nc.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = fmt.Fprintf(s.nc, "QUIT\r\n")
	_, _, _ = s.reply()
	s.nc.Close()
}

// logLine is one line of pasvgate's JSON log.
type logLine map[string]any

func (ll logLine) str(key string) string {
	s, _ := ll[key].(string)
	return s
}

// when is the line's own time stamp, or the zero time.
func (ll logLine) when() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, ll.str("time"))
	return t
}

// logLines parses the JSON lines of out with message msg; other lines are
// skipped.
func logLines(out, msg string) []logLine {
	var lines []logLine
	for _, s := range strings.Split(out, "\n") {
		if !strings.HasPrefix(s, "{") {
			continue
		}
		var ll logLine
		if json.Unmarshal([]byte(s), &ll) == nil && ll.str("msg") == msg {
			lines = append(lines, ll)
		}
	}
	return lines
}

// backendOf waits (up to 5 s: info lines are held up to 50 ms, and with
// the user policy the line comes after USER) for pasvgate's session start
// line of the client and returns its backend, "ADDR:PORT". Each session
// of the test has its own client port (dial), so the client's line is its
// session's.
func (p *poolLab) backendOf(client netip.AddrPort) (string, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ll, err := clientLine(p.pg.Output(), "session started", client)
		if err != nil {
			return "", err
		}
		if ll != nil {
			if backend := ll.str("backend"); backend != "" {
				return backend, nil
			}
			return "", fmt.Errorf("the session start line of %v names no backend: %v", client, ll)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no session start line for client %v in pasvgate's log", client)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEnded waits (up to 5 s) until pasvgate logged the end of the
// client's session, so that the pool no longer counts it.
func (p *poolLab) waitEnded(client netip.AddrPort) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ll, err := clientLine(p.pg.Output(), "session ended", client)
		if err != nil || ll != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pasvgate logged no end of the session of %v", client)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientLine returns the line msg of client in out, or nil. Two are an
// error: the test gave one client port to two sessions.
func clientLine(out, msg string, client netip.AddrPort) (logLine, error) {
	var found logLine
	for _, ll := range logLines(out, msg) {
		if ll.str("client") == client.String() {
			if found != nil {
				return nil, fmt.Errorf("pasvgate logged %q twice for client %v: the test gave its port to two sessions", msg, client)
			}
			found = ll
		}
	}
	return found, nil
}

// stateLines returns pasvgate's pool state change lines (msg "upstream
// server down", "upstream server up", "upstream server draining") about
// the server at addr.
func stateLines(out, msg, addr string) []logLine {
	var lines []logLine
	for _, ll := range logLines(out, msg) {
		if hostOf(ll.str("server")) == addr {
			lines = append(lines, ll)
		}
	}
	return lines
}

// hostOf is the address part of "ADDR:PORT" (or ADDR itself).
func hostOf(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return s
}

// waitState waits, up to timeout, until pasvgate has logged more than
// before lines msg about addr, and returns the time the first new line
// was logged (its own time stamp; when it has none, the time it was
// seen).
func (p *poolLab) waitState(msg, addr string, before int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		lines := stateLines(p.pg.Output(), msg, addr)
		if len(lines) > before {
			if t := lines[before].when(); !t.IsZero() {
				return t, nil
			}
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no %q line for %s within %v", msg, addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countBy formats per-server counts in members order: "vsftpd=10 pure-ftpd=10 proftpd=10".
func (p *poolLab) countBy(counts map[*lab.Server]int) string {
	var f []string
	for _, s := range p.servers {
		f = append(f, fmt.Sprintf("%s=%d", s.Kind, counts[s]))
	}
	return strings.Join(f, " ")
}

// summary formats durations as "runs=5 median=4.1s max=4.3s all=[...]".
func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "runs=0"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	var all []string
	for _, d := range ds {
		all = append(all, d.Round(10*time.Millisecond).String())
	}
	return fmt.Sprintf("runs=%d median=%v max=%v all=[%s]", len(s),
		med.Round(10*time.Millisecond), s[len(s)-1].Round(10*time.Millisecond), strings.Join(all, " "))
}

// lastLines keeps the last n lines of s, for failure messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// hashReader reads a data connection into a SHA-256, in parts.
type hashReader struct {
	r io.Reader
	h hash.Hash
}

func newHashReader(r io.Reader) *hashReader { return &hashReader{r: r, h: sha256.New()} }

// readN reads exactly n bytes.
func (hr *hashReader) readN(n int64) error {
	_, err := io.CopyN(hr.h, hr.r, n)
	return err
}

// readAll reads to the end.
func (hr *hashReader) readAll() error {
	_, err := io.Copy(hr.h, hr.r)
	return err
}

func (hr *hashReader) hex() string { return hex.EncodeToString(hr.h.Sum(nil)) }

// writeFile writes content to path (the test's own file), failing t on
// error.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
