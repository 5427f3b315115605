package demoftpd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
	"github.com/spf13/afero"
)

// Ports well away from the default range, so a lab server on the same host
// does not collide with the tests.
var testPorts = [2]int{41000, 41099}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.PassivePorts == [2]int{} {
		cfg.PassivePorts = testPorts
	}
	s, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// rawLogin opens a control connection and logs in anonymously.
func rawLogin(t *testing.T, s *Server) *textproto.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial control: %v", err)
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	c := textproto.NewConn(nc)
	t.Cleanup(func() { _ = c.Close() })
	expect(t, c, 220)
	cmd(t, c, 331, "USER anonymous")
	cmd(t, c, 230, "PASS x@example.com")
	return c
}

func expect(t *testing.T, c *textproto.Conn, code int) string {
	t.Helper()
	_, msg, err := c.ReadResponse(code)
	if err != nil {
		t.Fatalf("want %d: %v", code, err)
	}
	return msg
}

func cmd(t *testing.T, c *textproto.Conn, code int, format string, args ...any) string {
	t.Helper()
	if err := c.PrintfLine(format, args...); err != nil {
		t.Fatalf("send %q: %v", format, err)
	}
	return expect(t, c, code)
}

var pasvRE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)

func TestPASVAdvertisesPublicHost(t *testing.T) {
	s := startServer(t, Config{PublicHost: "192.0.2.10"})
	if want := netip.MustParseAddr("127.0.0.1"); s.Addr().Addr() != want || s.Addr().Port() == 0 {
		t.Fatalf("Addr = %v, want 127.0.0.1 and a real port", s.Addr())
	}
	if err := afero.WriteFile(s.FS(), "/hello.txt", []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := rawLogin(t, s)

	msg := cmd(t, c, 227, "PASV")
	m := pasvRE.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("227 reply %q has no h1,h2,h3,h4,p1,p2", msg)
	}
	if host := m[1] + "," + m[2] + "," + m[3] + "," + m[4]; host != "192,0,2,10" {
		t.Fatalf("227 advertises %s, want 192,0,2,10 (reply %q)", host, msg)
	}
	p1, _ := strconv.Atoi(m[5])
	p2, _ := strconv.Atoi(m[6])
	port := p1*256 + p2
	if port < testPorts[0] || port > testPorts[1] {
		t.Fatalf("227 port %d outside %d-%d", port, testPorts[0], testPorts[1])
	}

	// The advertised port must be the one listened on: fetch a file through it.
	dc, err := net.DialTimeout("tcp", netip.AddrPortFrom(s.Addr().Addr(), uint16(port)).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial advertised data port: %v", err)
	}
	defer dc.Close()
	cmd(t, c, 150, "RETR hello.txt")
	got, err := io.ReadAll(dc)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, c, 226)
	if string(got) != "hello\n" {
		t.Fatalf("RETR over PASV got %q", got)
	}
}

