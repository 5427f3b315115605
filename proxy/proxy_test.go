package proxy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
	"github.com/spf13/afero"
)

var pasvRe = regexp.MustCompile(`^227 Entering Passive Mode \((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)\.$`)

// parse227 returns the address of a rewritten 227 as the client sees it.
func parse227(t testing.TB, line string) netip.AddrPort {
	t.Helper()
	m := pasvRe.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("reply %q is not a 227 in pasvgate's format", line)
	}
	var n [6]byte
	for i := range n {
		v, _ := strconv.Atoi(m[i+1])
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5]))
}

func inRange(p uint16) bool { return p >= 20000 && p <= 20999 }

func plant(t testing.TB, fs afero.Fs, name string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := afero.WriteFile(fs, "/"+name, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// dialRecorder records every address a jlaffaye client dials.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialRecorder) dial(network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return net.DialTimeout(network, addr, 5*time.Second)
}

func (d *dialRecorder) all() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

func TestPASVRewriteExactReply(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	got := c.cmd("PASV")
	ap := parse227(t, got)
	if ap.Addr() != publicAddr || !inRange(ap.Port()) {
		t.Fatalf("227 carries %v, want %v and a port in 20000-20999", ap, publicAddr)
	}
	ms, _ := h.backend.List(t.Context())
	if len(ms) != 1 {
		t.Fatalf("installed %v, want one mapping", ms)
	}
	m := ms[0]
	// On loopback pasvgate's own connection to the server comes from
	// 127.0.0.1: that is the SNAT address.
	if m.Source != netip.MustParseAddr(clientDial) || m.Public != ap ||
		m.Target.Addr() != netip.MustParseAddr(serverAddr) || m.SNAT != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("mapping %v: want client %s -> %v => %s:P with SNAT to pasvgate's upstream address", m, clientDial, ap, serverAddr)
	}
	// Clients that ignore the 227's address connect back to the one
	// they dialed: the mapping admits them there too.
	if m.Dialed != netip.MustParseAddr(clientDial) {
		t.Fatalf("mapping %v: want the dialed address %s as its second address", m, clientDial)
	}
	if strings.Contains(got, "127,0,0,2") {
		t.Fatalf("the server's address leaked: %q", got)
	}
	// A new PASV replaces the mapping: the old one is removed.
	ap2 := parse227(t, c.cmd("PASV"))
	h.waitInstalled(t, 1)
	ms, _ = h.backend.List(t.Context())
	if ms[0].Public != ap2 || h.backend.Count("remove") != 1 {
		t.Fatalf("after a second PASV: %v installed, %d removals; want only %v and one removal", ms, h.backend.Count("remove"), ap2)
	}
	// The session's end releases the rest.
	if r := c.cmd("QUIT"); !strings.HasPrefix(r, "221") {
		t.Fatalf("QUIT: %q", r)
	}
	h.waitInstalled(t, 0)
	h.waitLog(t, "reason=replaced")
	h.waitLog(t, "reason=session-end")
}

func TestEPSVRewrite(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	got := c.cmd("EPSV")
	var port uint16
	if _, err := fmt.Sscanf(got, "229 Entering Extended Passive Mode (|||%d|)", &port); err != nil || !inRange(port) {
		t.Fatalf("EPSV reply %q, want 229 with a port in 20000-20999", got)
	}
	ms, _ := h.backend.List(t.Context())
	// EPSV clients connect to the address they dialed, so that is what the
	// mapping must match, whatever --public-addr says.
	if len(ms) != 1 || ms[0].Public != netip.AddrPortFrom(netip.MustParseAddr(clientDial), port) || ms[0].Dialed.IsValid() {
		t.Fatalf("installed %v, want %s:%d and no second address", ms, clientDial, port)
	}
}

