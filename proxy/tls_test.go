package proxy_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
)

// pki is a test CA and the certificates it signed: the gateway's, which
// clients must see, and the server's, which only pasvgate sees.
type pki struct {
	roots   *x509.CertPool
	gateway tls.Certificate
	server  tls.Certificate
}

// Names in the certificates, so that a test can tell whose a client saw.
const (
	gatewayCN = "pasvgate gateway"
	serverCN  = "test ftpd"
)

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := probetest.NewCA("pasvgate test CA")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(cn string, names ...string) tls.Certificate {
		c, err := ca.Issue(cn, names, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	p := &pki{roots: x509.NewCertPool()}
	p.roots.AddCert(ca.Cert)
	p.gateway = issue(gatewayCN, clientDial, publicAddr.String())
	p.server = issue(serverCN, serverAddr)
	return p
}

// tlsOptions is a harness whose server offers AUTH TLS with p's server
// certificate and whose pasvgate offers TLS with the gateway's, trusting
// p's CA upstream. edit, if set, changes pasvgate's settings further.
func (p *pki) options(edit func(*proxy.Settings)) options {
	return options{
		ftpdTLS: &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12},
		settings: func(st *proxy.Settings) {
			st.TLS = proxy.TLSAllow
			st.Certificate = &p.gateway
			st.UpstreamRoots = p.roots
			if edit != nil {
				edit(st)
			}
		},
	}
}

// startTLS sends AUTH TLS, expects 234 and makes the handshake, checking
// the certificate is the gateway's. The conn reads and writes through TLS
// from then on.
func (c *conn) startTLS(p *pki) *tls.ConnectionState {
	c.t.Helper()
	c.expectAfter("AUTH TLS", "234")
	c.tls = &tls.Config{RootCAs: p.roots, ServerName: clientDial, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	tc := tls.Client(c.c, c.tls)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake with pasvgate: %v", err)
	}
	st := tc.ConnectionState()
	if cn := st.PeerCertificates[0].Subject.CommonName; cn != gatewayCN {
		c.t.Fatalf("the client was shown %q, want the gateway's certificate", cn)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
	return &st
}

func (c *conn) expectAfter(line, prefix string) string {
	c.t.Helper()
	c.send(line)
	return c.expect(prefix)
}

// download runs PASV and RETR of name over the conn and returns the bytes.
func (c *conn) download(name string) string {
	c.t.Helper()
	r := c.expectAfter("PASV", "227")
	ap := parse227(c.t, r)
	if ap.Addr() != publicAddr {
		c.t.Fatalf("227 %q names %s, want the public address %s", r, ap.Addr(), publicAddr)
	}
	d, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	defer d.Close()
	c.expectAfter("RETR "+name, "150")
	_ = d.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(d)
	if err != nil {
		c.t.Fatal(err)
	}
	c.expect("226")
	return string(b)
}

// TestAUTHTLSBothLegs: with --upstream-tls auto, a client's AUTH TLS makes
// both legs TLS. The client sees the gateway's certificate; the server
// sees AUTH TLS and then nothing in clear (no USER, no PASS); PROT C data
// takes the kernel path (the relay backend's mapping) with the 227
// rewritten inside TLS.
func TestAUTHTLSBothLegs(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(nil))
	want := plant(t, h.server.FS(), "f.txt", 64<<10)
	c := h.dial(t)
	feat := c.featLines()
	for _, f := range []string{"AUTH TLS", "PBSZ", "PROT"} {
		if !strings.Contains(feat, "\n "+f+"\n") {
			t.Fatalf("FEAT does not offer %q:\n%s", f, feat)
		}
	}
	c.startTLS(p)
	c.protect("C")
	c.login()
	if got := c.download("f.txt"); got != string(want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}
	if n := len(h.backend.admitted()); n != 1 {
		t.Fatalf("%d data connections took the mapping, want 1", n)
	}
	c.expectAfter("QUIT", "221")
	sent := h.tap.sent()
	if !strings.HasPrefix(sent, "FEAT\r\nAUTH TLS\r\n\x16\x03") {
		t.Fatalf("the server did not get AUTH TLS then a ClientHello: %q", sent[:min(len(sent), 40)])
	}
	for _, clear := range []string{"USER", "PASS", "PASV", "RETR", "PBSZ", "PROT"} {
		if strings.Contains(sent, clear) {
			t.Fatalf("%s reached the server in clear", clear)
		}
	}
	st := h.proxy.Stats()
	if st.TLSHandshakes["client"] != 1 || st.TLSHandshakes["server"] != 1 {
		t.Fatalf("TLS handshakes %v, want one per leg", st.TLSHandshakes)
	}
}

