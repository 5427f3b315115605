package routes

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/lab"
)

// nsPrefix names this package's namespaces, so that its sweep touches no
// other package's labs.
const nsPrefix = "pgrt-"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Leftovers of a run of this package that was killed.
		if err := lab.SweepPrefix(nsPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "routes: sweeping stale namespaces:", err)
		}
	}
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// Addresses of the client network that --announce names: a LAN beside the
// public one, added by the announce test on the lab's client link.
const (
	lanClient = "198.51.100.10"
	lanGW     = "198.51.100.1"
	lanNet    = "198.51.100.0/24"
)

// dataSize is the size of each server's file: enough to cross many
// segments, small enough that a dozen downloads cost nothing.
const dataSize = 256 << 10

// ftpd is a test/ftpd instance in the server namespace.
type ftpd struct {
	name string
	addr string // control ADDR:PORT
	sha  string // hex SHA-256 of its lab.DataFile
	proc *lab.Proc
}

// env is the lab the subtests of TestRoutes share, with the servers they
// use.
type env struct {
	l        *lab.Lab
	pasvgate string
	// plain, second and third are servers without PROXY protocol, with
	// the same-address check of passive data connections that vsftpd and
	// ProFTPD have by default (--pasv-same-ip): the routes' pools and the
	// default upstream of the other tests.
	plain, second, third *ftpd
	// proxied requires a PROXY header and has no same-address check, as
	// test/ftpd has by default; proxiedSameIP requires a header and
	// checks that passive data comes from the header's source.
	proxied, proxiedSameIP *ftpd
}

