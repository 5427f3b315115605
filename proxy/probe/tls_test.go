package probe

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
)

// testPKI is a CA, written where --ca can read it, and a server
// configuration with a certificate it issued.
type testPKI struct {
	ca     *probetest.CA
	caFile string
}

func newPKI(t *testing.T) testPKI {
	t.Helper()
	ca, err := probetest.NewCA("probe test CA")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return testPKI{ca, file}
}

// serverTLS is a server configuration for versions minV to maxV with a
// certificate for names, valid from notBefore to notAfter.
func (k testPKI) serverTLS(t *testing.T, names []string, notBefore, notAfter time.Time, minV, maxV uint16) *tls.Config {
	t.Helper()
	cert, err := k.ca.Issue("ftp.probe.test", names, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: minV, MaxVersion: maxV}
}

// goodTLS is a server configuration as a well-kept server has it: TLS 1.2
// and 1.3, a certificate for the server's name and address, months left.
func (k testPKI) goodTLS(t *testing.T) *tls.Config {
	now := time.Now()
	return k.serverTLS(t, []string{"ftp.probe.test", serverIP}, now.Add(-time.Hour), now.Add(90*24*time.Hour), tls.VersionTLS12, tls.VersionTLS13)
}

func checks(rep Report) string {
	var s []string
	for _, f := range rep.Findings {
		s = append(s, f.Check)
	}
	return strings.Join(s, " ")
}

func TestRunTLS(t *testing.T) {
	k := newPKI(t)
	for _, tc := range []struct {
		name  string
		reuse bool
		msg   string
	}{
		{"require reuse", true, "the server requires session reuse: a second PROT P data connection, with a new TLS session, was refused (522 SSL connection failed: session reuse required.), where the one that resumed was served"},
		{"no reuse", false, "the server does not require session reuse: a second PROT P data connection, with a new TLS session, was served too (226)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, probetest.Script{Feat: []string{"AUTH TLS", "PBSZ", "PROT"}, TLS: k.goodTLS(t), RequireReuse: tc.reuse})
			rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
			if rep.Verdict != VerdictWorks {
				t.Errorf("verdict %s", rep.Verdict)
			}
			if got, want := checks(rep), "connect login auth-tls tls-cert tls-versions prot-p-data tls-session-reuse pasv pasv-address pasv-port pasv-data epsv epsv-port epsv-data"; got != want {
				t.Errorf("checks\n%s, want\n%s", got, want)
			}
			want(t, rep, CheckAuthTLS, StatusOK, "the server offers AUTH TLS (FEAT lists AUTH TLS)", "")
			want(t, rep, CheckTLSCert, StatusOK, "the certificate for 127.0.0.2 verifies against the CA file "+k.caFile+
				" (subject CN=ftp.probe.test, issuer CN=probe test CA, names ftp.probe.test, 127.0.0.2, valid until ", "")
			want(t, rep, CheckTLSCert, StatusOK, "89 days left", "")
			want(t, rep, CheckTLSVersions, StatusOK, "accepts TLS 1.3, TLS 1.2; refuses TLS 1.1, TLS 1.0", "")
			want(t, rep, CheckPROTPData, StatusOK, "logged in over TLS 1.3, PROT P accepted; PASV data connection to 127.0.0.2:", "")
			want(t, rep, CheckPROTPData, StatusOK, "the listing came through (226), and its TLS session resumed the control connection's", "")
			want(t, rep, CheckTLSReuse, StatusOK, tc.msg, "")
			if d := rep.TLS.Data; len(d) != 2 || !d[0].Resumed || d[1].Resumed || !d[0].OfferedResume || d[1].OfferedResume || d[0].ListBytes != len(probetest.Listing) {
				t.Errorf("data connections %+v", d)
			}
			if s.Count("PROT") != 1 || s.Count("LIST") != 4 {
				t.Errorf("%d PROT, %d LIST", s.Count("PROT"), s.Count("LIST"))
			}
		})
	}
}

