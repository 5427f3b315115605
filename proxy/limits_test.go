package proxy_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// greeting reads what a fresh connection to pasvgate is told first.
func greeting(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestMaxSessions(t *testing.T) {
	h := newHarness(t, options{maxSessions: 2})
	h.dial(t)
	h.dial(t)
	if got := greeting(t, h.addr); !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "max-sessions") {
		t.Fatalf("third session got %q, want 421 naming the limit", got)
	}
	st := h.proxy.Stats()
	if st.SessionsRefused["max-sessions"] != 1 || st.SessionsActive != 2 {
		t.Fatalf("stats %+v: want one max-sessions refusal and 2 active", st)
	}
	h.waitLog(t, "reason=max-sessions")
}

func TestMaxSessionsPerIP(t *testing.T) {
	h := newHarness(t, options{maxPerIP: 1})
	c := h.dial(t)
	if got := greeting(t, h.addr); !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "max-sessions-per-ip") {
		t.Fatalf("second session from one address got %q, want 421", got)
	}
	// Another address is not affected.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	other, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	_ = other.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(other, buf); err != nil || string(buf) != "220" {
		t.Fatalf("a session from another address got %q, %v", buf, err)
	}
	// When the first ends, its address may come back.
	c.cmd("QUIT")
	for i := 0; i < 100 && h.proxy.Stats().SessionsActive != 1; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	h.dial(t)
}

func TestLoginTimeout(t *testing.T) {
	h := newHarness(t, options{login: 300 * time.Millisecond})
	c := h.dial(t)
	// Commands before login do not keep the session alive.
	start := time.Now()
	got := ""
	for time.Since(start) < 200*time.Millisecond {
		// On a loaded machine the timeout may come while a NOOP waits
		// for its reply: the 421 is said at once, in its place.
		if r := c.cmd("NOOP"); strings.HasPrefix(r, "421 ") {
			got = r
			break
		}
	}
	if got == "" {
		got = c.reply()
	}
	if !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "Login timeout") {
		t.Fatalf("no login in time: got %q, want 421", got)
	}
	// A session that logs in is not affected.
	c2 := h.dial(t)
	c2.login()
	time.Sleep(400 * time.Millisecond)
	if got := c2.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("a logged-in session after the login timeout: %q", got)
	}
	if h.proxy.Stats().Refused["login-timeout"] != 1 {
		t.Fatalf("login timeout not counted: %+v", h.proxy.Stats())
	}
}