// TestJlaffayeTransfers runs real transfers with a client that trusts the
// 227 address, and checks it dialed exactly what pasvgate announced.
func TestJlaffayeTransfers(t *testing.T) {
	for _, epsv := range []bool{false, true} {
		t.Run(map[bool]string{false: "PASV", true: "EPSV"}[epsv], func(t *testing.T) {
			h := newHarness(t, options{})
			want := plant(t, h.server.FS(), "file.bin", 1<<20)
			rec := &dialRecorder{}
			cl, err := ftp.Dial(h.addr, ftp.DialWithDisabledEPSV(!epsv), ftp.DialWithTrustPasvIP(true),
				ftp.DialWithDialFunc(rec.dial), ftp.DialWithTimeout(10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Quit()
			if err := cl.Login("anonymous", "test@"); err != nil {
				t.Fatal(err)
			}

			// Download.
			r, err := cl.Retr("file.bin")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
				t.Fatalf("download: %d bytes, err %v; want the planted 1 MiB", len(got), err)
			}
			// Upload.
			up := make([]byte, 1<<20)
			_, _ = rand.Read(up)
			if err := cl.Stor("up.bin", bytes.NewReader(up)); err != nil {
				t.Fatal(err)
			}
			stored, err := afero.ReadFile(h.server.FS(), "/up.bin")
			if err != nil || sha256.Sum256(stored) != sha256.Sum256(up) {
				t.Fatalf("upload: server has %d bytes, err %v", len(stored), err)
			}
			// Listing.
			entries, err := cl.List("/")
			if err != nil {
				t.Fatal(err)
			}
			names := []string{}
			for _, e := range entries {
				names = append(names, e.Name)
			}
			if !strings.Contains(strings.Join(names, " "), "file.bin") {
				t.Fatalf("listing %v lacks file.bin", names)
			}

			// Every data connection went where pasvgate said, through a
			// mapping: the client never saw the server's address.
			wantHost := publicAddr.String()
			if epsv {
				wantHost = clientDial
			}
			dials := rec.all()
			if len(dials) != 4 { // control + 3 data connections
				t.Fatalf("client dialed %v, want the control connection and 3 data connections", dials)
			}
			for _, a := range dials[1:] {
				ap := netip.MustParseAddrPort(a)
				if ap.Addr().String() != wantHost || !inRange(ap.Port()) {
					t.Fatalf("data connection to %v, want %s and a port in 20000-20999", ap, wantHost)
				}
			}
			if n := len(h.backend.admitted()); n != 3 {
				t.Fatalf("%d data connections came through mappings, want 3", n)
			}
			h.waitInstalled(t, 0)
			if i, r := h.backend.Count("install"), h.backend.Count("remove"); i != 3 || r != 3 {
				t.Fatalf("%d installs and %d removals for 3 transfers, want exactly one of each per transfer", i, r)
			}
		})
	}
}

// TestPythonFtplib drives the standard library client of another language,
// told to trust the 227 address.
func TestPythonFtplib(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	h := newHarness(t, options{})
	want := plant(t, h.server.FS(), "file.bin", 1<<20)
	out := filepath.Join(t.TempDir(), "got.bin")
	host, port, _ := net.SplitHostPort(h.addr)
	script := `
import ftplib, sys
f = ftplib.FTP()
f.trust_server_pasv_ipv4_address = True
f.connect(sys.argv[1], int(sys.argv[2]), timeout=10)
f.login()
host, port = f.makepasv()
print("DATA", host, port)
with open(sys.argv[3], "wb") as o:
    f.retrbinary("RETR file.bin", o.write)
with open(sys.argv[3], "rb") as i:
    f.storbinary("STOR back.bin", i)
print("LIST", " ".join(f.nlst()))
f.quit()
`
	cmd := exec.Command(py, "-c", script, host, port, out)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ftplib: %v\n%s", err, res)
	}
	got, _ := os.ReadFile(out)
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("download through ftplib: %d bytes differ from the planted file", len(got))
	}
	back, _ := afero.ReadFile(h.server.FS(), "/back.bin")
	if sha256.Sum256(back) != sha256.Sum256(want) {
		t.Fatalf("upload through ftplib: server has %d bytes", len(back))
	}
	if !strings.Contains(string(res), "DATA "+publicAddr.String()+" ") || !strings.Contains(string(res), "back.bin") {
		t.Fatalf("ftplib output %q: want the data address %s and the listing", res, publicAddr)
	}
	h.waitInstalled(t, 0)
	// makepasv opened one mapping that no transfer used; it was replaced.
	if i, r := h.backend.Count("install"), h.backend.Count("remove"); i != 4 || r != 4 {
		t.Fatalf("%d installs, %d removals; want 4 of each", i, r)
	}
}