// TestRunTLSNotOffered: the FTPS checks are there, skipped, with why.
func TestRunTLSNotOffered(t *testing.T) {
	s := start(t, probetest.Script{Feat: []string{"MDTM"}})
	rep := run(t, Options{Addr: s.Addr()})
	for _, c := range []string{CheckTLSCert, CheckTLSVersions, CheckPROTPData, CheckTLSReuse} {
		want(t, rep, c, StatusSkip, "not checked: the server does not offer AUTH TLS", "")
	}
	if rep.TLS != nil || s.Count("PBSZ") != 0 {
		t.Errorf("TLS report %+v after %d PBSZ", rep.TLS, s.Count("PBSZ"))
	}
	s = start(t, probetest.Script{AuthReply: "534 AUTH is not supported through this gateway: FTPS is not available."})
	rep = run(t, Options{Addr: s.Addr()})
	want(t, rep, CheckAuthTLS, StatusWarn, "pasvgate is in front of the server with FTPS off", "--tls allow")
	want(t, rep, CheckPROTPData, StatusSkip, "not checked: pasvgate in front of the server refuses AUTH TLS", "")
}

// TestRunTLSCertificate runs the probe against certificates a client
// would refuse, or soon.
func TestRunTLSCertificate(t *testing.T) {
	k := newPKI(t)
	now := time.Now()
	day := 24 * time.Hour
	names := []string{"ftp.probe.test", serverIP}
	for _, tc := range []struct {
		name   string
		conf   *tls.Config
		opt    Options
		status Status
		msg    string
		fix    string
	}{
		{"unknown authority", k.goodTLS(t), Options{}, StatusFail,
			`the certificate for 127.0.0.2 does not verify against the system roots: issued by "CN=probe test CA", which is not in the system roots`, "--ca FILE"},
		{"name mismatch", k.goodTLS(t), Options{CAFile: k.caFile, ServerName: "ftp.other.test"}, StatusFail,
			"the certificate for ftp.other.test does not verify against the CA file " + k.caFile + ": not valid for ftp.other.test: it names ftp.probe.test, 127.0.0.2", "--server-name NAME"},
		{"server name", k.goodTLS(t), Options{CAFile: k.caFile, ServerName: "ftp.probe.test"}, StatusOK,
			"the certificate for ftp.probe.test verifies", ""},
		{"expired", k.serverTLS(t, names, now.Add(-90*day), now.Add(-3*day-time.Hour), tls.VersionTLS12, tls.VersionTLS13), Options{CAFile: k.caFile}, StatusFail,
			"does not verify against the CA file " + k.caFile + ": expired on ", "renew"},
		{"not yet valid", k.serverTLS(t, names, now.Add(2*time.Hour), now.Add(90*day), tls.VersionTLS12, tls.VersionTLS13), Options{CAFile: k.caFile}, StatusFail,
			"not valid before ", "clocks"},
		{"expiring", k.serverTLS(t, names, now.Add(-80*day), now.Add(5*day+time.Hour), tls.VersionTLS12, tls.VersionTLS13), Options{CAFile: k.caFile}, StatusWarn,
			"verifies against the CA file " + k.caFile + ", but expires in 5 days", "renew"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: tc.conf})
			tc.opt.Addr = s.Addr()
			rep := run(t, tc.opt)
			want(t, rep, CheckTLSCert, tc.status, tc.msg, tc.fix)
			// A certificate that does not verify stops no other check.
			want(t, rep, CheckPROTPData, StatusOK, "the listing came through", "")
			want(t, rep, CheckTLSReuse, StatusOK, "does not require session reuse", "")
		})
	}
	t.Run("expired, 3 days ago", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.serverTLS(t, names, now.Add(-90*day), now.Add(-3*day-time.Hour), tls.VersionTLS12, tls.VersionTLS13)})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckTLSCert, StatusFail, ", 3 days ago (subject", "")
		// Go's client offers no session of an expired certificate.
		want(t, rep, CheckPROTPData, StatusOK, "did not resume the control connection's (the certificate has expired", "")
		if p := rep.TLS.Certificate.Problems; len(p) != 1 || p[0].Kind != CertExpired || rep.TLS.Certificate.DaysLeft != -4 {
			t.Errorf("problems %+v, days left %d", p, rep.TLS.Certificate.DaysLeft)
		}
	})
}

