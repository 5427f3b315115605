package probe

import (
	"net/netip"
	"strings"
	"testing"
)

func TestIdentify(t *testing.T) {
	for _, tc := range []struct {
		greeting []string
		kind     string
		version  string
	}{
		{[]string{"220 (vsFTPd 3.0.3)"}, ServerVsftpd, "3.0.3"},
		{[]string{"220 Welcome to the vsftpd service."}, ServerVsftpd, ""},
		{[]string{"220 ProFTPD 1.3.8b Server (Debian) [::ffff:192.0.2.10]"}, ServerProFTPD, "1.3.8b"},
		{[]string{"220 pglab proftpd ready"}, ServerProFTPD, ""},
		{[]string{
			"220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------",
			"220-You are user number 1 of 50 allowed.",
			"220 You will be disconnected after 15 minutes of inactivity.",
		}, ServerPureFTPd, ""},
		{[]string{"220-FileZilla Server 1.8.0", "220 Please visit https://filezilla-project.org/"}, ServerFileZilla, "1.8.0"},
		{[]string{"220-FileZilla Server version 0.9.60 beta", "220 hello"}, ServerFileZilla, "0.9.60"},
		{[]string{"220 Microsoft FTP Service"}, ServerIIS, ""},
		{[]string{"220 probetest ready"}, ServerUnknown, ""},
		{[]string{"220 "}, ServerUnknown, ""},
		{nil, ServerUnknown, ""},
	} {
		kind, version := Identify(tc.greeting)
		if kind != tc.kind || version != tc.version {
			t.Errorf("Identify(%q) = %q, %q; want %q, %q", tc.greeting, kind, version, tc.kind, tc.version)
		}
	}
}

// TestFixes checks that each fix names the setting of the server that
// answered, and the address to set it to.
func TestFixes(t *testing.T) {
	want := netip.MustParseAddr("198.51.100.7")
	private := netip.MustParseAddr("10.0.0.5")
	doc := netip.MustParseAddr("192.0.2.99")
	for _, tc := range []struct {
		kind              string
		address, rng, low string
	}{
		{ServerVsftpd, "pasv_address=198.51.100.7", "pasv_min_port", "pasv_min_port=40000"},
		{ServerProFTPD, "MasqueradeAddress 198.51.100.7", "PassivePorts", "PassivePorts 40000 40999"},
		{ServerPureFTPd, "-P 198.51.100.7", "-p FIRST:LAST", "-p 40000:40999"},
		{ServerFileZilla, "public IP to 198.51.100.7", "passive port range", "above 1023"},
		{ServerIIS, "External IP Address of Firewall", "data channel port range", "above 1023"},
		{ServerUnknown, "passive (masquerade) address as 198.51.100.7", "passive port range", "above 1023"},
	} {
		fix := addressFix(tc.kind, want, private)
		if !strings.Contains(fix, tc.address) {
			t.Errorf("%q: address fix %q lacks %q", tc.kind, fix, tc.address)
		}
		// The private advertised address is most likely the server's own.
		if !strings.Contains(fix, "pasvgate run --upstream 10.0.0.5:21 --public-addr 198.51.100.7") {
			t.Errorf("%q: address fix %q lacks the pasvgate command", tc.kind, fix)
		}
		if fix := addressFix(tc.kind, want, doc); !strings.Contains(fix, "--upstream SERVER-ADDRESS:21") {
			t.Errorf("%q: address fix %q names a non-private address as the upstream", tc.kind, fix)
		}
		if fix := rangeFix(tc.kind, 30001); !strings.Contains(fix, tc.rng) || !strings.Contains(fix, "port 30001") {
			t.Errorf("%q: range fix %q lacks %q", tc.kind, fix, tc.rng)
		}
		if fix := lowPortFix(tc.kind); !strings.Contains(fix, tc.low) {
			t.Errorf("%q: low-port fix %q lacks %q", tc.kind, fix, tc.low)
		}
	}
}

func TestIsAuthTLSFeature(t *testing.T) {
	for line, want := range map[string]bool{
		" AUTH TLS":           true,
		" AUTH SSL;TLS":       true,
		" auth tls-c":         true,
		" AUTH TLS;TLS-C;SSL": true,
		" AUTH SSL":           false,
		" AUTH":               false,
		" PBSZ":               false,
		" AUTHTLS":            false,
		"":                    false,
	} {
		if got := isAuthTLSFeature(line); got != want {
			t.Errorf("isAuthTLSFeature(%q) = %v", line, got)
		}
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"220 (vsFTPd 3.0.3)":       "220 (vsFTPd 3.0.3)",
		"220 \x1b[2Jcleared":       "220 ?[2Jcleared",
		"220 bad \xff\xfe utf8":    "220 bad ?? utf8",
		"220 tab\there":            "220 tab?here",
		"220 Grüße \u00a0ok":       "220 Grüße \u00a0ok",
		"220 c1 \u0085 control":    "220 c1 ? control",
		"220 real \ufffd replaced": "220 real \ufffd replaced",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
	long := clean(strings.Repeat("x", 10*maxTextLen))
	if len(long) > maxTextLen+10 || !strings.HasSuffix(long, "...") {
		t.Errorf("clean did not cut a long line: %d bytes", len(long))
	}
}
