package lifecycle

import (
	"bufio"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// writeCertPair writes a certificate for 203.0.113.1 named cn, and its
// key, to cert and key.
func writeCertPair(t *testing.T, cert, key, cn string) {
	t.Helper()
	ca, err := probetest.NewCA("pasvgate test CA")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue(cn, []string{"203.0.113.1"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := probetest.WriteKeyPair(c, cert, key); err != nil {
		t.Fatal(err)
	}
}

// implicitSession opens an implicit-TLS session to 203.0.113.1:990 and
// returns it with the name on the certificate it was shown.
func implicitSession(t *testing.T, ns *netns.NS) (*session, string) {
	t.Helper()
	raw, err := ns.Dial(context.Background(), "tcp", "", "203.0.113.1:990")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(15 * time.Second))
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) // the test reads the name itself
	if err := tc.Handshake(); err != nil {
		t.Fatalf("implicit TLS handshake: %v", err)
	}
	return &session{t: t, c: tc, r: bufio.NewReader(tc)}, tc.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestTLSCertificateReload runs the binary with an implicit-TLS listener
// and the server's leg clear (--upstream-tls never, the test server has
// no TLS). A SIGHUP after the certificate files were replaced shows the
// new certificate to the next client, while a session upgraded before
// goes on; a SIGHUP with a key that does not match keeps the running
// certificate and says so.
func TestTLSCertificateReload(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	ns := gateway(t)
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCertPair(t, cert, key, "first")
	conf := filepath.Join(dir, "pasvgate.yaml")
	if err := os.WriteFile(conf, []byte("listen: [203.0.113.1:21]\nlisten-tls: [203.0.113.1:990]\nupstream: 192.0.2.10:21\n"+
		"data-ports: 41000-41099\niptables-path: iptables-nft\nupstream-tls: never\n"+
		"tls-cert: "+cert+"\ntls-key: "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, ns, "pasvgate started", pasvgate, "run", "--config", conf)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pasvgate output:\n%s", p.output())
		}
	})
	s1, name := implicitSession(t, ns)
	if name != "first" {
		t.Fatalf("shown %q, want the first certificate", name)
	}
	s1.login()

	writeCertPair(t, cert, key, "second")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitOutput("reloaded") {
		t.Fatal("no reload logged")
	}
	s2, name := implicitSession(t, ns)
	if name != "second" {
		t.Fatalf("after the reload shown %q, want the second certificate", name)
	}
	s2.login()
	if r := s1.cmd("NOOP"); !strings.HasPrefix(r, "200") {
		t.Fatalf("the session upgraded before the reload: %q", r)
	}

	// A key that does not match the certificate: refused, the running
	// certificate stays.
	other := filepath.Join(dir, "other.pem")
	writeCertPair(t, other, key, "third")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitOutput("reload refused") {
		t.Fatal("a reload with a mismatched key was not refused")
	}
	if _, name := implicitSession(t, ns); name != "second" {
		t.Fatalf("after a refused reload shown %q, want the second certificate still", name)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
}