// TestCheckCert covers the problems checkCert finds at once, without a
// server.
func TestCheckCert(t *testing.T) {
	k := newPKI(t)
	other := newPKI(t)
	now := time.Now()
	cert, err := other.ca.Issue("x", nil, now.Add(-48*time.Hour), now.Add(-25*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(k.ca.Cert)
	ci := checkCert([]*x509.Certificate{cert.Leaf}, "ftp.probe.test", roots, "CA file ca.pem", now)
	var kinds []string
	for _, p := range ci.Problems {
		kinds = append(kinds, p.Kind)
	}
	if got := strings.Join(kinds, " "); got != "expired name-mismatch unknown-authority" {
		t.Errorf("problems %s: %+v", got, ci.Problems)
	}
	if !strings.Contains(ci.Problems[1].Detail, `no subject alternative name (clients ignore the common name "x")`) {
		t.Errorf("name mismatch: %s", ci.Problems[1].Detail)
	}
	if ci.DaysLeft != -2 || len(ci.Names) != 0 || ci.Issuer != "CN=probe test CA" {
		t.Errorf("%+v", ci)
	}
	if checkCert(nil, "x", nil, systemRoots, now) != nil {
		t.Error("no chain, but a certificate")
	}
}

func TestRunTLSVersions(t *testing.T) {
	k := newPKI(t)
	now := time.Now()
	names := []string{serverIP}
	for _, tc := range []struct {
		name       string
		minV, maxV uint16
		status     Status
		msg        string
	}{
		{"1.3 only", tls.VersionTLS13, tls.VersionTLS13, StatusOK, "accepts TLS 1.3; refuses TLS 1.2, TLS 1.1, TLS 1.0"},
		{"1.0 to 1.3", tls.VersionTLS10, tls.VersionTLS13, StatusWarn, "accepts TLS 1.3, TLS 1.2, TLS 1.1, TLS 1.0: TLS 1.1 and 1.0 are deprecated"},
		{"1.0 and 1.1", tls.VersionTLS10, tls.VersionTLS11, StatusFail, "accepts TLS 1.1, TLS 1.0; refuses TLS 1.3, TLS 1.2: current clients refuse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.serverTLS(t, names, now.Add(-time.Hour), now.Add(90*24*time.Hour), tc.minV, tc.maxV)})
			rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
			want(t, rep, CheckTLSVersions, tc.status, tc.msg, "")
			if v := rep.TLS.Versions; len(v) != 4 || v[0].Version != "TLS 1.3" || v[3].Version != "TLS 1.0" {
				t.Errorf("versions %+v", v)
			}
			for _, v := range rep.TLS.Versions {
				if !v.Accepted && !strings.Contains(v.Error, "TLS handshake failed: the server refused: tls: protocol version not supported") {
					t.Errorf("%s: %q", v.Version, v.Error)
				}
			}
		})
	}
}

// TestRunTLSData covers PROT P data connections that fail.
func TestRunTLSData(t *testing.T) {
	k := newPKI(t)
	t.Run("no tickets", func(t *testing.T) {
		conf := k.goodTLS(t)
		conf.SessionTicketsDisabled = true
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: conf, RequireReuse: true})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusFail, "its TLS session did not resume the control connection's (the server sent no session ticket, and Go's client resumes only with tickets, not session IDs), but the listing did not come through: 522 SSL connection failed: session reuse required.", "let it issue TLS session tickets")
		want(t, rep, CheckTLSReuse, StatusOK, "the server requires session reuse, it seems: the PROT P data connection above did not resume", "")
		if len(rep.TLS.Data) != 1 || rep.TLS.SessionTickets != 0 {
			t.Errorf("data %+v, tickets %d", rep.TLS.Data, rep.TLS.SessionTickets)
		}
	})
	t.Run("no tickets, no reuse needed", func(t *testing.T) {
		conf := k.goodTLS(t)
		conf.SessionTicketsDisabled = true
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: conf})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusOK, "the listing came through (226), and its TLS session did not resume", "")
		want(t, rep, CheckTLSReuse, StatusOK, "the server does not require session reuse: the PROT P data connection above did not resume", "")
	})
	t.Run("pasvgate", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), PROTReply: "536 PROT P is not supported through this gateway: use PROT C."})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusWarn, "PROT P refused by pasvgate (536 PROT P is not supported", "upgrade pasvgate")
		want(t, rep, CheckTLSReuse, StatusSkip, "not checked", "")
	})
	t.Run("server refuses", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), PROTReply: "534 PROT P denied."})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusFail, "the server refused PROT P: 534 PROT P denied.", "")
	})
	t.Run("PASV broken, EPSV used", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), Advertise: "127.0.0.9"})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusOK, "EPSV data connection to 127.0.0.2:", "")
	})
	t.Run("227 rewritten in clear only", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), AdvertiseTLS: "127.0.0.9"})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPASVData, StatusOK, "", "")
		want(t, rep, CheckPROTPData, StatusFail, "; the 227 inside TLS names 127.0.0.9, the plain one 127.0.0.2: something on the way (a NAT helper) rewrites plain 227 replies", "run pasvgate with --tls")
	})
	t.Run("data port unreachable", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), Advertise: "127.0.0.9", EPSVReply: "229 Entering Extended Passive Mode (|||1|)"})
		rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
		want(t, rep, CheckPROTPData, StatusFail, "PASV data connection to 127.0.0.9:", "")
		want(t, rep, CheckPROTPData, StatusFail, "failed: connection refused", "")
		want(t, rep, CheckTLSReuse, StatusSkip, "not checked", "")
	})
	t.Run("no handshake", func(t *testing.T) {
		// A server that offers AUTH TLS with no certificate to show.
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: &tls.Config{}})
		rep := run(t, Options{Addr: s.Addr()})
		want(t, rep, CheckTLSCert, StatusFail, "no TLS session: TLS handshake failed: the server refused: tls: ", "TLS settings")
		want(t, rep, CheckTLSVersions, StatusFail, "the server completes no TLS handshake", "")
		want(t, rep, CheckPROTPData, StatusSkip, "no TLS session", "")
		want(t, rep, CheckTLSReuse, StatusSkip, "", "")
	})
}