func TestActiveCommandsRefused(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	cases := []struct{ cmd, code string }{
		{"PORT 127,0,0,9,200,10", "500"},       // another host: FTP bounce
		{"PORT 127,0,0,1,0,22", "500"},         // privileged port
		{"PORT 127,0,0,1,0,0", "501"},          // port 0 is malformed
		{"PORT 127,0,0,256,200,10", "501"},     // octet out of range
		{"PORT 127,0,0,1", "501"},              // too short
		{"EPRT |1|127.0.0.9|50000|", "500"},    // another host
		{"EPRT |2|2001:db8::1|50000|", "522"},  // wrong family
		{"EPRT |1|127.0.0.1|80|", "500"},       // privileged port
		{"LPRT 4,4,127,0,0,1,2,195,80", "502"}, // long address
		{"LPSV", "502"},                        // long address
		{"AUTH TLS", "534"},                    // cannot see inside TLS
		{"auth ssl", "534"},                    // verbs are case-insensitive
	}
	for _, tc := range cases {
		if got := c.cmd(tc.cmd); !strings.HasPrefix(got, tc.code+" ") {
			t.Errorf("%s: reply %q, want %s", tc.cmd, got, tc.code)
		}
	}
	// The session goes on, and nothing refused reached the server.
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP after refusals: %q", got)
	}
	sent := h.tap.sent()
	for _, w := range []string{"PORT", "EPRT", "LPRT", "LPSV", "AUTH", "auth"} {
		if strings.Contains(sent, w) {
			t.Fatalf("a refused %s reached the server: %q", w, sent)
		}
	}
	if h.backend.Count("install") != 0 {
		t.Fatal("a refused command installed a mapping")
	}
	// An allowed PORT (the client's own address, port >= 1024) is mapped
	// and reaches the server rewritten to pasvgate's own address and Q.
	if got := c.cmd("PORT 127,0,0,1,195,80"); !strings.HasPrefix(got, "200") {
		t.Fatalf("allowed PORT: %q", got)
	}
	sent = h.tap.sent()
	if strings.Contains(sent, "195,80") || !regexp.MustCompile(`PORT 127,0,0,1,(7[89]|8[0-2]),\d+\r\n`).MatchString(sent) {
		t.Fatalf("the allowed PORT reached the server as %q, want pasvgate's address and a port in 20000-20999", sent)
	}
}

func TestEPSVAll(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	c.cmd("EPSV ALL") // the server's answer does not matter; pasvgate remembers
	for _, cmd := range []string{"PASV", "PORT 127,0,0,1,195,80", "EPRT |1|127.0.0.1|50000|"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "503 ") {
			t.Errorf("%s after EPSV ALL: %q, want 503", cmd, got)
		}
	}
	if got := c.cmd("EPSV"); !strings.HasPrefix(got, "229 ") {
		t.Errorf("EPSV after EPSV ALL: %q, want 229", got)
	}
}

