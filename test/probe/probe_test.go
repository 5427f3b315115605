package probe

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	pgprobe "github.com/pasvgate/pasvgate/proxy/probe"
	"github.com/pasvgate/pasvgate/test/lab"
)

var (
	flagPasvgate = flag.String("probe.pasvgate", os.Getenv("PASVGATE_BIN"), "pasvgate binary (default: $PASVGATE_BIN, else built from ./cmd/pasvgate)")
	flagShow     = flag.Bool("probe.show", false, "log the text reports, for the README")
)

// A data port nothing answers is given up on after this: short, because
// every failing case waits it out at least once.
const timeout = "1s"

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Labs of a run that was killed; a live run's are left alone.
	_ = lab.SweepPrefix(tlsNSPrefix)
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// pasvgate returns the binary under test, built once per test run.
func pasvgate(t *testing.T) string {
	t.Helper()
	if *flagPasvgate != "" {
		return *flagPasvgate
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "pgprobe-build-"); buildErr != nil {
			return
		}
		builtBin, buildErr = lab.BuildGo(t.Context(), buildDir, "./cmd/pasvgate")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// result is one run of `pasvgate probe`.
type result struct {
	code   int
	stdout string
	stderr string
}

// probe runs `pasvgate probe args...` inside namespace ns.
func probe(t *testing.T, l *lab.Lab, ns string, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "ip", append([]string{"netns", "exec", ns, pasvgate(t), "probe"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("running probe: %v\n%s", err, stderr.String())
	}
	t.Logf("pasvgate probe %s (in %s): exit %d after %v", strings.Join(args, " "), ns[strings.LastIndexByte(ns, '-')+1:],
		res.code, time.Since(start).Round(10*time.Millisecond))
	if *flagShow && !strings.Contains(strings.Join(args, " "), "--json") {
		t.Logf("report:\n%s", res.stdout)
	}
	return res
}

// probeBoth runs the probe with and without --json, checks that both end
// with the same status and that the JSON carries the same findings as the
// text, and returns the decoded report and the text.
func probeBoth(t *testing.T, l *lab.Lab, ns, url string, wantCode int, extra ...string) (pgprobe.Report, string) {
	t.Helper()
	text := probe(t, l, ns, append(append([]string{"--timeout", timeout}, extra...), url)...)
	js := probe(t, l, ns, append(append([]string{"--timeout", timeout, "--json"}, extra...), url)...)
	if text.code != wantCode || js.code != wantCode {
		t.Fatalf("exit status %d (text) and %d (--json), want %d\n%s\nstderr: %s", text.code, js.code, wantCode, text.stdout, text.stderr)
	}
	var rep pgprobe.Report
	if err := json.Unmarshal([]byte(js.stdout), &rep); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, js.stdout)
	}
	// The two runs got different ports from the server; all else must
	// agree, finding by finding.
	lines := findingLines(text.stdout)
	if len(lines) != len(rep.Findings) {
		t.Errorf("text has %d findings, JSON %d\ntext:\n%s\njson:\n%s", len(lines), len(rep.Findings), text.stdout, js.stdout)
	}
	for i, f := range rep.Findings {
		if i >= len(lines) {
			break
		}
		if got, want := maskPorts(lines[i]), maskPorts(f.Check+" "+f.Message); !strings.Contains(got, want) {
			t.Errorf("finding %d: text %q, JSON %q", i, got, want)
		}
	}
	return rep, text.stdout
}

// findingLines returns the finding lines of a text report, without the
// status column and without the fix lines.
func findingLines(report string) []string {
	var out []string
	for _, l := range strings.Split(report, "\n") {
		for _, st := range []string{"ok    ", "WARN  ", "FAIL  ", "skip  "} {
			if rest, ok := strings.CutPrefix(l, st); ok {
				out = append(out, strings.Join(strings.Fields(rest), " "))
			}
		}
	}
	return out
}

var portish = regexp.MustCompile(`:\d{2,5}\b|\b\d+,\d+\)|\|\|\|\d+\||port \d+`)

// maskPorts removes data ports, which differ from run to run.
func maskPorts(s string) string {
	return portish.ReplaceAllString(strings.Join(strings.Fields(s), " "), "PORT")
}

