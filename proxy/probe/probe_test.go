package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The scripted server listens on 127.0.0.2, so that 127.0.0.9 is an
// address on this host where nothing listens: advertising it is the
// loopback stand-in for a server advertising an unreachable address.
const serverIP = "127.0.0.2"

func start(t *testing.T, sc probetest.Script) *probetest.Server {
	t.Helper()
	s, err := probetest.Start(serverIP+":0", sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func run(t *testing.T, opt Options) Report {
	t.Helper()
	if opt.Timeout == 0 {
		opt.Timeout = 2 * time.Second
	}
	rep, err := Run(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		var b strings.Builder
		_ = WriteText(&b, rep)
		t.Logf("report:\n%s", b.String())
	}
	return rep
}

func get(t *testing.T, rep Report, check string) Finding {
	t.Helper()
	for _, f := range rep.Findings {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no %s finding in %+v", check, rep.Findings)
	return Finding{}
}

// want checks a finding's status and that its message and fix contain
// the given texts ("" for none).
func want(t *testing.T, rep Report, check string, st Status, msg, fix string) {
	t.Helper()
	f := get(t, rep, check)
	if f.Status != st {
		t.Errorf("%s: status %s, want %s (%s)", check, f.Status, st, f.Message)
	}
	if !strings.Contains(f.Message, msg) {
		t.Errorf("%s: message %q lacks %q", check, f.Message, msg)
	}
	if !strings.Contains(f.Fix, fix) {
		t.Errorf("%s: fix %q lacks %q", check, f.Fix, fix)
	}
	if fix == "" && st == StatusOK && f.Fix != "" {
		t.Errorf("%s: ok finding with a fix %q", check, f.Fix)
	}
}

func TestRunHealthy(t *testing.T) {
	s := start(t, probetest.Script{})
	rep := run(t, Options{Addr: s.Addr(), Active: true})
	if rep.Verdict != VerdictWorks {
		t.Errorf("verdict %s", rep.Verdict)
	}
	var checks []string
	for _, f := range rep.Findings {
		checks = append(checks, f.Check)
		if f.Status != StatusOK && !(f.Status == StatusSkip && (strings.HasPrefix(f.Check, "tls-") || f.Check == CheckPROTPData)) {
			t.Errorf("%s: %s: %s", f.Check, f.Status, f.Message)
		}
	}
	if got, want := strings.Join(checks, " "), "connect login auth-tls tls-cert tls-versions prot-p-data tls-session-reuse pasv pasv-address pasv-port pasv-data epsv epsv-port epsv-data port eprt"; got != want {
		t.Errorf("checks\n%s, want\n%s", got, want)
	}
	want(t, rep, CheckPASVAddress, StatusOK, "PASV advertises 127.0.0.2, the control address", "")
	want(t, rep, CheckPORT, StatusOK, "the server connected back to 127.0.0.1:", "")
	if rep.ControlAddress != s.Addr() || rep.User != "anonymous" || rep.Target != "ftp://"+s.Addr() {
		t.Errorf("control %s user %s target %s", rep.ControlAddress, rep.User, rep.Target)
	}
	if at := rep.Modes[0].Attempts[0]; at.ListBytes != len(probetest.Listing) || !at.Listed {
		t.Errorf("PASV attempt %+v", at)
	}
}

// TestRunAdvertisesOther is the misconfigured server: its 227 names an
// address other than its own, where nothing answers.
func TestRunAdvertisesOther(t *testing.T) {
	s := start(t, probetest.Script{Advertise: "127.0.0.9"})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictFails {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASVAddress, StatusFail,
		"PASV advertises 127.0.0.9, a loopback address, which differs from the control address 127.0.0.2 and is unreachable (connection refused); the data port answers at the control address",
		"configure the server's passive (masquerade) address as 127.0.0.2")
	want(t, rep, CheckPASVData, StatusFail, "data connection to the advertised 127.0.0.9:", "")
	want(t, rep, CheckPASVIgnoring, StatusOK, "work: 127.0.0.2:", "")
	want(t, rep, CheckEPSVData, StatusOK, "", "")
}

func TestRunAdvertisesUnspecified(t *testing.T) {
	s := start(t, probetest.Script{Advertise: "0.0.0.0"})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictFails {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASVAddress, StatusFail, "PASV advertises 0.0.0.0, which is no address", "127.0.0.2")
	want(t, rep, CheckPASVIgnoring, StatusOK, "work", "")
}

func TestRunVsftpdFix(t *testing.T) {
	s := start(t, probetest.Script{Greeting: []string{"220 (vsFTPd 3.0.3)"}, Advertise: "127.0.0.9"})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Server != ServerVsftpd || rep.ServerVersion != "3.0.3" {
		t.Errorf("server %q %q", rep.Server, rep.ServerVersion)
	}
	want(t, rep, CheckPASVAddress, StatusFail, "unreachable", "set pasv_address=127.0.0.2 in vsftpd.conf")
}

// TestRunIPv6 probes over IPv6 loopback: EPSV decides, PASV is only
// noted, and PORT does not apply.
func TestRunIPv6(t *testing.T) {
	s, err := probetest.Start("[::1]:0", probetest.Script{})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	rep := run(t, Options{Addr: s.Addr(), Active: true})
	if rep.Verdict != VerdictWorks {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASV, StatusOK, "on an IPv6 control connection", "")
	want(t, rep, CheckEPSVData, StatusOK, "[::1]:", "")
	want(t, rep, CheckPORT, StatusOK, "PORT not tried: PORT carries only IPv4 addresses", "")
	want(t, rep, CheckEPRT, StatusOK, "connected back to [::1]:", "")
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Check, "pasv-") {
			t.Errorf("PASV judged on IPv6: %+v", f)
		}
	}
}

func TestRunEPSVRefused(t *testing.T) {
	s := start(t, probetest.Script{EPSVReply: "500 'EPSV': command not understood."})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictWorks {
		t.Errorf("verdict %s: EPSV does not decide it", rep.Verdict)
	}
	want(t, rep, CheckEPSV, StatusWarn, "the server refuses EPSV (500 'EPSV': command not understood.)", "RFC 2428")
}

func TestRunPASVRefused(t *testing.T) {
	s := start(t, probetest.Script{PASVReply: "502 PASV not implemented.", Greeting: []string{"220 (vsFTPd 3.0.5)"}})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictFails {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASV, StatusFail, "the server refused PASV: 502 PASV not implemented.", "pasv_enable=YES")
}

func TestRunPASVMalformed(t *testing.T) {
	s := start(t, probetest.Script{PASVReply: "227 Entering Passive Mode (999,0,0,1,4,1)."})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictFails {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASV, StatusFail, "the 227 reply carries no usable address (parsing 227 reply: number above 255", "malformed 227")
}

func TestRunPrivilegedPort(t *testing.T) {
	// Port 21 of the server's address: nothing listens there (the control
	// port is ephemeral), so the data connection fails too.
	s := start(t, probetest.Script{PASVReply: "227 Entering Passive Mode (127,0,0,2,0,21)."})
	rep := run(t, Options{Addr: s.Addr()})
	want(t, rep, CheckPASVPort, StatusWarn, "data port 21 is a privileged port", "40000")
	want(t, rep, CheckPASVData, StatusFail, "data port not reachable: connecting to 127.0.0.2:21 failed (connection refused)", "port 21 was handed out")
}

func TestRunActive(t *testing.T) {
	t.Run("no connect back", func(t *testing.T) {
		s := start(t, probetest.Script{NoConnectBack: true})
		rep := run(t, Options{Addr: s.Addr(), Active: true})
		if rep.Verdict != VerdictWorks {
			t.Errorf("verdict %s: active mode does not decide it", rep.Verdict)
		}
		want(t, rep, CheckPORT, StatusFail, "PORT accepted, but the server did not connect back: 425", "clients should use passive mode")
		want(t, rep, CheckEPRT, StatusFail, "EPRT accepted, but the server did not connect back: 425", "")
	})
	t.Run("refused", func(t *testing.T) {
		s := start(t, probetest.Script{PORTReply: "500 Illegal PORT command."})
		rep := run(t, Options{Addr: s.Addr(), Active: true})
		want(t, rep, CheckPORT, StatusFail, "the server refused PORT 127.0.0.1:", "active mode is off")
		want(t, rep, CheckEPRT, StatusFail, "500 Illegal PORT command.", "")
	})
}

func TestRunLogin(t *testing.T) {
	s := start(t, probetest.Script{PassReply: "530 Login incorrect.", Feat: []string{"AUTH TLS"}})
	rep := run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictNoLogin {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckLogin, StatusFail, "login as anonymous refused: 530 Login incorrect.", "ftp://USER:PASSWORD@")
	want(t, rep, CheckLogin, StatusFail, "", "only over FTPS")

	rep = run(t, Options{Addr: s.Addr(), User: "bob", Password: "secret"})
	want(t, rep, CheckLogin, StatusFail, "login as bob refused", "check the user name and password")
	if strings.Contains(rep.Target, "secret") || rep.Target != "ftp://bob@"+s.Addr() {
		t.Errorf("target %q", rep.Target)
	}
}

func TestRunNoConnection(t *testing.T) {
	ln, err := net.Listen("tcp", serverIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rep := run(t, Options{Addr: addr})
	if rep.Verdict != VerdictNoConnect || rep.Connected {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckConnect, StatusFail, "connecting to "+addr+": connection refused", "firewall")
	if len(rep.Findings) != 1 {
		t.Errorf("findings after a failed connect: %+v", rep.Findings)
	}

	s := start(t, probetest.Script{Greeting: []string{"421 Too many users, try later."}})
	rep = run(t, Options{Addr: s.Addr()})
	if rep.Verdict != VerdictNoConnect {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckConnect, StatusFail, "greeted with 421 Too many users, try later.", "")
}

func TestRunAuthTLS(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sc     probetest.Script
		auth   AuthTLS
		sent   int // AUTH commands the server got
		status Status
		msg    string
	}{
		// Offered: the FTPS checks send AUTH once more, for their session,
		// which these servers do not complete, so no TLS version is
		// tried.
		{"feat", probetest.Script{Feat: []string{"MDTM", "AUTH TLS", "PBSZ"}}, AuthOffered, 0 + 1, StatusOK, "offers AUTH TLS (FEAT lists AUTH TLS)"},
		{"234", probetest.Script{AuthReply: "234 Proceed with negotiation."}, AuthOffered, 1 + 1, StatusOK, "234 Proceed"},
		{"pasvgate", probetest.Script{AuthReply: "534 AUTH is not supported through this gateway: FTPS is not available."}, AuthByPasvgate, 1, StatusWarn, "refused by pasvgate (534"},
		{"policy", probetest.Script{AuthReply: "534 Policy forbids TLS."}, AuthRefused, 1, StatusOK, "refused for policy reasons"},
		{"unknown", probetest.Script{Feat: []string{"MDTM"}, AuthReply: "500 Unknown command."}, AuthNotOffered, 1, StatusOK, `does not offer AUTH TLS (FEAT lists none, and AUTH TLS got "500 Unknown command.")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, tc.sc)
			rep := run(t, Options{Addr: s.Addr()})
			if rep.AuthTLS != tc.auth || s.Count("AUTH") != tc.sent {
				t.Errorf("auth_tls %q after %d AUTH, want %q after %d", rep.AuthTLS, s.Count("AUTH"), tc.auth, tc.sent)
			}
			// A 234 leaves the connection waiting for TLS; the probe
			// must have started over and still got everything done.
			if rep.Verdict != VerdictWorks {
				t.Errorf("verdict %s", rep.Verdict)
			}
			want(t, rep, CheckAuthTLS, tc.status, tc.msg, "")
		})
	}
	// pasvgate terminates FTPS and reads the 227 inside: a 227 that
	// needs rewriting is no reason to warn about FTPS any more.
	t.Run("offered and the 227 differs", func(t *testing.T) {
		s := start(t, probetest.Script{Feat: []string{"AUTH TLS"}, Advertise: "127.0.0.9"})
		rep := run(t, Options{Addr: s.Addr()})
		want(t, rep, CheckAuthTLS, StatusOK, "pasvgate, which terminates FTPS itself (--tls), can", "")
	})
}

// TestRunHostile checks that a server that never answers, or answers
// without end, costs the probe a bounded time and memory, and that its
// text reaches the report made harmless.
func TestRunHostile(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		s := start(t, probetest.Script{Silent: true})
		begin := time.Now()
		rep := run(t, Options{Addr: s.Addr(), Timeout: 200 * time.Millisecond})
		if rep.Verdict != VerdictNoLogin || rep.AuthTLS != AuthNoAnswer {
			t.Errorf("verdict %s auth %s", rep.Verdict, rep.AuthTLS)
		}
		want(t, rep, CheckLogin, StatusFail, "timed out after 200ms", "")
		if d := time.Since(begin); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("endless greeting", func(t *testing.T) {
		lines := make([]string, 0, 2*maxReplyLines)
		lines = append(lines, "220-\x1b[31mred")
		for range 2 * maxReplyLines {
			lines = append(lines, "220-more")
		}
		s := start(t, probetest.Script{Greeting: lines})
		rep := run(t, Options{Addr: s.Addr()})
		if rep.Verdict != VerdictNoConnect {
			t.Errorf("verdict %s", rep.Verdict)
		}
		want(t, rep, CheckConnect, StatusFail, "reply too long", "")
	})
	t.Run("escape sequences", func(t *testing.T) {
		s := start(t, probetest.Script{Greeting: []string{"220 \x1b]0;owned\x07 hello \xfe"}})
		rep := run(t, Options{Addr: s.Addr()})
		if rep.Banner != "220 ?]0;owned? hello ?" {
			t.Errorf("banner %q", rep.Banner)
		}
		var b bytes.Buffer
		_ = WriteText(&b, rep)
		if bytes.ContainsAny(b.Bytes(), "\x1b\x07") {
			t.Errorf("control bytes in the text report")
		}
	})
}

func TestRunCancelled(t *testing.T) {
	s := start(t, probetest.Script{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	rep, err := Run(ctx, Options{Addr: s.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verdict != VerdictNoConnect {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckConnect, StatusFail, "interrupted", "")
}

// TestRunInterrupted cancels a probe stuck on a silent server: it ends at
// once, not after its (long) timeout.
func TestRunInterrupted(t *testing.T) {
	s := start(t, probetest.Script{Silent: true})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	begin := time.Now()
	rep, err := Run(ctx, Options{Addr: s.Addr(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("took %v after the cancel", d)
	}
	if rep.Verdict == VerdictWorks || !strings.Contains(rep.AuthReply, "interrupted") {
		t.Errorf("verdict %s, auth reply %q", rep.Verdict, rep.AuthReply)
	}
}

func TestRunOptions(t *testing.T) {
	for _, opt := range []Options{
		{},
		{Addr: "127.0.0.2:21", User: "bob\r\nDELE x"},
		{Addr: "127.0.0.2:21", User: "bob", Password: "a\nb"},
		{Addr: "127.0.0.2:21", User: "bob\x00"},
	} {
		if _, err := Run(t.Context(), opt); err == nil {
			t.Errorf("Run(%+v) took it", opt)
		}
	}
}

var ports = regexp.MustCompile(`:\d+\b|\(127,0,0,\d,\d+,\d+\)|\|\|\|\d+\||port \d+|"list_bytes": \d+`)

// TestRunDeterministic runs the same probe twice: the reports may differ
// in the data ports, and in nothing else.
func TestRunDeterministic(t *testing.T) {
	s := start(t, probetest.Script{Advertise: "127.0.0.9"})
	var out [2]string
	for i := range out {
		rep := run(t, Options{Addr: s.Addr(), Active: true})
		var b bytes.Buffer
		_ = WriteText(&b, rep)
		_ = WriteJSON(&b, rep)
		out[i] = ports.ReplaceAllString(b.String(), ":PORT")
	}
	if out[0] != out[1] {
		t.Errorf("two probes differ:\n%s\n---\n%s", out[0], out[1])
	}
}

// goldenReport is a misconfigured vsftpd seen from the Internet, made by
// hand so that its rendering can be compared byte for byte.
func goldenReport() Report {
	r := Report{
		Target:         "ftp://198.51.100.7:21",
		ControlAddress: "198.51.100.7:21",
		LocalAddress:   "203.0.113.10",
		Banner:         "220 (vsFTPd 3.0.3)",
		Server:         ServerVsftpd,
		ServerVersion:  "3.0.3",
		Connected:      true,
		LoggedIn:       true,
		User:           "anonymous",
		AuthTLS:        AuthNotOffered,
		AuthReply:      "530 Please login with USER and PASS.",
		Modes: []ModeResult{
			{Mode: "PASV", Code: 227, Reply: "227 Entering Passive Mode (10,0,0,5,117,48).", Advertised: "10.0.0.5:30000", Class: ClassPrivate,
				Attempts: []Attempt{
					{Via: "advertised", Address: "10.0.0.5:30000", Error: "timed out after 3s"},
					{Via: "control", Address: "198.51.100.7:30000", Connected: true, ListCode: 226, ListReply: "226 Directory send OK.", ListBytes: 120, Listed: true},
				}},
			{Mode: "EPSV", Code: 229, Reply: "229 Entering Extended Passive Mode (|||30001|)", Advertised: "198.51.100.7:30001",
				Attempts: []Attempt{{Via: "advertised", Address: "198.51.100.7:30001", Connected: true, ListCode: 226, ListReply: "226 Directory send OK.", ListBytes: 120, Listed: true}}},
		},
	}
	r.Findings = analyze(&r, 3*time.Second)
	r.Verdict = verdictOf(&r)
	return r
}

func TestWriteGolden(t *testing.T) {
	rep := goldenReport()
	if rep.Verdict != VerdictFails {
		t.Errorf("verdict %s", rep.Verdict)
	}
	want(t, rep, CheckPASVAddress, StatusFail, "10.0.0.5, a private address (RFC 1918), which differs from the control address 198.51.100.7", "pasv_address=198.51.100.7")
	want(t, rep, CheckPASVAddress, StatusFail, "", "pasvgate run --upstream 10.0.0.5:21 --public-addr 198.51.100.7")
	for _, tc := range []struct {
		file  string
		write func(*bytes.Buffer, Report) error
	}{
		{"misconfigured.txt", func(b *bytes.Buffer, r Report) error { return WriteText(b, r) }},
		{"misconfigured.json", func(b *bytes.Buffer, r Report) error { return WriteJSON(b, r) }},
	} {
		var b bytes.Buffer
		if err := tc.write(&b, rep); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", tc.file)
		if *update {
			if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		golden, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if !bytes.Equal(b.Bytes(), golden) {
			t.Errorf("%s differs from the golden file:\n%s", tc.file, b.String())
		}
	}
}

// TestJSONRoundTrip checks that the JSON carries the whole report.
func TestJSONRoundTrip(t *testing.T) {
	rep := goldenReport()
	var b bytes.Buffer
	if err := WriteJSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := WriteJSON(&again, back); err != nil {
		t.Fatal(err)
	}
	if again.String() != b.String() {
		t.Errorf("round trip changed the report:\n%s\n---\n%s", b.String(), again.String())
	}
}

// TestAnalyzeAddresses covers the address judgements that need a network
// the tests do not have, such as a private 227 behind a public control
// address that is nevertheless reachable from where the probe runs. It
// only analyses made-up reports: no packet is sent to these addresses.
func TestAnalyzeAddresses(t *testing.T) {
	const ctrl = "192.0.3.7" // public, unlike the documentation ranges
	for _, tc := range []struct {
		adv       string
		reachable bool
		status    Status
		msg       string
	}{
		{"10.0.0.5", true, StatusWarn, "10.0.0.5, a private address (RFC 1918), not the control address 192.0.3.7; it is reachable from here, but clients on the Internet cannot reach it"},
		{"100.64.1.1", true, StatusWarn, "carrier-grade NAT"},
		{"192.0.3.8", true, StatusWarn, "differs from the control address 192.0.3.7, but is reachable from here"},
		{"127.0.0.1", true, StatusFail, "a loopback address that differs from the control address"},
		{"192.0.3.9", false, StatusFail, "192.0.3.9, a public address, which differs from the control address 192.0.3.7 and is unreachable (timed out after 3s); the data port answers"},
		{"192.0.3.7", true, StatusOK, "the control address"},
	} {
		r := goldenReport()
		r.ControlAddress = ctrl + ":21"
		r.Modes = []ModeResult{{Mode: "PASV", Code: 227, Reply: "227 ok", Advertised: tc.adv + ":30000", Class: Classify(netip.MustParseAddr(tc.adv)),
			Attempts: []Attempt{
				{Via: "advertised", Address: tc.adv + ":30000", Connected: tc.reachable, Listed: tc.reachable, ListCode: 226, Error: "timed out after 3s"},
				{Via: "control", Address: ctrl + ":30002", Connected: true, Listed: true, ListCode: 226},
			}}}
		var got *Finding
		for _, f := range analyze(&r, 3*time.Second) {
			if f.Check == CheckPASVAddress {
				got = &f
			}
		}
		if got == nil || got.Status != tc.status || !strings.Contains(got.Message, tc.msg) {
			t.Errorf("%s: %+v, want %s %q", tc.adv, got, tc.status, tc.msg)
		}
		if tc.status != StatusOK && tc.adv != "192.0.3.8" && !strings.Contains(got.Fix, "pasv_address="+ctrl) {
			t.Errorf("%s: fix %q", tc.adv, got.Fix)
		}
	}
}
