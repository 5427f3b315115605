package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/cmd/pasvgate/demoftpd"
	"github.com/pasvgate/pasvgate/proxy/probe"
	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
)

func TestParseFTPURL(t *testing.T) {
	for _, tc := range []struct {
		in                    string
		addr, user, pass, bad string
	}{
		{in: "ftp://192.0.2.10", addr: "192.0.2.10:21"},
		{in: "ftp://192.0.2.10/", addr: "192.0.2.10:21"},
		{in: "ftp://192.0.2.10:2121", addr: "192.0.2.10:2121"},
		{in: "FTP://ftp.example.com", addr: "ftp.example.com:21"},
		{in: "192.0.2.10", addr: "192.0.2.10:21"},
		{in: "192.0.2.10:2121", addr: "192.0.2.10:2121"},
		{in: "ftp://[2001:db8:2::10]", addr: "[2001:db8:2::10]:21"},
		{in: "ftp://[2001:db8:2::10]:2121", addr: "[2001:db8:2::10]:2121"},
		{in: "ftp://bob@192.0.2.10", addr: "192.0.2.10:21", user: "bob"},
		{in: "ftp://bob:s%40cret%3A@192.0.2.10", addr: "192.0.2.10:21", user: "bob", pass: "s@cret:"},
		{in: "ftp://bob:@192.0.2.10", addr: "192.0.2.10:21", user: "bob"},

		{in: "http://192.0.2.10", bad: `scheme "http"`},
		{in: "ftps://192.0.2.10", bad: "does not speak implicit FTPS"},
		{in: "ftp://", bad: "no host"},
		{in: "ftp:192.0.2.10", bad: "bad URL"},
		{in: "ftp://192.0.2.10:0", bad: "port"},
		{in: "ftp://192.0.2.10:65536", bad: "port"},
		{in: "ftp://192.0.2.10:ftp", bad: "bad URL"},
		{in: "ftp://192.0.2.10/pub", bad: "a path"},
		{in: "ftp://192.0.2.10/?x=1", bad: "query"},
		{in: "ftp://192.0.2.10/#frag", bad: "query or fragment"},
		{in: "ftp://:pass@192.0.2.10", bad: "empty user"},
		{in: "ftp://bob%0d%0aDELE%20x@192.0.2.10", bad: "line break"},
		{in: "ftp://bob:a%0Ab@192.0.2.10", bad: "line break"},
		{in: "ftp://bob:a%00b@192.0.2.10", bad: "NUL"},
		{in: "ftp://192.0.2.10 x", bad: "bad URL"},
	} {
		addr, user, pass, err := parseFTPURL(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%q: error %v, want one about %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || addr != tc.addr || user != tc.user || pass != tc.pass {
			t.Errorf("%q: %q %q %q %v, want %q %q %q", tc.in, addr, user, pass, err, tc.addr, tc.user, tc.pass)
		}
	}
}

func TestParseProbeArgs(t *testing.T) {
	pa, err := parseProbeArgs([]string{"ftp://192.0.2.10", "--json", "--timeout", "500ms", "--active", "--ca", "ca.pem", "--server-name", "ftp.example.com"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !pa.json || !pa.opt.Active || pa.opt.Timeout != 500*time.Millisecond || pa.opt.Addr != "192.0.2.10:21" ||
		pa.opt.CAFile != "ca.pem" || pa.opt.ServerName != "ftp.example.com" {
		t.Errorf("%+v", pa)
	}
	pa, err = parseProbeArgs([]string{"192.0.2.10"}, io.Discard)
	if err != nil || pa.opt.Timeout != probe.DefaultTimeout || pa.json || pa.opt.Active {
		t.Errorf("defaults: %+v %v", pa, err)
	}
	for _, args := range [][]string{
		{},
		{"ftp://192.0.2.10", "ftp://192.0.2.11"},
		{"--timeout", "0s", "ftp://192.0.2.10"},
		{"--timeout", "2m", "ftp://192.0.2.10"},
		{"--bogus", "ftp://192.0.2.10"},
		{"http://192.0.2.10"},
	} {
		_, err := parseProbeArgs(args, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	if _, err := parseProbeArgs([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// probeCmd runs `pasvgate probe args...` in-process.
func probeCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code, err := runProbe(t.Context(), args, &out, &errOut)
	t.Logf("probe %s: %d, %v", strings.Join(args, " "), code, err)
	if (code == 0) != (err == nil) {
		t.Errorf("status %d with error %v", code, err)
	}
	return code, out.String()
}

func TestRunProbeStatus(t *testing.T) {
	healthy, err := probetest.Start("127.0.0.2:0", probetest.Script{})
	if err != nil {
		t.Fatal(err)
	}
	defer healthy.Close()
	broken, err := probetest.Start("127.0.0.2:0", probetest.Script{Advertise: "127.0.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	defer broken.Close()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	code, out := probeCmd(t, "ftp://"+healthy.Addr())
	if code != 0 || !strings.Contains(out, "result: passive FTP works") {
		t.Errorf("healthy: %d\n%s", code, out)
	}
	code, out = probeCmd(t, "ftp://"+broken.Addr())
	if code != 1 || !strings.Contains(out, "FAIL  pasv-address") || !strings.Contains(out, "differs from the control address 127.0.0.2") {
		t.Errorf("broken: %d\n%s", code, out)
	}
	code, out = probeCmd(t, "--json", "ftp://"+broken.Addr())
	var rep probe.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Verdict != probe.VerdictFails {
		t.Errorf("broken --json: %d %v\n%s", code, err, out)
	}
	if code, _ := probeCmd(t, "--timeout", "1s", "ftp://"+closed); code != 3 {
		t.Errorf("nothing listening: %d", code)
	}
	if code, _ := probeCmd(t, "ftp://"+healthy.Addr()+"/pub"); code != 2 {
		t.Errorf("bad URL: %d", code)
	}
}

// TestProbeExitStatus runs the whole command through main in a child
// process, because status 3 is set with os.Exit.
func TestProbeExitStatus(t *testing.T) {
	if os.Getenv("PASVGATE_PROBE_CHILD") == "1" {
		os.Exit(realMain(strings.Fields(os.Getenv("PASVGATE_PROBE_ARGS"))))
	}
	s, err := probetest.Start("127.0.0.2:0", probetest.Script{PassReply: "530 Login incorrect."})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A port nothing listens on: taken and released after the server is
	// up, so the kernel cannot hand it to the server in between.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if closed == s.Addr() {
		t.Fatalf("the closed port %s is the server's", closed)
	}
	for _, tc := range []struct {
		args   string
		status int
		stderr string
	}{
		{"probe ftp://" + closed, 3, "could not open an FTP control connection"},
		{"probe ftp://" + s.Addr(), 3, "could not log in"},
		{"probe http://" + s.Addr(), 2, "bad URL"},
		{"probe -h", 0, "usage: pasvgate probe"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProbeExitStatus$")
		cmd.Env = append(os.Environ(), "PASVGATE_PROBE_CHILD=1", "PASVGATE_PROBE_ARGS="+tc.args)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		status := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			status = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if status != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("%s: status %d, stderr %q; want %d and %q", tc.args, status, stderr.String(), tc.status, tc.stderr)
		}
	}
}

// TestProbePasswordSources: the password can come from a file or the
// environment instead of the URL (where the process list shows it), from
// one source only, and only with a user.
func TestProbePasswordSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pw")
	if err := os.WriteFile(file, []byte("s3cret\r\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("a\rPORT 192,0,2,99,0,22"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  string
		want string // password, or "error"
	}{
		{[]string{"ftp://alice:urlpw@192.0.2.10"}, "", "urlpw"},
		{[]string{"--password-file", file, "ftp://alice@192.0.2.10"}, "", "s3cret"},
		{[]string{"ftp://alice@192.0.2.10"}, "envpw", "envpw"},
		{[]string{"ftp://alice@192.0.2.10"}, "", ""},
		{[]string{"--password-file", file, "ftp://alice:urlpw@192.0.2.10"}, "", "error"},
		{[]string{"ftp://alice:urlpw@192.0.2.10"}, "envpw", "error"},
		{[]string{"--password-file", file, "ftp://192.0.2.10"}, "", "error"},
		{[]string{"ftp://192.0.2.10"}, "envpw", "error"},
		{[]string{"--password-file", bad, "ftp://alice@192.0.2.10"}, "", "error"},
		{[]string{"--password-file", filepath.Join(dir, "missing"), "ftp://alice@192.0.2.10"}, "", "error"},
	} {
		t.Setenv(passwordEnv, tc.env)
		pa, err := parseProbeArgs(tc.args, io.Discard)
		got := pa.opt.Password
		if err != nil {
			got = "error"
			var ue usageError
			if !errors.As(err, &ue) {
				t.Errorf("%q env %q: %v is not a usage error", tc.args, tc.env, err)
			}
		}
		if got != tc.want {
			t.Errorf("%q env %q: password %q (err %v), want %q", tc.args, tc.env, got, err, tc.want)
		}
	}
}

// TestRunProbeTLS probes the demo server (fclairamb/ftpserverlib) with
// FTPS on, through the command's --ca and --server-name: a server that
// lets a data connection's TLS session be new.
func TestRunProbeTLS(t *testing.T) {
	ca, err := probetest.NewCA("probe cmd test CA")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert, err := ca.Issue("ftp.demo.test", []string{"ftp.demo.test", "127.0.0.1"}, now.Add(-time.Hour), now.Add(60*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := demoftpd.Start(t.Context(), demoftpd.Config{
		Listen:       "127.0.0.1:0",
		PassivePorts: [2]int{31200, 31299},
		TLS:          &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "ftp://" + srv.Addr().String()

	code, out := probeCmd(t, "--json", "--ca", caFile, "--server-name", "ftp.demo.test", url)
	var rep probe.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
		t.Fatalf("%d %v\n%s", code, err, out)
	}
	for check, want := range map[string]string{
		"tls-cert":          "ok the certificate for ftp.demo.test verifies against the CA file " + caFile,
		"tls-versions":      "ok accepts TLS 1.3, TLS 1.2; refuses TLS 1.1, TLS 1.0",
		"prot-p-data":       "ok logged in over TLS 1.3, PROT P accepted;",
		"tls-session-reuse": "ok the server does not require session reuse",
	} {
		var got string
		for _, f := range rep.Findings {
			if f.Check == check {
				got = string(f.Status) + " " + f.Message
			}
		}
		if !strings.HasPrefix(got, want) {
			t.Errorf("%s: %q, want %q...", check, got, want)
		}
	}
	if d := rep.TLS.Data; len(d) != 2 || !d[0].Resumed || d[1].Resumed || !d[0].Listed || !d[1].Listed {
		t.Errorf("data connections: %+v", d)
	}

	// Without --ca, the same certificate is unknown to the system roots;
	// the exit status still says passive FTP works.
	code, out = probeCmd(t, url)
	if code != 0 || !strings.Contains(out, "FAIL  tls-cert             the certificate for 127.0.0.1 does not verify against the system roots") {
		t.Errorf("without --ca: %d\n%s", code, out)
	}
	if code, _ := probeCmd(t, "--ca", filepath.Join(t.TempDir(), "missing.pem"), url); code != 2 {
		t.Errorf("missing CA file: %d", code)
	}
	if code, _ := probeCmd(t, "--ca", "/dev/null", url); code != 2 {
		t.Errorf("empty CA file: %d", code)
	}
}