// newEnv builds the lab and starts the servers, all at once.
func newEnv(t *testing.T) *env {
	lab.RequireRoot(t)
	if err := (lab.Curl{}).Available(); err != nil {
		t.Skip(err)
	}
	pasvgate, ftpdBin := bins.Build(t)
	e := &env{l: lab.New(t, lab.Options{NSPrefix: nsPrefix}), pasvgate: pasvgate}
	specs := []struct {
		p       **ftpd
		name    string
		listen  string
		passive string
		flags   []string
	}{
		// Passive ranges differ per server only so that a log line
		// tells them apart; pasvgate maps whatever a server says.
		{&e.plain, "plain", lab.ServerAddr + ":21", "30000-30099", []string{"--pasv-same-ip"}},
		{&e.second, "second", lab.NeighborAddr + ":21", "30100-30199", []string{"--pasv-same-ip"}},
		{&e.third, "third", lab.NeighborAddr + ":2121", "30200-30299", []string{"--pasv-same-ip"}},
		{&e.proxied, "proxied", lab.ServerAddr + ":2121", "30300-30399", []string{"--proxy-protocol"}},
		{&e.proxiedSameIP, "proxied-same-ip", lab.ServerAddr + ":2122", "30400-30499", []string{"--proxy-protocol", "--pasv-same-ip"}},
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	for _, s := range specs {
		wg.Go(func() {
			f, err := e.startFTPD(ftpdBin, s.name, s.listen, s.passive, s.flags...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			*s.p = f
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
	return e
}

// startFTPD starts test/ftpd on listen with a root of its own holding a
// random lab.DataFile, and waits (up to 15 s) until it is listening. It
// gets no --public-host: its 227 names the address the connection reached
// it on, which under PROXY protocol must still be its own socket's, not
// the header's destination (pasvgate refuses a 227 naming another host).
func (e *env) startFTPD(bin, name, listen, passive string, flags ...string) (*ftpd, error) {
	root := filepath.Join(e.l.Dir, "ftpd-"+name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	sum, err := lab.WriteRandomFile(filepath.Join(root, lab.DataFile), dataSize)
	if err != nil {
		return nil, err
	}
	args := append([]string{"--listen", listen, "--passive-ports", passive, "--root", root,
		"--user", lab.TestUser, "--password", lab.TestPassword}, flags...)
	p, err := e.l.Start(e.l.Server, bin, args...)
	if err != nil {
		return nil, err
	}
	// It prints this once bound; a greeting check would need a PROXY
	// header for some of them.
	if !lab.WaitFor(15*time.Second, func() bool { return strings.Contains(p.Output(), "listening on") }) {
		return nil, fmt.Errorf("ftpd %s did not come up:\n%s", name, p.Output())
	}
	return &ftpd{name: name, addr: listen, sha: sum, proc: p}, nil
}

// startPasvgate runs `pasvgate run` in the gw with args (JSON logs, the
// lab's iptables) and waits until each of the addresses in ready greets a
// client; the lab stops it at its end, and so does the subtest's clean-up.
func (e *env) startPasvgate(t *testing.T, ready []string, args ...string) *lab.Proc {
	t.Helper()
	full := append([]string{"run", "--backend", "iptables", "--iptables-path", e.l.IPTables,
		"--log-format", "json"}, args...)
	p, err := e.l.Start(e.l.GW, e.pasvgate, full...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	for _, addr := range ready {
		if err := e.l.WaitFTP(t.Context(), p, e.l.Client, addr); err != nil {
			t.Fatalf("pasvgate did not come up on %s: %v\n%s", addr, err, tailLines(p.Output(), 30))
		}
	}
	// WaitFTP's own sessions are over before a test counts its own.
	p.WaitSessions(len(ready), 5*time.Second)
	return p
}

// tailLines is the last n lines of s, for failure messages.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines decodes pasvgate's JSON log lines whose msg is msg.
func logLines(out, msg string) []map[string]any {
	var found []map[string]any
	for _, line := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			found = append(found, m)
		}
	}
	return found
}

// session is a control connection the test drives itself.
type session struct {
	nc net.Conn
	c  *textproto.Conn
	ns string
	// local is the client's own address, for its data connections.
	local string
}

// dial opens a control connection from local in ns to host:21 and reads
// the greeting. The connection has a 60 s deadline and is closed at the
// end of the test.
func dial(t *testing.T, l *lab.Lab, ns, local, host string) *session {
	t.Helper()
	nc, err := l.Dial(t.Context(), ns, local, net.JoinHostPort(host, "21"))
	if err != nil {
		t.Fatalf("dial %s from %s: %v", host, local, err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
	s := &session{nc: nc, c: textproto.NewConn(nc), ns: ns, local: local}
	if _, err := lab.RawCmd(s.c, 220, ""); err != nil {
		t.Fatalf("greeting from %s: %v", host, err)
	}
	return s
}

// port is the client's port of the control connection.
func (s *session) port() uint16 {
	return s.nc.LocalAddr().(*net.TCPAddr).AddrPort().Port()
}

// login logs in as the lab's test user, binary type.
func (s *session) login(t *testing.T) {
	t.Helper()
	for _, step := range []struct {
		code int
		cmd  string
	}{{331, "USER " + lab.TestUser}, {230, "PASS " + lab.TestPassword}, {200, "TYPE I"}} {
		if _, err := lab.RawCmd(s.c, step.code, "%s", step.cmd); err != nil {
			t.Fatal(err)
		}
	}
}

// pasv sends PASV and returns the address of the 227.
func (s *session) pasv(t *testing.T) netip.AddrPort {
	t.Helper()
	msg, err := lab.RawCmd(s.c, 227, "PASV")
	if err != nil {
		t.Fatal(err)
	}
	aps := lab.Parse227s("227 " + msg)
	if len(aps) != 1 {
		t.Fatalf("PASV: cannot parse %q", msg)
	}
	return aps[0]
}

// retr downloads lab.DataFile over a fresh PASV: it dials the 227's
// address from the session's own address and sends RETR. It returns the
// 227's address, the data's SHA-256 ("" if the server refused), and the
// reply that refused it or ended the transfer.
func (s *session) retr(t *testing.T, l *lab.Lab) (announced netip.AddrPort, sum, reply string) {
	t.Helper()
	announced = s.pasv(t)
	dc, err := l.Dial(t.Context(), s.ns, s.local, announced.String())
	if err != nil {
		t.Fatalf("data connection to %v: %v", announced, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := s.c.PrintfLine("RETR %s", lab.DataFile); err != nil {
		t.Fatal(err)
	}
	code, msg, err := s.c.ReadResponse(0)
	if err != nil {
		t.Fatalf("RETR: %v", err)
	}
	if code != 150 && code != 125 {
		return announced, "", fmt.Sprintf("%d %s", code, msg)
	}
	h := sha256.New()
	if _, err := io.Copy(h, dc); err != nil {
		t.Fatalf("reading data: %v", err)
	}
	code, msg, err = s.c.ReadResponse(0)
	if err != nil {
		t.Fatalf("after RETR: %v", err)
	}
	return announced, hex.EncodeToString(h.Sum(nil)), fmt.Sprintf("%d %s", code, msg)
}

// download runs curl in ns against host, trusting the 227 address
// (lab.Curl), and returns the SHA-256 of what it got.
func download(t *testing.T, l *lab.Lab, ns, host, name string) string {
	t.Helper()
	local := filepath.Join(l.Dir, name)
	res, err := lab.Curl{}.Run(t.Context(), l, lab.Transfer{
		NS: ns, Host: host, User: lab.TestUser, Password: lab.TestPassword,
		Op: lab.Get, Remote: lab.DataFile, Local: local, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatalf("curl from %s to %s: %v\n%s", ns, host, err, res.Log)
	}
	sum, err := lab.FileSHA256(local)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// replies227 returns the 227 addresses the capture saw sent from src to
// the client address dst.
func replies227(pkts []lab.Packet, src netip.AddrPort, dst string) []netip.AddrPort {
	return lab.Parse227s(lab.Stream(pkts, src, netip.AddrPortFrom(netip.MustParseAddr(dst), 0)))
}

// hostPort is "addr:port" for a documentation address and port.
func hostPort(addr string, port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port))
}

// readLines is what bufio.Scanner gives, for command output.
func readLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// TestRoutes runs the package's tests on one lab: building it and starting
// the servers is most of the cost of each.
func TestRoutes(t *testing.T) {
	e := newEnv(t)
	t.Run("proxy-protocol", e.testProxyProtocol)
	t.Run("announce", e.testAnnounce)
	t.Run("routes", e.testRoutes)
	t.Run("sessions", e.testSessions)
}
