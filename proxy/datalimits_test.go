package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// stallServer is a scripted FTP server whose transfers never touch a data
// connection: RETR after a PORT answers 150 and then waits for finish (or
// never answers at all, with silent set) before its 226. A RETR without a
// PORT gets 503. It lets a test hold a transfer open as long as it likes.
type stallServer struct {
	ln     net.Listener
	silent bool
	finish chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// release lets the held transfer end.
func (s *stallServer) release() { s.once.Do(func() { close(s.finish) }) }

func newStallServer(t *testing.T, silent bool) *stallServer {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallServer{ln: ln, silent: silent, finish: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.release(); s.wg.Wait() })
	return s
}

func (s *stallServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := ftp.NewReader(c, 0)
	say := func(line string) { fmt.Fprintf(c, "%s\r\n", line) }
	say("220 scripted")
	port := false
	for {
		_, text, err := r.ReadLine()
		if err != nil {
			return
		}
		switch verb, _ := ftp.ParseCommand(text); verb {
		case ftp.VerbUSER:
			say("331 password")
		case ftp.VerbPASS:
			say("230 in")
		case ftp.VerbPORT, ftp.VerbEPRT:
			port = true
			say("200 ok")
		case ftp.VerbRETR:
			if !port {
				say("503 PORT first")
				continue
			}
			port = false
			if s.silent {
				continue // a server that never answers the transfer
			}
			say("150 opening")
			<-s.finish
			say("226 done")
		case ftp.VerbQUIT:
			say("221 bye")
			return
		default:
			say("200 ok")
		}
	}
}

// TestNoMappingBeforeLogin: PASV, EPSV, PORT and EPRT before the server
// has accepted a login get pasvgate's own 530 and never reach the server;
// nothing is installed. A PASV pipelined behind its PASS waits for the
// 230 and works.
func TestNoMappingBeforeLogin(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	for _, cmd := range []string{
		"PASV", "EPSV", "EPSV ALL", "epsv\t2", "PORT 127,0,0,1,195,80", "EPRT |1|127.0.0.1|50000|",
		"PORT 127,0,0,9,200,10", // a bounce attempt too: the login comes first
	} {
		if got := c.cmd(cmd); got != "530 Please login with USER and PASS." {
			t.Errorf("%q before login: %q, want pasvgate's 530", cmd, got)
		}
	}
	if got := c.cmd("USER anonymous"); !strings.HasPrefix(got, "331") {
		t.Fatalf("USER: %q", got)
	}
	if got := c.cmd("PORT 127,0,0,1,195,80"); !strings.HasPrefix(got, "530 ") {
		t.Errorf("PORT between USER and PASS: %q, want 530", got)
	}
	if n := h.backend.Count("install"); n != 0 {
		t.Fatalf("%d mappings installed before login", n)
	}
	sent := h.tap.sent()
	for _, w := range []string{"PASV", "EPSV", "PORT", "EPRT", "epsv"} {
		if strings.Contains(sent, w) {
			t.Fatalf("%s before login reached the server: %q", w, sent)
		}
	}
	if n := h.proxy.Stats().Refused["login-required"]; n != 8 {
		t.Errorf("login-required refusals: %d, want 8", n)
	}

	// Pipelined: the PASV is judged once the PASS has its 230.
	c.send("PASS x\r\nPASV")
	if got := c.reply(); !strings.HasPrefix(got, "230") {
		t.Fatalf("PASS: %q", got)
	}
	parse227(t, c.reply())
	h.waitInstalled(t, 1)
}

// TestREINEndsTheLogin: after REIN the session is not logged in: the data
// port it had goes (logged-out), and PASV/PORT get 530 until the server
// accepts a new login.
func TestREINEndsTheLogin(t *testing.T) {
	as := newActiveServer(t, nil)
	h := newHarness(t, options{upstream: as.ln.Addr().String()})
	c := h.dial(t)
	c.login()
	if got := c.cmd("PORT 127,0,0,1,195,80"); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT: %q", got)
	}
	h.waitInstalled(t, 1)
	c.cmd("REIN") // the scripted server's answer does not matter
	h.waitInstalled(t, 0)
	h.waitLog(t, "reason=logged-out")
	for _, cmd := range []string{"PORT 127,0,0,1,195,81", "PASV", "EPSV"} {
		if got := c.cmd(cmd); got != "530 Please login with USER and PASS." {
			t.Errorf("%s after REIN: %q, want 530", cmd, got)
		}
	}
	if strings.Contains(h.tap.sent(), "195,81") || strings.Contains(h.tap.sent(), "PASV") {
		t.Fatalf("a data command after REIN reached the server: %q", h.tap.sent())
	}
	c.login()
	if got := c.cmd("PORT 127,0,0,1,195,82"); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT after logging in again: %q", got)
	}
	h.waitInstalled(t, 1)
}

