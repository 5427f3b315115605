package interop

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Fault cases on the lab: what an operator sees when pasvgate is killed,
// when the FTP server goes away, and when the data-port range runs out.

// faultLab is a lab with vsftpd (default security settings) behind
// pasvgate, which is started with extra arguments.
type faultLab struct {
	l      *lab.Lab
	srv    *lab.Server
	bin    string
	pg     *pasvgate
	pgArgs []string
}

func newFaultLab(t *testing.T, rate int, pgArgs ...string) *faultLab {
	lab.RequireRoot(t)
	if err := (lab.Curl{}).Available(); err != nil {
		t.Skip(err)
	}
	bin := *flagPasvgate
	if bin == "" {
		var err error
		if bin, err = lab.BuildGo(t.Context(), t.TempDir(), "./cmd/pasvgate"); err != nil {
			t.Fatal(err)
		}
	}
	l := lab.New(t, labOptions(rate, false))
	srv, err := l.StartServer(t.Context(), lab.Vsftpd, lab.ServerOptions{})
	if err != nil {
		if strings.Contains(err.Error(), lab.ErrMissing.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	f := &faultLab{l: l, srv: srv, bin: bin, pgArgs: pgArgs}
	f.start(t)
	return f
}

func (f *faultLab) start(t *testing.T) {
	t.Helper()
	args := append([]string{"run",
		"--listen", lab.GWPublicAddr + ":21",
		"--upstream", lab.ServerAddr + ":21",
		"--public-addr", lab.GWPublicAddr2,
		"--backend", *flagBackend,
		"--iptables-path", f.l.IPTables,
		"--log-format", "json"}, f.pgArgs...)
	p, err := f.l.Start(f.l.GW, f.bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.l.WaitFTP(t.Context(), p, f.l.Client, lab.GWPublicAddr+":21"); err != nil {
		p.Stop()
		t.Fatalf("pasvgate did not come up: %v\n%s", err, lastLines(p.Output(), 20))
	}
	f.pg = &pasvgate{l: f.l, bin: f.bin, proc: p}
}

// ftpConn is a minimal control connection from the client namespace.
type ftpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (f *faultLab) dial(t *testing.T) *ftpConn {
	t.Helper()
	c, err := f.l.Dial(t.Context(), f.l.Client, lab.ClientAddr, lab.GWPublicAddr+":21")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &ftpConn{t: t, c: c, r: bufio.NewReader(c)}
}

// reply returns the last line of the next reply, or "" with the error.
func (fc *ftpConn) reply() (string, error) {
	for {
		line, err := fc.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) >= 4 && line[3] == ' ' {
			return line, nil
		}
		if len(line) == 3 {
			return line, nil
		}
	}
}

func (fc *ftpConn) cmd(line string) string {
	fc.t.Helper()
	fmt.Fprintf(fc.c, "%s\r\n", line)
	r, err := fc.reply()
	if err != nil {
		fc.t.Fatalf("%s: %v", line, err)
	}
	return r
}

func (fc *ftpConn) login(srv *lab.Server) {
	fc.t.Helper()
	if r, err := fc.reply(); err != nil || !strings.HasPrefix(r, "220") {
		fc.t.Fatalf("greeting %q, %v", r, err)
	}
	fc.cmd("USER " + srv.User)
	if r := fc.cmd("PASS " + srv.Password); !strings.HasPrefix(r, "230") {
		fc.t.Fatalf("login: %q", r)
	}
	fc.cmd("TYPE I")
}

// parse227 returns the address of one 227 reply (parse227s reads them).
func parse227(t *testing.T, line string) netip.AddrPort {
	t.Helper()
	aps := parse227s(line)
	if len(aps) != 1 {
		t.Fatalf("not a 227: %q", line)
	}
	return aps[0]
}

// retr downloads the data file over the data address da and checks its
// checksum and the final reply. It returns an error rather than failing
// the test, so that it can run on its own goroutine.
func (f *faultLab) retr(ctx context.Context, fc *ftpConn, da netip.AddrPort) error {
	dc, err := f.l.Dial(ctx, f.l.Client, lab.ClientAddr, da.String())
	if err != nil {
		return fmt.Errorf("data connection to %v: %w", da, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(fc.c, "RETR %s\r\n", lab.DataFile)
	if r, err := fc.reply(); err != nil || !strings.HasPrefix(r, "150") {
		return fmt.Errorf("RETR: %q, %v", r, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, dc); err != nil {
		return fmt.Errorf("reading data: %w", err)
	}
	if r, err := fc.reply(); err != nil || !strings.HasPrefix(r, "226") {
		return fmt.Errorf("end of RETR: %q, %v", r, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.srv.DataSHA256 {
		return fmt.Errorf("downloaded sha256 %s, want %s", got, f.srv.DataSHA256)
	}
	return nil
}

// TestFaultKill9DuringDownload kills pasvgate with SIGKILL while a
// rate-limited download holds a mapping, restarts it, and shows the chains
// are clean before it accepts anyone and that a new session works.
func TestFaultKill9DuringDownload(t *testing.T) {
	f := newFaultLab(t, 256<<10)
	local := filepath.Join(f.l.Dir, "first.bin")
	done := make(chan error, 1)
	go func() {
		_, err := (lab.Curl{}).Run(context.Background(), f.l, lab.Transfer{NS: f.l.Client, Host: lab.GWPublicAddr,
			User: f.srv.User, Password: f.srv.Password, Op: lab.Get, Remote: lab.DataFile, Local: local, Timeout: 30 * time.Second})
		done <- err
	}()
	var rules []string
	for i := 0; i < 100 && len(rules) == 0; i++ {
		time.Sleep(50 * time.Millisecond)
		rules, _ = f.pg.mappingRules(t.Context())
	}
	if len(rules) == 0 {
		t.Fatal("no mapping appeared during the download")
	}
	_ = syscall.Kill(f.pg.proc.Pid(), syscall.SIGKILL)
	<-f.pg.proc.Done()
	if left, _ := f.pg.mappingRules(t.Context()); len(left) == 0 {
		t.Fatal("SIGKILL left no rules behind: the test would prove nothing")
	}
	<-done // the download may finish over its established flow or fail; either is fine

	f.start(t)
	if left, _ := f.pg.mappingRules(t.Context()); len(left) != 0 {
		t.Fatalf("after restart, before any client: leftover rules %v", left)
	}
	if out, _ := f.pg.rulesList(t.Context()); strings.TrimSpace(out) != "" {
		t.Fatalf("after restart rules list prints %q", out)
	}
	local2 := filepath.Join(f.l.Dir, "second.bin")
	if _, err := (lab.Curl{}).Run(t.Context(), f.l, lab.Transfer{NS: f.l.Client, Host: lab.GWPublicAddr,
		User: f.srv.User, Password: f.srv.Password, Op: lab.Get, Remote: lab.DataFile, Local: local2, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("a new session after the restart: %v", err)
	}
	if got, _ := lab.FileSHA256(local2); got != f.srv.DataSHA256 {
		t.Fatalf("download after restart: sha256 %s, want %s", got, f.srv.DataSHA256)
	}
	if left := f.pg.waitDrained(t.Context()); left != "" {
		t.Fatal(left)
	}
}

// TestFaultServerStopped stops the FTP server under an open session with a
// mapping: the client gets a clear 421, a new client gets 421 too, and no
// rules are left.
func TestFaultServerStopped(t *testing.T) {
	f := newFaultLab(t, 0)
	fc := f.dial(t)
	fc.login(f.srv)
	parse227(t, fc.cmd("PASV"))
	// vsftpd runs processes per session, some in network namespaces of
	// their own (isolate_network): stopping the service means the whole
	// tree, as systemd would stop its cgroup. All of it descends from the
	// server process this lab started.
	tree := descendants(f.srv.Proc.Pid())
	for _, pid := range append(tree, f.srv.Proc.Pid()) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	out := fmt.Sprint(tree)
	r, err := fc.reply()
	if err != nil || !strings.HasPrefix(r, "421 ") {
		t.Fatalf("with the server gone (pids %q killed) the client got %q (%v), want 421\n%s", out, r, err, lastLines(f.pg.proc.Output(), 10))
	}
	fc2 := f.dial(t)
	if r, err := fc2.reply(); err != nil || !strings.HasPrefix(r, "421 ") {
		t.Fatalf("a new client got %q (%v), want 421", r, err)
	}
	if left := f.pg.waitDrained(t.Context()); left != "" {
		t.Fatal(left)
	}
}

// descendants returns the pids of every process below pid, read from /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		p, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces: the
		// parent pid is the second field after the last ')'.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(fields[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 && len(out) < 1000 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// TestFaultPortRangeExhausted fills a two-port data range: a third client
// asking for a data port gets 425, and the two others finish their
// downloads.
func TestFaultPortRangeExhausted(t *testing.T) {
	f := newFaultLab(t, 0, "--data-ports", "40000-40001")
	var conns []*ftpConn
	var addrs []netip.AddrPort
	for i := 0; i < 2; i++ {
		fc := f.dial(t)
		fc.login(f.srv)
		addrs = append(addrs, parse227(t, fc.cmd("PASV")))
		conns = append(conns, fc)
	}
	extra := f.dial(t)
	extra.login(f.srv)
	if r := extra.cmd("PASV"); !strings.HasPrefix(r, "425 ") {
		t.Fatalf("the third client's PASV got %q, want 425", r)
	}
	if r := extra.cmd("EPSV"); !strings.HasPrefix(r, "425 ") {
		t.Fatalf("the third client's EPSV got %q, want 425", r)
	}
	errs := make(chan error, len(conns))
	for i := range conns {
		go func() { errs <- f.retr(t.Context(), conns[i], addrs[i]) }()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Errorf("a client holding a port did not finish: %v", err)
		}
	}
	if left := f.pg.waitDrained(t.Context()); left != "" {
		t.Fatal(left)
	}
	if !strings.Contains(f.pg.proc.Output(), "data port range exhausted") {
		t.Fatalf("the exhaustion was not logged:\n%s", lastLines(f.pg.proc.Output(), 20))
	}
}