// featLines sends FEAT and returns its reply, lines joined by "\n".
func (c *conn) featLines() string {
	c.t.Helper()
	c.send("FEAT")
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading FEAT: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if strings.HasPrefix(line, "211 ") || (len(lines) == 1 && !strings.HasPrefix(line, "211-")) {
			return strings.Join(lines, "\n")
		}
	}
}

// TestTLSOffload: with --upstream-tls never, the client's leg is TLS and
// the server's stays clear: pasvgate answers PBSZ and PROT itself, and
// the server is never sent AUTH.
func TestTLSOffload(t *testing.T) {
	p := newPKI(t)
	o := p.options(func(st *proxy.Settings) { st.UpstreamTLS = proxy.UpstreamTLSNever })
	o.ftpdTLS = nil // a server that refuses AUTH TLS
	h := newHarness(t, o)
	want := plant(t, h.server.FS(), "f.txt", 64<<10)
	c := h.dial(t)
	c.startTLS(p)
	c.expectAfter("PBSZ 0", "200 PBSZ=0")
	c.expectAfter("PROT C", "200 Protection level set to Clear")
	c.login()
	if got := c.download("f.txt"); got != string(want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}
	sent := h.tap.sent()
	if strings.Contains(sent, "AUTH") || strings.Contains(sent, "PBSZ") || strings.Contains(sent, "PROT") {
		t.Fatalf("the server was sent TLS commands: %q", sent)
	}
	if !strings.Contains(sent, "USER anonymous\r\n") {
		t.Fatalf("the server did not get the login in clear: %q", sent)
	}
}

// TestTLSRequire: under --tls require a login before AUTH gets 530 and
// never reaches the server; after AUTH it works.
func TestTLSRequire(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(func(st *proxy.Settings) { st.TLS = proxy.TLSRequire }))
	c := h.dial(t)
	c.expectAfter("USER anonymous", "530")
	c.expectAfter("PASS secret", "530")
	c.expectAfter("PBSZ 0", "503")
	if sent := h.tap.sent(); strings.Contains(sent, "USER") || strings.Contains(sent, "secret") {
		t.Fatalf("a login before AUTH reached the server: %q", sent)
	}
	c.startTLS(p)
	c.login()
	if st := h.proxy.Stats(); st.Refused["tls-required"] != 2 {
		t.Fatalf("refusals %v, want 2 tls-required", st.Refused)
	}
}

// TestTLSRefusals: the FTPS commands pasvgate answers itself.
func TestTLSRefusals(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(nil))
	c := h.dial(t)
	c.expectAfter("AUTH KERBEROS_V4", "504")
	c.expectAfter("PROT C", "503")
	c.expectAfter("CCC", "503")
	c.startTLS(p)
	c.expectAfter("AUTH TLS", "503")
	c.expectAfter("PROT C", "200") // without PBSZ, as servers take it (Python's prot_c)
	c.expectAfter("PBSZ x", "501")
	c.expectAfter("PBSZ 0", "200")
	c.expectAfter("PROT S", "536")
	c.expectAfter("PROT E", "536")
	c.expectAfter("PROT Z", "504")
	c.expectAfter("CCC", "534")
	c.expectAfter("PROT C", "200")
	c.login()
	if sent := h.tap.sent(); strings.Contains(sent, "KERBEROS") || strings.Contains(sent, "CCC") {
		t.Fatalf("a refused command reached the server: %q", sent)
	}
}