func TestFailingBackendGives425(t *testing.T) {
	h := newHarness(t, options{})
	h.backend.FailInstall(func(rules.Mapping) error { return fake.ErrInjected })
	c := h.dial(t)
	c.login()
	for _, cmd := range []string{"PASV", "EPSV"} {
		if got := c.cmd(cmd); got != "425 Can't open data connection." {
			t.Errorf("%s with a failing backend: %q, want 425", cmd, got)
		}
	}
	if h.backend.Len() != 0 {
		t.Fatal("a failed install left a mapping")
	}
	h.backend.FailInstall(nil)
	if got := c.cmd("PASV"); !strings.HasPrefix(got, "227 ") {
		t.Fatalf("PASV after the backend recovered: %q", got)
	}
}

func TestServerAdvertisingAnotherHostRefused(t *testing.T) {
	h := newHarness(t, options{advertise: "127.0.0.9"})
	c := h.dial(t)
	c.login()
	if got := c.cmd("PASV"); got != "425 Can't open data connection." {
		t.Fatalf("PASV: %q, want 425", got)
	}
	if h.backend.Count("install") != 0 || len(h.backend.Ops()) != 0 {
		t.Fatalf("the backend was called: %v", h.backend.Ops())
	}
	if log := h.log.String(); !strings.Contains(log, "advertised=127.0.0.9") || !strings.Contains(log, "server=127.0.0.2") {
		t.Fatalf("log does not name the server and the address it tried:\n%s", log)
	}
}

func TestConnectTimeoutReleases(t *testing.T) {
	h := newHarness(t, options{connectTimeout: 100 * time.Millisecond})
	plant(t, h.server.FS(), "file.bin", 10)
	c := h.dial(t)
	c.login()
	parse227(t, c.cmd("PASV"))
	h.waitInstalled(t, 0)
	if got := c.cmd("RETR file.bin"); !strings.HasPrefix(got, "425 ") {
		t.Fatalf("RETR after the connect timeout: %q, want 425", got)
	}
	if strings.Contains(h.tap.sent(), "RETR") {
		t.Fatal("a RETR whose mapping had expired reached the server")
	}
	h.waitLog(t, "reason=connect-timeout")
}

func TestAbruptClientReleases(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	parse227(t, c.cmd("PASV"))
	c.c.Close()
	h.waitInstalled(t, 0)
}

func TestUpstreamDownGives421(t *testing.T) {
	ln, _ := net.Listen("tcp", serverAddr+":0")
	dead := ln.Addr().String()
	ln.Close()
	h := newHarness(t, options{upstream: dead})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(got), "421 ") {
		t.Fatalf("with the server down the client got %q, want 421", got)
	}
}

func TestLongLineRefusedSessionGoesOn(t *testing.T) {
	h := newHarness(t, options{maxLine: 512})
	c := h.dial(t)
	c.login()
	if got := c.cmd("NOOP " + strings.Repeat("x", 600)); !strings.HasPrefix(got, "500 ") {
		t.Fatalf("over-long line: %q, want 500", got)
	}
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP after an over-long line: %q", got)
	}
}

func TestTelnetSequencesPassUnharmed(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	// Telnet IP and DM before ABOR (RFC 959 4.1.3), and AYT on its own line.
	c.send("\xff\xf4\xff\xf2ABOR")
	if got := c.reply(); !strings.HasPrefix(got, "2") && !strings.HasPrefix(got, "4") && !strings.HasPrefix(got, "5") {
		t.Fatalf("ABOR: %q", got)
	}
	if !strings.Contains(h.tap.sent(), "\xff\xf4\xff\xf2ABOR\r\n") {
		t.Fatalf("the Telnet sequence did not reach the server byte for byte: %q", h.tap.sent())
	}
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP after ABOR: %q", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, options{idle: 200 * time.Millisecond})
	c := h.dial(t)
	c.login()
	got := c.reply() // no command: the next thing is pasvgate's 421
	if !strings.HasPrefix(got, "421 ") {
		t.Fatalf("idle client got %q, want 421", got)
	}
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("connection still open after the idle timeout: %v", err)
	}
}