func TestEPSVUploadDownloadList(t *testing.T) {
	s := startServer(t, Config{PublicHost: "192.0.2.10", User: "alice", Password: "secret"})

	dial := func() *ftp.ServerConn {
		c, err := ftp.Dial(s.Addr().String(), ftp.DialWithDisabledEPSV(false), ftp.DialWithTimeout(5*time.Second))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return c
	}
	// ftpserverlib answers a bad password with 530 and hangs up.
	bad := dial()
	if err := bad.Login("alice", "wrong"); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	var debug bytes.Buffer
	c, err := ftp.Dial(s.Addr().String(), ftp.DialWithDisabledEPSV(false), ftp.DialWithTimeout(5*time.Second),
		ftp.DialWithDebugOutput(&debug))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Quit()
	if err := c.Login("alice", "secret"); err != nil {
		t.Fatalf("login: %v", err)
	}

	payload := make([]byte, 1<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.Stor("big.bin", bytes.NewReader(payload)); err != nil {
		t.Fatalf("STOR: %v", err)
	}
	stored, err := afero.ReadFile(s.FS(), "/big.bin")
	if err != nil || sha256.Sum256(stored) != sha256.Sum256(payload) {
		t.Fatalf("uploaded file on the server: %d bytes, err %v; want the 1 MiB sent", len(stored), err)
	}

	r, err := c.Retr("big.bin")
	if err != nil {
		t.Fatalf("RETR: %v", err)
	}
	got, err := io.ReadAll(r)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("RETR read: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("downloaded %d bytes, sha256 differs from the 1 MiB uploaded", len(got))
	}

	entries, err := c.List("/") // MLSD: the server advertises it in FEAT
	if err != nil {
		t.Fatalf("MLSD: %v", err)
	}
	if !hasFile(entries, "big.bin", len(payload)) {
		t.Fatalf("MLSD does not show big.bin of %d bytes: %v", len(payload), entries)
	}
	if !strings.Contains(debug.String(), "229 Entering Extended Passive Mode") || strings.Contains(debug.String(), "PASV") {
		t.Fatalf("transfers did not go over EPSV alone; control log:\n%s", debug.String())
	}
	names, err := c.NameList("/")
	if err != nil {
		t.Fatalf("NLST: %v", err)
	}
	if !slices.ContainsFunc(names, func(n string) bool { return n == "big.bin" || n == "/big.bin" }) {
		t.Fatalf("NLST = %q, want big.bin", names)
	}
}

func TestLIST(t *testing.T) {
	s := startServer(t, Config{})
	if err := afero.WriteFile(s.FS(), "/seen.txt", []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	var debug bytes.Buffer
	c, err := ftp.Dial(s.Addr().String(), ftp.DialWithDisabledMLSD(true), ftp.DialWithDisabledEPSV(true),
		ftp.DialWithTimeout(5*time.Second), ftp.DialWithDebugOutput(&debug))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Quit()
	if err := c.Login("ftp", "any"); err != nil {
		t.Fatalf("anonymous login: %v", err)
	}
	// PASV here, with no PublicHost: the 227 must carry the listener's address.
	entries, err := c.List("/")
	if err != nil {
		t.Fatalf("LIST: %v", err)
	}
	if !hasFile(entries, "seen.txt", 5) {
		t.Fatalf("LIST does not show seen.txt of 5 bytes: %v", entries)
	}
	if !strings.Contains(debug.String(), "(127,0,0,1,") {
		t.Fatalf("227 does not carry the listener's address 127.0.0.1; control log:\n%s", debug.String())
	}
}

func hasFile(entries []*ftp.Entry, name string, size int) bool {
	return slices.ContainsFunc(entries, func(e *ftp.Entry) bool {
		return e.Name == name && e.Type == ftp.EntryTypeFile && e.Size == uint64(size)
	})
}

func TestActive(t *testing.T) {
	for _, tc := range []struct {
		name string
		arg  func(ap netip.AddrPort) string
	}{
		{"PORT", func(ap netip.AddrPort) string {
			a := ap.Addr().As4()
			return fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], ap.Port()>>8, ap.Port()&0xff)
		}},
		{"EPRT", func(ap netip.AddrPort) string { return fmt.Sprintf("EPRT |1|%s|%d|", ap.Addr(), ap.Port()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{})
			if err := afero.WriteFile(s.FS(), "/a.txt", []byte("active "+tc.name), 0o644); err != nil {
				t.Fatal(err)
			}
			c := rawLogin(t, s)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cmd(t, c, 200, "%s", tc.arg(ln.Addr().(*net.TCPAddr).AddrPort()))
			cmd(t, c, 150, "RETR a.txt")
			_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
			dc, err := ln.Accept()
			if err != nil {
				t.Fatalf("server did not connect back: %v", err)
			}
			defer dc.Close()
			got, err := io.ReadAll(dc)
			if err != nil {
				t.Fatal(err)
			}
			expect(t, c, 226)
			if want := "active " + tc.name; string(got) != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}

func TestDisableActive(t *testing.T) {
	s := startServer(t, Config{DisableActive: true})
	c := rawLogin(t, s)
	for _, line := range []string{"PORT 127,0,0,1,4,1", "EPRT |1|127.0.0.1|1025|"} {
		if err := c.PrintfLine("%s", line); err != nil {
			t.Fatal(err)
		}
		code, msg, err := c.ReadResponse(0)
		if err == nil && code/100 == 2 {
			t.Fatalf("%s accepted with DisableActive: %d %s", line, code, msg)
		}
	}
}

func TestCloseDropsClients(t *testing.T) {
	s, err := Start(context.Background(), Config{PassivePorts: testPorts})
	if err != nil {
		t.Fatal(err)
	}
	c := rawLogin(t, s)
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return with a client connected")
	}
	var ne net.Error
	if line, err := c.ReadLine(); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("client after Close: read %q, %v; want the connection closed", line, err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		t.Fatal("control port still accepts after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestContextCancelStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Config{PassivePorts: testPorts})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(3 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", s.Addr().String(), time.Second)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after the context was cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after cancel: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{PublicHost: "2001:db8::1"},
		{PublicHost: "ftp.example.com"},
		{PassivePorts: [2]int{5000, 4000}},
		{PassivePorts: [2]int{0, 70000}},
		{Root: "/nonexistent/ftpd-root"},
		{Listen: "127.0.0.1:notaport"},
	} {
		if s, err := Start(t.Context(), cfg); err == nil {
			s.Close()
			t.Errorf("Start(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestRootDir(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, Config{Root: dir})
	c, err := ftp.Dial(s.Addr().String(), ftp.DialWithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Quit()
	if err := c.Login("anonymous", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Stor("up.txt", bytes.NewReader([]byte("on disk"))); err != nil {
		t.Fatalf("STOR: %v", err)
	}
	got, err := afero.ReadFile(afero.NewOsFs(), dir+"/up.txt")
	if err != nil || string(got) != "on disk" {
		t.Fatalf("file under Root: %q, %v", got, err)
	}
}
