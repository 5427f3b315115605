package proxy_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/spf13/afero"
)

// protectedData opens a PROT P data connection to the 227's port and makes
// the client's TLS handshake over it with cfg (the control connection's
// configuration, so that it may resume), after the command cmd has had
// its 150. It returns the TLS connection, or the handshake's error.
func (c *conn) protectedData(cmd string, cfg *tls.Config, local string) (*tls.Conn, error) {
	c.t.Helper()
	ap := parse227(c.t, c.expectAfter("PASV", "227"))
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	raw, err := d.Dial("tcp", ap.String())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c.expectAfter(cmd, "150")
	tc := tls.Client(raw, cfg)
	return tc, tc.Handshake()
}

// TestProtectedTransfers: with PROT P, a download and an upload go through
// pasvgate's relay with TLS on both sides of the data connection: the
// bytes arrive whole, the client's data session resumes its control
// session, nothing is installed in the kernel, and the transfers are
// counted on the relay path.
func TestProtectedTransfers(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(nil))
	want := plant(t, h.server.FS(), "down.bin", 3<<20)
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	c.login()

	dc, err := c.protectedData("RETR down.bin", c.tls, "")
	if err != nil {
		t.Fatalf("data handshake: %v", err)
	}
	if !dc.ConnectionState().DidResume {
		t.Error("the data connection did not resume the control connection's TLS session")
	}
	got, err := io.ReadAll(dc)
	if err != nil {
		t.Fatalf("reading the download: %v", err)
	}
	c.expect("226")
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes, not the file's %d", len(got), len(want))
	}

	up := bytes.Repeat([]byte("upload tail must arrive whole "), 1<<15)
	dc, err = c.protectedData("STOR up.bin", c.tls, "")
	if err != nil {
		t.Fatalf("data handshake: %v", err)
	}
	if _, err := dc.Write(up); err != nil {
		t.Fatal(err)
	}
	if err := dc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, dc) // until the relay's close_notify
	c.expect("226")
	stored, err := afero.ReadFile(h.server.FS(), "/up.bin")
	if err != nil || !bytes.Equal(stored, up) {
		t.Fatalf("stored %d bytes (%v), want the %d uploaded", len(stored), err, len(up))
	}
	c.expectAfter("QUIT", "221")

	if n := len(h.backend.admitted()); n != 0 {
		t.Fatalf("%d data connections took a kernel mapping, want none", n)
	}
	st := h.proxy.Stats()
	if st.Transfers["relay"] != 2 || st.Transfers["kernel"] != 0 {
		t.Fatalf("transfers by path %v, want 2 relayed", st.Transfers)
	}
	if st.BytesRelayed < uint64(len(want)+len(up)) {
		t.Fatalf("relayed %d bytes, want at least %d", st.BytesRelayed, len(want)+len(up))
	}
}