func finding(t *testing.T, rep pgprobe.Report, check string) pgprobe.Finding {
	t.Helper()
	for _, f := range rep.Findings {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no %s finding in %+v", check, rep.Findings)
	return pgprobe.Finding{}
}

// wantFinding checks a finding's status and that its message and fix
// contain the given texts.
func wantFinding(t *testing.T, rep pgprobe.Report, check string, status pgprobe.Status, msg []string, fix []string) {
	t.Helper()
	f := finding(t, rep, check)
	if f.Status != status {
		t.Errorf("%s: status %s, want %s: %s", check, f.Status, status, f.Message)
	}
	for _, m := range msg {
		if !strings.Contains(f.Message, m) {
			t.Errorf("%s: message %q lacks %q", check, f.Message, m)
		}
	}
	for _, m := range fix {
		if !strings.Contains(f.Fix, m) {
			t.Errorf("%s: fix %q lacks %q", check, f.Fix, m)
		}
	}
}

func startServer(t *testing.T, l *lab.Lab, kind string, opt lab.ServerOptions) *lab.Server {
	t.Helper()
	srv, err := l.StartServer(t.Context(), kind, opt)
	if errors.Is(err, lab.ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// url is the probe's URL for srv at host.
func url(srv *lab.Server, host string) string {
	if srv.User == "anonymous" {
		return "ftp://" + host
	}
	return "ftp://" + srv.User + ":" + srv.Password + "@" + host
}

// TestHealthy probes vsftpd from its own LAN, passive and active.
func TestHealthy(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{})
	srv := startServer(t, l, lab.Vsftpd, lab.ServerOptions{})
	rep, _ := probeBoth(t, l, l.GW, url(srv, lab.ServerAddr), 0, "--active")
	if rep.Server != pgprobe.ServerVsftpd || rep.Verdict != pgprobe.VerdictWorks {
		t.Errorf("server %q verdict %q, want vsftpd, works", rep.Server, rep.Verdict)
	}
	for _, f := range rep.Findings {
		if f.Status != pgprobe.StatusOK && !(f.Status == pgprobe.StatusSkip && isTLSCheck(f.Check)) {
			t.Errorf("finding %s is %s: %s", f.Check, f.Status, f.Message)
		}
		if isTLSCheck(f.Check) {
			wantFinding(t, rep, f.Check, pgprobe.StatusSkip, []string{"not checked: the server does not offer AUTH TLS"}, nil)
		}
	}
	for _, check := range []string{"connect", "login", "auth-tls", "tls-cert", "tls-versions", "prot-p-data", "tls-session-reuse", "pasv", "pasv-address", "pasv-port", "pasv-data", "epsv", "epsv-port", "epsv-data", "port", "eprt"} {
		finding(t, rep, check)
	}
	wantFinding(t, rep, "pasv-address", pgprobe.StatusOK, []string{lab.ServerAddr, "the control address"}, nil)
	wantFinding(t, rep, "port", pgprobe.StatusOK, []string{"connected back to " + lab.GWPrivateAddr, "from " + lab.ServerAddr}, nil)
	wantFinding(t, rep, "eprt", pgprobe.StatusOK, []string{"connected back to " + lab.GWPrivateAddr, "from " + lab.ServerAddr}, nil)
}

// isTLSCheck reports whether check is one of the FTPS checks, which are
// skipped when the server offers no AUTH TLS.
func isTLSCheck(check string) bool {
	switch check {
	case "tls-cert", "tls-versions", "prot-p-data", "tls-session-reuse":
		return true
	}
	return false
}

// TestMisconfigured probes servers that advertise an address that is not
// theirs and that nothing answers.
func TestMisconfigured(t *testing.T) {
	t.Parallel()
	const bogus = "192.0.2.99"
	for _, tc := range []struct {
		kind, fix string
	}{
		{lab.Vsftpd, "pasv_address=" + lab.ServerAddr},
		{lab.ProFTPD, "MasqueradeAddress " + lab.ServerAddr},
		{lab.PureFTPd, "-P " + lab.ServerAddr},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			l := lab.New(t, lab.Options{})
			srv := startServer(t, l, tc.kind, lab.ServerOptions{PublicAddr: bogus})
			rep, _ := probeBoth(t, l, l.GW, url(srv, lab.ServerAddr), 1)
			if rep.Server != tc.kind {
				t.Errorf("server identified as %q, want %q (greeting %q)", rep.Server, tc.kind, rep.Banner)
			}
			wantFinding(t, rep, "pasv-address", pgprobe.StatusFail,
				[]string{bogus, "differs from the control address " + lab.ServerAddr, "unreachable", "only the advertised address is wrong"},
				[]string{tc.fix, "pasvgate run --upstream"})
			wantFinding(t, rep, "pasv-data", pgprobe.StatusFail, []string{bogus}, nil)
			// Clients that ignore the 227 address get through: the
			// data port itself is open.
			wantFinding(t, rep, "pasv-control-address", pgprobe.StatusOK, []string{lab.ServerAddr}, nil)
			wantFinding(t, rep, "epsv-data", pgprobe.StatusOK, nil, nil)
		})
	}
}