// TestIdleTimeoutSparesTransfers: a transfer longer than the idle timeout
// keeps its control connection.
func TestIdleTimeoutSparesTransfers(t *testing.T) {
	h := newHarness(t, options{idle: 300 * time.Millisecond})
	want := plant(t, h.server.FS(), "file.bin", 1<<20)
	cl, err := ftp.Dial(h.addr, ftp.DialWithDisabledEPSV(true), ftp.DialWithTrustPasvIP(true), ftp.DialWithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Quit()
	if err := cl.Login("anonymous", "x"); err != nil {
		t.Fatal(err)
	}
	r, err := cl.Retr("file.bin")
	if err != nil {
		t.Fatal(err)
	}
	// Read slowly: well past the idle timeout, with the control channel
	// silent all the while.
	hsh := sha256.New()
	buf := make([]byte, 128<<10)
	for {
		time.Sleep(80 * time.Millisecond)
		n, err := r.Read(buf)
		hsh.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if err := r.Close(); err != nil {
		t.Fatalf("transfer end: %v (the idle timeout cut the control connection?)", err)
	}
	if [32]byte(hsh.Sum(nil)) != sha256.Sum256(want) {
		t.Fatal("slow download differs")
	}
	h.waitLog(t, `msg=transfer`)
	log := h.log.String()
	for _, want := range []string{`user=anonymous`, `command=RETR`, `file=file.bin`, `code=226`, `result=ok`, `duration_ms=`} {
		if !strings.Contains(log, want) {
			t.Errorf("transfer log line lacks %s:\n%s", want, log)
		}
	}
}

func TestPublicAddrFunc(t *testing.T) {
	h := newHarness(t, options{})
	var cur atomic.Pointer[netip.Addr]
	a := netip.MustParseAddr("127.0.0.3")
	cur.Store(&a)
	st := h.proxy.Settings
	st.PublicAddrFunc = func() netip.Addr { return *cur.Load() }
	h.proxy.Reload(st)
	c := h.dial(t)
	c.login()
	if ap := parse227(t, c.cmd("PASV")); ap.Addr() != a {
		t.Fatalf("227 carries %v, want %v", ap, a)
	}
	b := netip.MustParseAddr("127.0.0.4")
	cur.Store(&b)
	if ap := parse227(t, c.cmd("PASV")); ap.Addr() != b {
		t.Fatalf("after the address changed the 227 carries %v, want %v", ap, b)
	}
	none := netip.Addr{}
	cur.Store(&none)
	for _, cmd := range []string{"PASV", "EPSV"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "425 ") {
			t.Fatalf("%s with no public address: %q, want 425", cmd, got)
		}
	}
}

func TestStatsMove(t *testing.T) {
	h := newHarness(t, options{})
	before := h.proxy.Stats()
	c := h.dial(t)
	c.login()
	parse227(t, c.cmd("PASV"))
	c.cmd("EPSV")
	c.cmd("PORT 127,0,0,9,200,10")
	c.cmd("QUIT")
	h.waitInstalled(t, 0)
	after := h.proxy.Stats()
	if after.SessionsTotal != before.SessionsTotal+1 || after.Rewrites["227"] != 1 || after.Rewrites["229"] != 1 ||
		after.Refused["bounce-address"] != 1 || after.BytesFromClient == 0 || after.BytesFromServer == 0 {
		t.Fatalf("stats did not move as expected: %+v", after)
	}
}

// TestShutdownDrains: idle sessions are closed at once with 421, a session
// with a transfer in progress finishes it first, and Serve returns.
func TestShutdownDrains(t *testing.T) {
	h := newHarness(t, options{})
	want := plant(t, h.server.FS(), "file.bin", 1<<20)
	idle := h.dial(t)
	idle.login()

	cl, err := ftp.Dial(h.addr, ftp.DialWithDisabledEPSV(true), ftp.DialWithTrustPasvIP(true), ftp.DialWithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Login("anonymous", "x"); err != nil {
		t.Fatal(err)
	}
	r, err := cl.Retr("file.bin")
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1000)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.proxy.Shutdown(ctx)
		close(done)
	}()
	if got := idle.reply(); !strings.HasPrefix(got, "421 ") {
		t.Fatalf("idle session at shutdown got %q, want 421", got)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("the transfer in progress did not finish: %v", err)
	}
	if sha256.Sum256(append(first, rest...)) != sha256.Sum256(want) {
		t.Fatal("the download in progress at shutdown was cut short")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last transfer")
	}
	if _, err := net.Dial("tcp", h.addr); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

// TestFDLimit runs pasvgate out of file descriptors between accepting a
// client and dialling its server: the client must hear that pasvgate is
// full (421 "Too many connections"), not that the server is unreachable,
// and the refusal is counted as fd-limit. It lowers this process's
// RLIMIT_NOFILE for a moment, so it must not run in parallel.
func TestFDLimit(t *testing.T) {
	h := newHarness(t, options{})
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	// A descriptor that another goroutine of this test binary frees in
	// the moment between the fill and pasvgate's dial lets the dial
	// through (the client then gets the server's greeting): try again, a
	// bounded number of times. Anything else but the 421 fails at once.
	var got string
	for try := 0; try < 5; try++ {
		got = fdLimitSession(t, h, old)
		if !strings.HasPrefix(got, "220") {
			break
		}
		t.Logf("try %d: a descriptor came free during the test; again", try+1)
	}
	if !strings.HasPrefix(got, "421 Too many connections") {
		t.Fatalf("a session with no descriptor left for its server got %q, want 421 Too many connections", got)
	}
	if st := h.proxy.Stats(); st.SessionsRefused["fd-limit"] != 1 {
		t.Fatalf("refusals %v, want one fd-limit", st.SessionsRefused)
	}
	h.waitLog(t, "out of file descriptors")
}

// fdLimitSession lowers the limit a little above the highest descriptor in
// use, fills every free one below it, then frees exactly two: the
// client's socket and the one pasvgate accepts, so that pasvgate's dial
// to its server finds none. It returns what the client got, and restores
// the limit.
func fdLimitSession(t *testing.T, h *harness, old syscall.Rlimit) string {
	t.Helper()
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		t.Skip(err)
	}
	highest := 0
	for _, name := range names {
		if n, err := strconv.Atoi(name); err == nil {
			highest = max(highest, n)
		}
	}
	lower := old
	lower.Cur = uint64(highest + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lower); err != nil {
		t.Skip(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}()
	var fill []int
	for range highest + 8 {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	for _, fd := range fill[len(fill)-2:] {
		syscall.Close(fd)
	}
	defer func() {
		for _, fd := range fill[:len(fill)-2] {
			syscall.Close(fd)
		}
	}()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line
}
