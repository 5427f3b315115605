package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/pool"
)

// userPolicy makes the default route a pool of the harness's server
// under the user policy.
func userPolicy(st *proxy.Settings) {
	st.Pool = pool.New(pool.Config{Name: "u", Members: []pool.Member{{Addr: st.Upstream, Weight: 1}}, Policy: pool.User}, nil)
}

// TestUserPolicyGreetsAndWaitsForUSER: under the user policy pasvgate
// greets the client itself, answers what comes before USER without the
// server, and connects at USER, whose reply is the server's; the server's
// first command is that USER, and the session then works as any other.
func TestUserPolicyGreetsAndWaitsForUSER(t *testing.T) {
	h := newHarness(t, options{settings: userPolicy})
	c := h.dial(t) // read pasvgate's 220
	for _, tc := range []struct{ cmd, want string }{
		{"SYST", "215 "}, {"NOOP", "200 "}, {"FEAT", "211 "}, {"PASV", "530 "}, {"PASS x", "503 "},
		{"LIST", "530 "}, {"STAT", "530 "},
	} {
		if got := c.cmd(tc.cmd); !strings.HasPrefix(got, tc.want) {
			t.Fatalf("%s before USER: %q, want %s", tc.cmd, got, tc.want)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if sent := h.tap.sent(); sent != "" {
		t.Fatalf("the server was reached before USER: %q", sent)
	}
	// The live view: a session that awaits its USER, with no server yet.
	if ss := h.proxy.Sessions(); len(ss) != 1 || ss[0].State != proxy.StateLogin || ss[0].Server != "" {
		t.Fatalf("live view before USER: %+v, want one session in state login with no server", ss)
	}
	// USER and PASS in one write: the PASS that came with USER is
	// read after the server is connected.
	c.send("USER anonymous\r\nPASS test@")
	if r := c.reply(); !strings.HasPrefix(r, "331") {
		t.Fatalf("USER: %q", r)
	}
	if r := c.reply(); !strings.HasPrefix(r, "230") {
		t.Fatalf("PASS: %q", r)
	}
	if sent := h.tap.sent(); !strings.HasPrefix(sent, "USER anonymous\r\nPASS test@\r\n") {
		t.Fatalf("the server got %q first, want USER then PASS", sent)
	}
	ap := parse227(t, c.cmd("PASV"))
	if ap.Addr() != publicAddr || !inRange(ap.Port()) {
		t.Fatalf("227 after a user-policy login: %v", ap)
	}
	h.waitLog(t, `pool=u`)
}

// TestUserPolicyBounds: a client that never sends USER is bounded by the
// command count and by QUIT; neither reaches the server.
func TestUserPolicyBounds(t *testing.T) {
	h := newHarness(t, options{settings: userPolicy})
	c := h.dial(t)
	c.send(strings.Repeat("NOOP\r\n", 40))
	var last string
	for i := 0; i < 40; i++ {
		last = c.reply()
		if strings.HasPrefix(last, "421") {
			break
		}
	}
	if !strings.HasPrefix(last, "421") {
		t.Fatalf("40 commands before USER: last reply %q, want a 421", last)
	}
	q := h.dial(t)
	if r := q.cmd("QUIT"); !strings.HasPrefix(r, "221") {
		t.Fatalf("QUIT before USER: %q", r)
	}
	if _, err := q.r.ReadByte(); err == nil {
		t.Fatal("the connection stayed open after 221")
	}
	// A client that ends its half before USER has its connection closed
	// by pasvgate in turn, not left open.
	e := h.dial(t)
	if err := e.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = e.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := e.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the client's FIN before USER: %v, want pasvgate's FIN (EOF)", err)
	}
	if sent := h.tap.sent(); sent != "" {
		t.Fatalf("the server was reached: %q", sent)
	}
	h.waitLog(t, "session ended before login")
}

// TestUserPolicyServerDown: a pool whose server is gone answers USER with
// 421, not a hang.
func TestUserPolicyServerDown(t *testing.T) {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h := newHarness(t, options{settings: func(st *proxy.Settings) {
		st.Pool = pool.New(pool.Config{Name: "u", Members: []pool.Member{{Addr: dead, Weight: 1}}, Policy: pool.User}, nil)
	}})
	c := h.dial(t)
	if r := c.cmd("USER anonymous"); !strings.HasPrefix(r, "421") {
		t.Fatalf("USER with the server down: %q, want 421", r)
	}
}

// TestUserPolicyTLS: under the user policy a client's AUTH TLS, PBSZ and
// PROT before USER are answered by pasvgate; at USER the server's leg is
// upgraded before anything of the login reaches it, and protected data
// then flows as it does for any TLS session.
func TestUserPolicyTLS(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(userPolicy))
	want := plant(t, h.server.FS(), "f.txt", 32<<10)
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	if sent := h.tap.sent(); sent != "" {
		t.Fatalf("the server was reached before USER: %q", sent)
	}
	c.login()
	h.expectServerTLSFirst(t)
	r := c.expectAfter("PASV", "227")
	ap := parse227(t, r)
	d, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c.expectAfter("RETR f.txt", "150")
	td := tls.Client(d, c.tls)
	_ = td.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(td)
	if err != nil {
		t.Fatalf("protected download: %v", err)
	}
	c.expect("226")
	if string(got) != string(want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}
}