// TestDataPortBlocked probes vsftpd whose passive range a firewall in the
// server's namespace drops.
func TestDataPortBlocked(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{})
	srv := startServer(t, l, lab.Vsftpd, lab.ServerOptions{})
	if _, err := l.Exec(t.Context(), l.Server, l.IPTables, "-w", "5", "-A", "INPUT",
		"-p", "tcp", "--dport", "30000:30099", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	rep, _ := probeBoth(t, l, l.GW, url(srv, lab.ServerAddr), 1)
	wantFinding(t, rep, "pasv-address", pgprobe.StatusOK, []string{lab.ServerAddr}, nil)
	wantFinding(t, rep, "pasv-data", pgprobe.StatusFail,
		[]string{"data port not reachable", lab.ServerAddr, "timed out after 1s"},
		[]string{"pasv_min_port", "pasvgate"})
	wantFinding(t, rep, "epsv-data", pgprobe.StatusFail, []string{"data port not reachable"}, nil)
}

// TestBehindPasvgate probes vsftpd through pasvgate on the gw, from the
// client's network.
func TestBehindPasvgate(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{})
	startServer(t, l, lab.Vsftpd, lab.ServerOptions{})
	pg, err := l.Start(l.GW, pasvgate(t), "run",
		"--listen", lab.GWPublicAddr+":21",
		"--upstream", lab.ServerAddr+":21",
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", "40000-40999",
		"--backend", "iptables",
		"--iptables-path", l.IPTables)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFTP(t.Context(), pg, l.Client, lab.GWPublicAddr+":21"); err != nil {
		t.Fatalf("pasvgate did not come up: %v\n%s", err, pg.Output())
	}
	rep, _ := probeBoth(t, l, l.Client, "ftp://"+lab.GWPublicAddr, 0)
	if rep.ControlAddress != lab.GWPublicAddr+":21" {
		t.Errorf("control address %s", rep.ControlAddress)
	}
	wantFinding(t, rep, "pasv-address", pgprobe.StatusWarn,
		[]string{lab.GWPublicAddr2, "differs from the control address " + lab.GWPublicAddr, "reachable from here"}, nil)
	wantFinding(t, rep, "pasv-data", pgprobe.StatusOK, []string{lab.GWPublicAddr2}, nil)
	wantFinding(t, rep, "auth-tls", pgprobe.StatusWarn, []string{"refused by pasvgate (534"}, []string{"--tls allow"})
	wantFinding(t, rep, "prot-p-data", pgprobe.StatusSkip, []string{"pasvgate in front of the server refuses AUTH TLS"}, nil)
	wantFinding(t, rep, "epsv-data", pgprobe.StatusOK, []string{lab.GWPublicAddr}, nil)
	if rep.AuthTLS != pgprobe.AuthByPasvgate {
		t.Errorf("auth_tls %q, want %q", rep.AuthTLS, pgprobe.AuthByPasvgate)
	}
}

// TestNoSession checks exit status 3: nothing listening, and a refused
// login.
func TestNoSession(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{})
	rep, _ := probeBoth(t, l, l.GW, "ftp://"+lab.ServerAddr, 3)
	wantFinding(t, rep, "connect", pgprobe.StatusFail, []string{"connection refused"}, nil)
	srv := startServer(t, l, lab.ProFTPD, lab.ServerOptions{})
	rep, _ = probeBoth(t, l, l.GW, "ftp://"+srv.User+":wrong@"+lab.ServerAddr, 3)
	if rep.Verdict != pgprobe.VerdictNoLogin {
		t.Errorf("verdict %q, want %q", rep.Verdict, pgprobe.VerdictNoLogin)
	}
	wantFinding(t, rep, "login", pgprobe.StatusFail, []string{"refused: 530"}, nil)
}

// TestIPv6 probes vsftpd over IPv6, where EPSV decides the verdict and
// PORT does not apply.
func TestIPv6(t *testing.T) {
	t.Parallel()
	l := lab.New(t, lab.Options{IPv6: true})
	srv := startServer(t, l, lab.Vsftpd, lab.ServerOptions{})
	rep, _ := probeBoth(t, l, l.GW, url(srv, "["+lab.ServerAddr6+"]"), 0, "--active")
	if rep.ControlAddress != "["+lab.ServerAddr6+"]:21" {
		t.Errorf("control address %s", rep.ControlAddress)
	}
	wantFinding(t, rep, "pasv", pgprobe.StatusOK, []string{"IPv6 clients use EPSV"}, nil)
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.Check, "pasv-") {
			t.Errorf("PASV judged on IPv6: %+v", f)
		}
	}
	wantFinding(t, rep, "epsv-data", pgprobe.StatusOK, []string{lab.ServerAddr6}, nil)
	wantFinding(t, rep, "port", pgprobe.StatusOK, []string{"not tried", "IPv6"}, nil)
	wantFinding(t, rep, "eprt", pgprobe.StatusOK, []string{"connected back to [" + lab.GWPrivateAddr6 + "]"}, nil)
}