// TestRunTLSStuck: a server that lists AUTH TLS and then never answers
// the handshake costs one timeout, not one per TLS version.
func TestRunTLSStuck(t *testing.T) {
	s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, AuthStall: true})
	begin := time.Now()
	rep := run(t, Options{Addr: s.Addr(), Timeout: 300 * time.Millisecond})
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	want(t, rep, CheckTLSCert, StatusFail, "no TLS session: TLS handshake failed: timed out after 300ms", "")
	want(t, rep, CheckTLSVersions, StatusSkip, "not checked: no TLS handshake was answered", "")
	if s.Count("AUTH") != 1 {
		t.Errorf("%d AUTH", s.Count("AUTH"))
	}
}

// TestRunTLSNotTLS: a 234 followed by anything but TLS is no handshake
// that another version would change.
func TestRunTLSNotTLS(t *testing.T) {
	s := start(t, probetest.Script{AuthReply: "234 Go ahead."})
	rep := run(t, Options{Addr: s.Addr()})
	want(t, rep, CheckTLSCert, StatusFail, "no TLS session: TLS handshake failed: the server did not answer with TLS", "")
	want(t, rep, CheckTLSVersions, StatusSkip, "not checked", "")
	if s.Count("AUTH") != 2 {
		t.Errorf("%d AUTH", s.Count("AUTH"))
	}
}

// TestRunTLSIPv6: on an IPv6 control connection the PROT P listings use
// EPSV, and the certificate is checked for the address.
func TestRunTLSIPv6(t *testing.T) {
	k := newPKI(t)
	now := time.Now()
	s, err := probetest.Start("[::1]:0", probetest.Script{Feat: []string{"AUTH TLS"}, RequireReuse: true,
		TLS: k.serverTLS(t, []string{"::1"}, now.Add(-time.Hour), now.Add(90*24*time.Hour), tls.VersionTLS12, tls.VersionTLS13)})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
	want(t, rep, CheckTLSCert, StatusOK, "the certificate for ::1 verifies", "")
	want(t, rep, CheckPROTPData, StatusOK, "EPSV data connection to [::1]:", "")
	want(t, rep, CheckTLSReuse, StatusOK, "the server requires session reuse", "")
}

// TestJSONRoundTripTLS checks that the JSON carries the FTPS part whole.
func TestJSONRoundTripTLS(t *testing.T) {
	k := newPKI(t)
	s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, TLS: k.goodTLS(t), RequireReuse: true})
	rep := run(t, Options{Addr: s.Addr(), CAFile: k.caFile})
	var b, again bytes.Buffer
	if err := WriteJSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&again, back); err != nil {
		t.Fatal(err)
	}
	if again.String() != b.String() {
		t.Errorf("round trip changed the report:\n%s\n---\n%s", b.String(), again.String())
	}
	for _, key := range []string{`"tls": {`, `"server_name": "127.0.0.2"`, `"offered_resume": true`, `"resumed": true`, `"session_tickets": `, `"days_left": 89`, `"version": "TLS 1.0"`} {
		if !strings.Contains(b.String(), key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}