// TestTLSHostileClients: a client that sends more after AUTH without
// waiting for the 234 (cleartext where TLS must come), garbage in place
// of a ClientHello, and a ClientHello trickled past the handshake timeout
// each lose their session, with a count, and the next session works.
func TestTLSHostileClients(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(func(st *proxy.Settings) { st.HandshakeTimeout = 300 * time.Millisecond }))
	t.Run("cleartext after AUTH", func(t *testing.T) {
		c := h.dial(t)
		if _, err := io.WriteString(c.c, "AUTH TLS\r\nUSER anonymous\r\n"); err != nil {
			t.Fatal(err)
		}
		c.expect("421")
		c.expectClosed()
	})
	t.Run("garbage ClientHello", func(t *testing.T) {
		c := h.dial(t)
		c.expectAfter("AUTH TLS", "234")
		if _, err := io.WriteString(c.c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.expectClosed()
	})
	t.Run("slow ClientHello", func(t *testing.T) {
		c := h.dial(t)
		c.expectAfter("AUTH TLS", "234")
		start := time.Now()
		if _, err := c.c.Write([]byte{0x16, 0x03}); err != nil { // a record header, begun
			t.Fatal(err)
		}
		c.expectClosed()
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("a trickled ClientHello held the session %v", d)
		}
	})
	// Counted just after the close the client saw: wait, bounded.
	for i := 0; ; i++ {
		st := h.proxy.Stats()
		if st.TLSFailures["cleartext-after-auth"] == 1 && st.TLSFailures["client-handshake"] == 2 {
			break
		}
		if i == 100 {
			t.Fatalf("TLS failures %v, want 1 cleartext-after-auth and 2 client-handshake", st.TLSFailures)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(h.tap.sent(), "USER") {
		t.Fatal("the command after AUTH reached the server")
	}
	c := h.dial(t)
	c.startTLS(p)
	c.login()
}

// expectClosed reads until the connection ends, which must be soon.
func (c *conn) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c.r); err != nil && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("the session was not closed: %v", err)
	}
}

// TestUpstreamCertificateRefused: a server whose certificate does not
// verify against --upstream-ca gets no login: the client is told 421
// after its AUTH, and the failure is counted as upstream-verify. With
// UpstreamInsecure the same server is accepted.
func TestUpstreamCertificateRefused(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	h := newHarness(t, p.options(func(st *proxy.Settings) { st.UpstreamRoots = other.roots }))
	c := h.dial(t)
	c.expectAfter("AUTH TLS", "421")
	if st := h.proxy.Stats(); st.TLSFailures["upstream-verify"] != 1 {
		t.Fatalf("TLS failures %v, want one upstream-verify", st.TLSFailures)
	}
	h = newHarness(t, p.options(func(st *proxy.Settings) {
		st.UpstreamRoots = other.roots
		st.UpstreamInsecure = true
	}))
	c = h.dial(t)
	c.startTLS(p)
	c.login()
}

// TestImplicitTLS: a client of a ServeTLS listener is TLS from its first
// byte, sees the gateway's certificate before the greeting, and (upstream
// auto) the server's leg is upgraded before the greeting is relayed.
func TestImplicitTLS(t *testing.T) {
	p := newPKI(t)
	o := p.options(nil)
	o.implicit = true
	h := newHarness(t, o)
	want := plant(t, h.server.FS(), "f.txt", 64<<10)
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", h.addr,
		&tls.Config{RootCAs: p.roots, ServerName: clientDial})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if cn := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != gatewayCN {
		t.Fatalf("shown %q", cn)
	}
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &conn{t: t, c: tc, r: bufio.NewReader(tc)}
	c.expect("220")
	c.login()
	if got := c.download("f.txt"); got != string(want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}
	h.expectServerTLSFirst(t)
}