// TestProtectedDataHostile: the relay's port admits only the control
// client's address (a connection from another is closed, and the real one
// still works); a data handshake that does not resume, or that presents
// another session's ticket, gets a full handshake, which RequireReuse
// refuses; and garbage in place of the ClientHello fails the transfer,
// not the session.
func TestProtectedDataHostile(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(func(st *proxy.Settings) { st.RequireReuse = true }))
	plant(t, h.server.FS(), "f.bin", 1000)
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	c.login()

	t.Run("another address", func(t *testing.T) {
		ap := parse227(t, c.expectAfter("PASV", "227"))
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
		intruder, err := d.Dial("tcp", ap.String())
		if err != nil {
			t.Fatal(err)
		}
		defer intruder.Close()
		_ = intruder.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := intruder.Read(make([]byte, 1)); err == nil || n > 0 {
			t.Fatalf("the intruder's connection was kept (read %d, %v)", n, err)
		}
		real, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer real.Close()
		_ = real.SetDeadline(time.Now().Add(10 * time.Second))
		c.expectAfter("RETR f.bin", "150")
		tc := tls.Client(real, c.tls)
		if b, err := io.ReadAll(tc); err != nil || len(b) != 1000 {
			t.Fatalf("the client's own connection got %d bytes, %v", len(b), err)
		}
		c.expect("226")
		if h.proxy.Stats().Refused["relay-foreign-source"] != 1 {
			t.Fatalf("refusals %v, want one relay-foreign-source", h.proxy.Stats().Refused)
		}
	})
	t.Run("no resumption", func(t *testing.T) {
		fresh := &tls.Config{RootCAs: p.roots, ServerName: clientDial}
		c.expectNoData(c.protectedData("RETR f.bin", fresh, ""))
	})
	t.Run("another session's ticket", func(t *testing.T) {
		other := h.dial(t)
		other.startTLS(p) // its ticket lands in other.tls's cache
		other.expectAfter("NOOP", "200")
		c.expectNoData(c.protectedData("RETR f.bin", other.tls, ""))
	})
	t.Run("garbage ClientHello", func(t *testing.T) {
		ap := parse227(t, c.expectAfter("PASV", "227"))
		raw, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		c.expectAfter("RETR f.bin", "150")
		_, _ = io.WriteString(raw, "GET / HTTP/1.0\r\n\r\n")
		c.reply() // the server's: it may have written the file into a socket buffer before the relay closed
		_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, _ := io.ReadAll(raw); len(b) >= 100 { // a TLS alert at most, never the file
			t.Fatalf("garbage in place of a ClientHello got %d bytes back", len(b))
		}
	})
	// The session is intact.
	dc, err := c.protectedData("RETR f.bin", c.tls, "")
	if err != nil {
		t.Fatalf("after the hostile cases: %v", err)
	}
	if b, err := io.ReadAll(dc); err != nil || len(b) != 1000 {
		t.Fatalf("after the hostile cases: %d bytes, %v", len(b), err)
	}
	c.expect("226")
	if f := h.proxy.Stats().TLSFailures; f["data-no-reuse"] != 2 || f["data-client-handshake"] != 1 {
		t.Fatalf("TLS failures %v, want 2 data-no-reuse and 1 data-client-handshake", f)
	}
}

// expectNoData expects a protected data connection that was refused: its
// handshake fails, or (TLS 1.3, where the client finishes first) its
// first read does, with no byte of the file. The transfer's final reply
// is read, whatever it is: a server that wrote a small file into its
// socket buffer before the relay closed says 226, one that saw the close
// 4xx or 5xx.
func (c *conn) expectNoData(dc *tls.Conn, err error) {
	c.t.Helper()
	if err == nil {
		b, rerr := io.ReadAll(dc)
		if rerr == nil || len(b) > 0 {
			c.t.Fatalf("a data connection that does not resume this session got %d bytes (%v)", len(b), rerr)
		}
	}
	if r := c.reply(); r < "200" || r[0] > '5' {
		c.t.Fatalf("final reply %q", r)
	}
}

// TestProtectedActive: PORT with PROT P. The server connects to pasvgate's
// relay port (the PORT it was sent names the gateway), pasvgate dials the
// client, and the client is still the TLS client of the data connection
// (RFC 4217), resuming its control session. The server is the scripted
// active server, which dials from its own address as a server on its own
// host does, with its leg clear (--upstream-tls never); test/interop runs
// active PROT P with TLS on both legs against vsftpd.
func TestProtectedActive(t *testing.T) {
	p := newPKI(t)
	want := bytes.Repeat([]byte("active and protected "), 50000)
	as := newActiveServer(t, want)
	o := p.options(func(st *proxy.Settings) { st.UpstreamTLS = proxy.UpstreamTLSNever })
	o.upstream = as.ln.Addr().String()
	h := newHarness(t, o)
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	c.login()
	ln, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c.expectAfter("PORT "+portArg(t, ln.Addr()), "200")
	c.expectAfter("RETR f.bin", "150")
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if from := raw.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != publicAddr {
		t.Fatalf("the data connection came from %s, want the gateway's public address %s", from, publicAddr)
	}
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(raw, c.tls)
	got, err := io.ReadAll(tc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes (%v), want the file's %d", len(got), err, len(want))
	}
	if !tc.ConnectionState().DidResume {
		t.Error("the active data connection did not resume the control session")
	}
	c.expect("226")
	as.mu.Lock()
	ports := as.ports
	as.mu.Unlock()
	// On loopback the gateway's address towards the server is the
	// client's too: the port tells them apart.
	if len(ports) != 1 || ports[0] == ln.Addr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("the server was told %v, want the relay's port, not the client's %s", ports, ln.Addr())
	}
	if st := h.proxy.Stats(); st.Transfers["relay"] != 1 {
		t.Fatalf("transfers %v, want one relayed", st.Transfers)
	}
}

