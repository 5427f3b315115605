package probe

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pgprobe "github.com/pasvgate/pasvgate/proxy/probe"
	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
	"github.com/pasvgate/pasvgate/test/lab"
)

// tlsNSPrefix names the namespaces of the FTPS tests' labs; TestMain
// sweeps those a killed run left behind.
const tlsNSPrefix = "pgp-"

// serverTLSName is the DNS name in the test server's certificate, besides
// its address.
const serverTLSName = "ftp.pglab.test"

// gwTLSName is the DNS name in the gateway's certificate, besides its
// public address.
const gwTLSName = "gw.pglab.test"

// tlsFiles are a test CA and the certificates it issued, as files: the
// server's (cert, key) and the gateway's (gwCert, gwKey).
type tlsFiles struct {
	ca, cert, key, gwCert, gwKey string
}

// newTLSFiles makes a CA, a certificate for the server (lab.ServerAddr and
// serverTLSName) and one for the gateway (lab.GWPublicAddr and
// gwTLSName), each valid for 90 days, and writes them into dir.
func newTLSFiles(t *testing.T, dir string) tlsFiles {
	t.Helper()
	ca, err := probetest.NewCA("pasvgate probe test CA")
	if err != nil {
		t.Fatal(err)
	}
	f := tlsFiles{ca: filepath.Join(dir, "ca.pem"),
		cert: filepath.Join(dir, "server.pem"), key: filepath.Join(dir, "server.key"),
		gwCert: filepath.Join(dir, "gw.pem"), gwKey: filepath.Join(dir, "gw.key")}
	if err := os.WriteFile(f.ca, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		names             []string
		certFile, keyFile string
	}{
		{[]string{serverTLSName, lab.ServerAddr}, f.cert, f.key},
		{[]string{gwTLSName, lab.GWPublicAddr}, f.gwCert, f.gwKey},
	} {
		cert, err := ca.Issue(c.names[0], c.names, now.Add(-time.Hour), now.Add(90*24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// startVsftpdTLS runs vsftpd on lab.ServerAddr:21 with FTPS on and
// otherwise the settings test/lab gives it (anonymous login into a
// read-only root, passive ports 30000-30099, the same-address checks
// on). reuse, if not "", sets require_ssl_reuse; "" leaves vsftpd's
// default (YES). allow_anon_ssl=YES lets the anonymous login use TLS,
// unless extra, lines added at the end, says otherwise.
func startVsftpdTLS(t *testing.T, l *lab.Lab, files tlsFiles, name, reuse string, extra ...string) *lab.Proc {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/vsftpd"); err != nil {
		t.Skipf("vsftpd: %v (run test/install-deps.sh)", err)
	}
	if _, err := user.Lookup("ftp"); err != nil {
		t.Skipf("vsftpd: account ftp: %v (run test/install-deps.sh)", err)
	}
	dir := filepath.Join(l.Dir, name)
	root, empty := filepath.Join(dir, "root"), filepath.Join(dir, "empty")
	for _, d := range []string{root, empty} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := []string{
		"background=NO",
		"listen=YES",
		"listen_ipv6=NO",
		"listen_address=" + lab.ServerAddr,
		"listen_port=21",
		"anonymous_enable=YES",
		"local_enable=NO",
		"anon_root=" + root,
		"ftp_username=ftp",
		"nopriv_user=nobody",
		"secure_chroot_dir=" + empty,
		"pasv_min_port=30000",
		"pasv_max_port=30099",
		"xferlog_enable=NO",
		"ssl_enable=YES",
		"allow_anon_ssl=YES",
		"rsa_cert_file=" + files.cert,
		"rsa_private_key_file=" + files.key,
	}
	if reuse != "" {
		conf = append(conf, "require_ssl_reuse="+reuse)
	}
	conf = append(conf, extra...)
	path := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := l.Start(l.Server, "/usr/sbin/vsftpd", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFTP(t.Context(), p, l.Server, lab.ServerAddr+":21"); err != nil {
		p.Stop()
		t.Fatalf("vsftpd with FTPS did not come up: %v\n%s", err, p.Output())
	}
	return p
}

// TestVsftpdTLS probes vsftpd with ssl_enable=YES from the gateway: with
// its default require_ssl_reuse=YES, and with require_ssl_reuse=NO. Both
// take PROT P data connections that resume the control connection's TLS
// session; only the first refuses one that does not.
func TestVsftpdTLS(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{NSPrefix: tlsNSPrefix})
	files := newTLSFiles(t, l.Dir)
	for i, tc := range []struct {
		reuse string // require_ssl_reuse, "" for vsftpd's default
		msg   []string
	}{
		{"", []string{"the server requires session reuse: a second PROT P data connection, with a new TLS session, was refused (522 SSL connection failed: session reuse required",
			"where the one that resumed was served"}},
		{"NO", []string{"the server does not require session reuse: a second PROT P data connection, with a new TLS session, was served too (226)"}},
	} {
		name := "require_ssl_reuse=" + tc.reuse
		if tc.reuse == "" {
			name = "require_ssl_reuse default"
		}
		t.Run(name, func(t *testing.T) {
			p := startVsftpdTLS(t, l, files, fmt.Sprintf("vsftpd-tls-%d", i), tc.reuse)
			defer p.Stop()
			url := "ftp://" + lab.ServerAddr
			rep, _ := probeBoth(t, l, l.GW, url, 0, "--ca", files.ca)
			if rep.AuthTLS != pgprobe.AuthOffered || rep.TLS == nil {
				t.Fatalf("auth_tls %q, tls %+v", rep.AuthTLS, rep.TLS)
			}
			wantFinding(t, rep, "auth-tls", pgprobe.StatusOK, []string{"the server offers AUTH TLS"}, nil)
			wantFinding(t, rep, "tls-cert", pgprobe.StatusOK, []string{"the certificate for " + lab.ServerAddr + " verifies against the CA file " + files.ca,
				"subject CN=" + serverTLSName, "names " + serverTLSName + ", " + lab.ServerAddr, "89 days left"}, nil)
			// Which of TLS 1.2 and 1.3 vsftpd takes depends on its
			// ssl_ciphers and the OpenSSL it runs with; 1.0 and 1.1 it
			// refuses with OpenSSL 3.
			wantFinding(t, rep, "tls-versions", pgprobe.StatusOK, []string{"accepts TLS 1.3", "TLS 1.1, TLS 1.0"}, nil)
			wantFinding(t, rep, "prot-p-data", pgprobe.StatusOK, []string{"PROT P accepted; PASV data connection to " + lab.ServerAddr,
				"the listing came through (226), and its TLS session resumed the control connection's"}, nil)
			wantFinding(t, rep, "tls-session-reuse", pgprobe.StatusOK, tc.msg, nil)
			if d := rep.TLS.Data; len(d) != 2 || !d[0].Resumed || !d[0].Listed || d[0].ListBytes == 0 || d[1].Resumed || d[1].Listed != (tc.reuse == "NO") {
				t.Errorf("data connections %+v", d)
			}
			// Plain FTP is unchanged by FTPS being on.
			wantFinding(t, rep, "pasv-data", pgprobe.StatusOK, nil, nil)
			if tc.reuse != "" {
				return
			}
			// A client that checks against the system roots, or for
			// another name, does not accept the certificate; the
			// other FTPS checks still run, and the exit status is
			// about passive FTP.
			rep, _ = probeBoth(t, l, l.GW, url, 0)
			wantFinding(t, rep, "tls-cert", pgprobe.StatusFail,
				[]string{`does not verify against the system roots: issued by "CN=pasvgate probe test CA", which is not in the system roots`}, []string{"--ca FILE"})
			wantFinding(t, rep, "prot-p-data", pgprobe.StatusOK, []string{"resumed"}, nil)
			rep, _ = probeBoth(t, l, l.GW, url, 0, "--ca", files.ca, "--server-name", "ftp.other.test")
			wantFinding(t, rep, "tls-cert", pgprobe.StatusFail,
				[]string{"not valid for ftp.other.test: it names " + serverTLSName + ", " + lab.ServerAddr}, []string{"--server-name NAME"})
		})
	}
}

// TestVsftpdTLSAnonymous probes vsftpd with FTPS whose anonymous logins
// may not use it, vsftpd's default allow_anon_ssl=NO: plain FTP works,
// the login over TLS is refused, and the fix names the setting.
func TestVsftpdTLSAnonymous(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{NSPrefix: tlsNSPrefix})
	files := newTLSFiles(t, l.Dir)
	startVsftpdTLS(t, l, files, "vsftpd-tls", "", "allow_anon_ssl=NO")
	rep, _ := probeBoth(t, l, l.GW, "ftp://"+lab.ServerAddr, 0, "--ca", files.ca)
	wantFinding(t, rep, "tls-cert", pgprobe.StatusOK, []string{"verifies"}, nil)
	wantFinding(t, rep, "prot-p-data", pgprobe.StatusFail, []string{"could not log in over TLS: login as anonymous refused: 530"}, []string{"allow_anon_ssl=YES"})
	wantFinding(t, rep, "tls-session-reuse", pgprobe.StatusSkip, []string{"not checked"}, nil)
}

// TestBehindPasvgateTLS probes vsftpd with FTPS through pasvgate with
// --tls allow, from the client's network: the probe sees pasvgate's
// certificate and TLS, and pasvgate's relay of protected data, which
// requires session reuse only with --tls-require-reuse.
func TestBehindPasvgateTLS(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{NSPrefix: tlsNSPrefix})
	files := newTLSFiles(t, l.Dir)
	startVsftpdTLS(t, l, files, "vsftpd-tls", "")
	for _, tc := range []struct {
		flags []string
		reuse string
	}{
		{nil, "the server does not require session reuse: a second PROT P data connection, with a new TLS session, was served too (226)"},
		{[]string{"--tls-require-reuse"}, "the server requires session reuse: a second PROT P data connection, with a new TLS session, was refused ("},
	} {
		t.Run(strings.Join(append([]string{"pasvgate"}, tc.flags...), " "), func(t *testing.T) {
			pg, err := l.Start(l.GW, pasvgate(t), append([]string{"run",
				"--listen", lab.GWPublicAddr + ":21",
				"--upstream", lab.ServerAddr + ":21",
				"--data-ports", "40000-40999",
				"--backend", "iptables",
				"--iptables-path", l.IPTables,
				"--tls", "allow",
				"--tls-cert", files.gwCert,
				"--tls-key", files.gwKey,
				"--upstream-ca", files.ca}, tc.flags...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer pg.Stop()
			if err := l.WaitFTP(t.Context(), pg, l.Client, lab.GWPublicAddr+":21"); err != nil {
				t.Fatalf("pasvgate did not come up: %v\n%s", err, pg.Output())
			}
			rep, _ := probeBoth(t, l, l.Client, "ftp://"+lab.GWPublicAddr, 0, "--ca", files.ca)
			wantFinding(t, rep, "auth-tls", pgprobe.StatusOK, []string{"the server offers AUTH TLS"}, nil)
			wantFinding(t, rep, "tls-cert", pgprobe.StatusOK, []string{"the certificate for " + lab.GWPublicAddr + " verifies", "subject CN=" + gwTLSName}, nil)
			wantFinding(t, rep, "tls-versions", pgprobe.StatusOK, []string{"accepts TLS 1.3, TLS 1.2; refuses TLS 1.1, TLS 1.0"}, nil)
			wantFinding(t, rep, "prot-p-data", pgprobe.StatusOK, []string{"PASV data connection to " + lab.GWPublicAddr,
				"the listing came through (226), and its TLS session resumed the control connection's"}, nil)
			wantFinding(t, rep, "tls-session-reuse", pgprobe.StatusOK, []string{tc.reuse}, nil)
			wantFinding(t, rep, "pasv-data", pgprobe.StatusOK, []string{lab.GWPublicAddr}, nil)
		})
	}
}