// TestUpstreamTLSAlways: a clear client gets a TLS server's leg: the
// login crosses the server's link encrypted.
func TestUpstreamTLSAlways(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(func(st *proxy.Settings) { st.UpstreamTLS = proxy.UpstreamTLSAlways }))
	want := plant(t, h.server.FS(), "f.txt", 64<<10)
	c := h.dial(t)
	c.login()
	if got := c.download("f.txt"); got != string(want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}
	h.expectServerTLSFirst(t)
}

// TestCertificateReload: Reload with a new certificate changes what the
// next handshake shows (it verifies only against the new CA), and a
// session upgraded before goes on.
func TestCertificateReload(t *testing.T) {
	p, next := newPKI(t), newPKI(t)
	h := newHarness(t, p.options(nil))
	old := h.dial(t)
	old.startTLS(p)
	st := h.proxy.Settings
	st.Certificate = &next.gateway
	h.proxy.Reload(st)
	c := h.dial(t)
	c.startTLS(next)
	c.login()
	old.login()
}

// protect sends PBSZ 0 and PROT level, expecting 200 to each.
func (c *conn) protect(level string) {
	c.t.Helper()
	c.expectAfter("PBSZ 0", "200")
	c.expectAfter("PROT "+level, "200")
}

// expectServerTLSFirst checks that the server's leg became TLS before the
// client's first command reached it: the server was sent AUTH TLS and a
// ClientHello first, and never a login in clear.
func (h *harness) expectServerTLSFirst(t *testing.T) {
	t.Helper()
	if sent := h.tap.sent(); !strings.HasPrefix(sent, "AUTH TLS\r\n\x16\x03") || strings.Contains(sent, "USER") {
		t.Fatalf("the server's leg was not TLS before the login: %q", sent[:min(len(sent), 40)])
	}
}

// TestTLSQuit: after QUIT over TLS the client gets the server's 221 and
// then a proper end of the TLS channel, a close_notify (the test speaks
// TLS 1.2, whose alerts show as such on the wire): no 421 of pasvgate's
// after the goodbye, and no truncation, which TLS clients report (lftp:
// "non-properly terminated").
func TestTLSQuit(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(nil))
	for i := 0; i < 20; i++ { // the 421 came, or not, with the timing
		c := h.dial(t)
		c.expectAfter("AUTH TLS", "234")
		rec := &recorder{Conn: c.c}
		tc := tls.Client(rec, &tls.Config{RootCAs: p.roots, ServerName: clientDial, MaxVersion: tls.VersionTLS12})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		rec.mark()
		if _, err := io.WriteString(tc, "QUIT\r\n"); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(tc)
		if err != nil {
			t.Fatalf("after QUIT: %v, after %q", err, rest)
		}
		if !strings.HasPrefix(string(rest), "221 ") || strings.Count(string(rest), "\n") != 1 {
			t.Fatalf("after QUIT the client got %q, want the 221 alone", rest)
		}
		if last := rec.lastRecordType(t); last != 21 {
			t.Fatalf("the channel ended with a record of type %d, want an alert (21): the close_notify", last)
		}
	}
}

// recorder keeps what is read through it after mark.
type recorder struct {
	net.Conn
	on  bool
	buf []byte
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if r.on {
		r.buf = append(r.buf, b[:n]...)
	}
	return n, err
}

func (r *recorder) mark() { r.on = true }

// lastRecordType walks the TLS records read since mark and returns the
// content type of the last.
func (r *recorder) lastRecordType(t *testing.T) byte {
	t.Helper()
	var typ byte
	for b := r.buf; len(b) > 0; {
		if len(b) < 5 {
			t.Fatalf("a torn TLS record header: %x", b)
		}
		n := 5 + (int(b[3])<<8 | int(b[4]))
		if len(b) < n {
			t.Fatalf("a torn TLS record: %d of %d bytes", len(b), n)
		}
		typ, b = b[0], b[n:]
	}
	return typ
}