// TestOneMappingPerSession pipelines ten PORT+RETR pairs while the first
// transfer is in progress: only the first PORT is mapped; the others get
// 425 and install nothing, and the client reads every reply in order.
func TestOneMappingPerSession(t *testing.T) {
	ss := newStallServer(t, false)
	h := newHarness(t, options{upstream: ss.ln.Addr().String()})
	c := h.dial(t)
	c.login()
	var b strings.Builder
	for i := range 10 {
		fmt.Fprintf(&b, "PORT 127,0,0,1,195,%d\r\nRETR f%d\r\n", 80+i, i)
	}
	b.WriteString("EPSV")
	c.send(b.String())
	// Every command has been judged once the last is counted.
	for i := 0; h.proxy.Stats().Refused["transfer-in-progress"] < 10 && i < 500; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.backend.Count("install"); n != 1 {
		t.Fatalf("%d mappings installed for one transfer in progress, want 1", n)
	}
	if n := h.backend.Len(); n != 1 {
		t.Fatalf("%d mappings live, want 1", n)
	}
	ss.release()
	want := []string{"200", "150", "226"}
	for range 9 {
		want = append(want, "425 Can't open data connection: a transfer is still in progress.", "503")
	}
	want = append(want, "425 Can't open data connection: a transfer is still in progress.")
	for i, w := range want {
		if got := c.reply(); !strings.HasPrefix(got, w) {
			t.Fatalf("reply %d: %q, want %s", i, got, w)
		}
	}
	h.waitInstalled(t, 0)
	// The transfer over, a new data port may be had.
	if got := c.cmd("PORT 127,0,0,1,195,99"); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT after the transfer: %q", got)
	}
}

// TestIdleTimeoutWhileTransferPending: a transfer command the server never
// answers (no 150: no data connection) does not keep an idle session
// alive; the client gets 421 and its mapping goes.
func TestIdleTimeoutWhileTransferPending(t *testing.T) {
	ss := newStallServer(t, true)
	h := newHarness(t, options{upstream: ss.ln.Addr().String(), idle: 300 * time.Millisecond})
	c := h.dial(t)
	c.login()
	if got := c.cmd("PORT 127,0,0,1,195,80"); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT: %q", got)
	}
	c.send("RETR f")
	if got := c.reply(); !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "Idle timeout") {
		t.Fatalf("an idle session with an unanswered RETR got %q, want 421 Idle timeout", got)
	}
	h.waitInstalled(t, 0)
}

// TestMaxMappingsPerIP: one client address at --max-mappings-per-ip gets
// 425 for one more data port, while another address still transfers; a
// port given back makes room again.
func TestMaxMappingsPerIP(t *testing.T) {
	h := newHarness(t, options{maxMappings: 2})
	data := plant(t, h.server.FS(), "file.bin", 1000)
	var held []*conn
	for range 2 {
		c := h.dial(t)
		c.login()
		parse227(t, c.cmd("PASV"))
		held = append(held, c)
	}
	third := h.dial(t)
	third.login()
	want := "425 Can't open data connection: too many data connections from your address."
	for _, cmd := range []string{"PASV", "EPSV", "PORT 127,0,0,1,195,80"} {
		if got := third.cmd(cmd); got != want {
			t.Fatalf("%s over the cap: %q, want %q", cmd, got, want)
		}
	}
	if n := h.proxy.Stats().Refused["max-mappings-per-ip"]; n != 3 {
		t.Errorf("max-mappings-per-ip refusals: %d, want 3", n)
	}

	// Another address downloads as if nothing happened.
	other := netip.MustParseAddr("127.0.0.5")
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(other, 0)), Timeout: 5 * time.Second}
	oc, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = oc.SetDeadline(time.Now().Add(10 * time.Second))
	o := &conn{t: t, c: oc, r: bufio.NewReader(oc)}
	t.Cleanup(func() { oc.Close() })
	o.expect("220")
	o.login()
	ap := parse227(t, o.cmd("PASV"))
	dc, err := d.Dial("tcp", ap.String())
	if err != nil {
		t.Fatalf("the other address's data connection: %v", err)
	}
	defer dc.Close()
	o.send("RETR file.bin")
	_ = dc.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(dc)
	if err != nil || string(got) != string(data) {
		t.Fatalf("the other address downloaded %d bytes, want %d", len(got), len(data))
	}
	if r := o.reply(); !strings.HasPrefix(r, "150") && !strings.HasPrefix(r, "125") {
		t.Fatalf("RETR: %q", r)
	}
	if r := o.reply(); !strings.HasPrefix(r, "226") {
		t.Fatalf("RETR end: %q", r)
	}

	// A session that ends gives its port back; the capped address may
	// have one again.
	held[0].cmd("QUIT")
	for i := 0; i < 500; i++ {
		if got := third.cmd("PASV"); strings.HasPrefix(got, "227 ") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the capped address got no data port after one of its sessions ended")
}

// TestREINOpensANewLoginWindow: REIN after the login timeout has passed
// since the session began gets its reply and a fresh --login-timeout to
// log in again, as a new session would; one that does not log in within
// it gets 421.
func TestREINOpensANewLoginWindow(t *testing.T) {
	as := newActiveServer(t, nil)
	h := newHarness(t, options{upstream: as.ln.Addr().String(), login: 300 * time.Millisecond})
	c := h.dial(t)
	c.login()
	time.Sleep(400 * time.Millisecond) // past the session's own login window
	if got := c.cmd("REIN"); !strings.HasPrefix(got, "200") {
		t.Fatalf("REIN after the login window: %q, want the server's reply", got)
	}
	got := c.cmd("NOOP")
	switch {
	case strings.HasPrefix(got, "200"):
		got = c.reply()
	case strings.HasPrefix(got, "421 "):
		// A loaded machine: the new window closed while the NOOP waited.
	default:
		t.Fatalf("NOOP right after REIN: %q", got)
	}
	if !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "Login timeout") {
		t.Fatalf("no login after REIN: %q, want 421 Login timeout", got)
	}
}