// portArg is a PORT argument for a.
func portArg(t *testing.T, a net.Addr) string {
	t.Helper()
	ap := a.(*net.TCPAddr).AddrPort()
	ip := ap.Addr().As4()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", ip[0], ip[1], ip[2], ip[3], ap.Port()>>8, ap.Port()&0xff)
}

// TestProtectedUnclaimed: a client that connects to its relay port, makes
// the handshake and never sends a transfer command loses the relay when
// the port's connect timeout releases it: a relay lives no longer than the
// port that counts against its client.
func TestProtectedUnclaimed(t *testing.T) {
	p := newPKI(t)
	o := p.options(nil)
	o.connectTimeout = 300 * time.Millisecond
	h := newHarness(t, o)
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	c.login()
	ap := parse227(t, c.expectAfter("PASV", "227"))
	raw, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(raw, c.tls)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("data handshake: %v", err)
	}
	start := time.Now()
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the relay sent data for a transfer never asked for")
	} else if strings.Contains(err.Error(), "timeout") {
		t.Fatalf("the relay outlived its port's connect timeout: %v", err)
	}
	t.Logf("relay closed %v after the handshake", time.Since(start).Round(time.Millisecond))
	c.expectAfter("NOOP", "200")
}

// TestRelayPortTaken: a relay port that another socket holds (the data
// range is usually inside the kernel's ephemeral ports) is passed over
// for another; when every port is held, PASV gets 425, counted as
// relay-listen, and no port stays drawn.
func TestRelayPortTaken(t *testing.T) {
	p := newPKI(t)
	o := p.options(nil)
	o.ports = nat.PortRange{Low: 20100, High: 20103}
	h := newHarness(t, o)
	plant(t, h.server.FS(), "f.bin", 1000)
	for port := 20100; port <= 20102; port++ { // held by other sockets
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.9:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
	}
	c := h.dial(t)
	c.startTLS(p)
	c.protect("P")
	c.login()
	dc, err := c.protectedData("RETR f.bin", c.tls, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(dc); err != nil || len(b) != 1000 {
		t.Fatalf("got %d bytes, %v", len(b), err)
	}
	c.expect("226")
	ln, err := net.Listen("tcp", "127.0.0.9:20103")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c.expectAfter("PASV", "425")
	if st := h.proxy.Stats(); st.Refused["relay-listen"] != 1 {
		t.Fatalf("refusals %v, want one relay-listen", st.Refused)
	}
	if st := h.table.Stats(); st.PortsBusy != 0 {
		t.Fatalf("%d ports still drawn after the refusal", st.PortsBusy)
	}
}

// BenchmarkProtectedTransfer is one small PROT P download through
// pasvgate's relay per op, in one session, against the test server with
// TLS: the relay's setup per transfer (a port, a listener, a dial, two
// resumed handshakes) dominates it.
func BenchmarkProtectedTransfer(b *testing.B) {
	p := newPKI(b)
	h := newHarness(b, p.options(nil))
	want := plant(b, h.server.FS(), "f.bin", 1024)
	c := h.dial(b)
	c.startTLS(p)
	c.protect("P")
	c.login()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		dc, err := c.protectedData("RETR f.bin", c.tls, "")
		if err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(dc)
		if err != nil || len(got) != len(want) {
			b.Fatalf("got %d bytes, %v", len(got), err)
		}
		dc.Close()
		c.expect("226")
	}
}
