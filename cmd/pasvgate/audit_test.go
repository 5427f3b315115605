package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// auditFixtures are the captures recorded in the lab (test/audit), whose
// golden reports the command must print byte for byte, and the exit
// status it must give for each.
var auditFixtures = []struct {
	name string
	exit int
}{
	{"healthy", 0}, {"misconfigured", 1}, {"split227", 0}, {"multiline227", 0}, {"authtls", 0}, {"blocked", 1},
}

// exitCode is the status realMain gives for err.
func exitCode(err error) int {
	var ue usageError
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return 2
	}
	return 1
}

// TestAuditGolden runs `pasvgate audit FIXTURE.pcap` (and with --json,
// before and after the file name) in test/testdata, as the golden reports
// were made, and compares what it prints and its exit status.
func TestAuditGolden(t *testing.T) {
	t.Chdir(filepath.Join("..", "..", "test", "testdata"))
	for _, fx := range auditFixtures {
		name := fx.name
		for _, args := range [][]string{
			{name + ".pcap"},
			{"--json", name + ".pcap"},
			{name + ".pcap", "--json"},
		} {
			ext := ".txt"
			if len(args) > 1 {
				ext = ".json"
			}
			want, err := os.ReadFile(name + ext)
			if err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			if err := runAudit(context.Background(), args, nil, &stdout, &stderr); exitCode(err) != fx.exit {
				t.Errorf("audit %v: exit %d (%v), want %d", args, exitCode(err), err, fx.exit)
			}
			if !bytes.Equal(stdout.Bytes(), want) {
				t.Errorf("audit %v differs from %s%s:\n%s", args, name, ext, stdout.String())
			}
			if stderr.Len() > 0 {
				t.Errorf("audit %v wrote to stderr: %s", args, stderr.String())
			}
		}
	}
}

// TestAuditStdin reads the capture from standard input ("-").
func TestAuditStdin(t *testing.T) {
	pcap, err := os.ReadFile(filepath.Join("..", "..", "test", "testdata", "misconfigured.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err = runAudit(context.Background(), []string{"--ports", "21", "-"}, bytes.NewReader(pcap), &stdout, &stderr)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "3 problems found") {
		t.Errorf("exit %d: %v", exitCode(err), err)
	}
	for _, want := range []string{"pasvgate audit of standard input", "BAD ADDRESS", "192.0.2.99"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("no %q in:\n%s", want, stdout.String())
		}
	}
	// On other ports the same capture holds no session: exit 3.
	stdout.Reset()
	err = runAudit(context.Background(), []string{"--ports", "2121,990", "-"}, bytes.NewReader(pcap), &stdout, &stderr)
	if exitCode(err) != 3 || !strings.Contains(err.Error(), "no FTP control session on ports 2121,990") {
		t.Errorf("exit %d: %v", exitCode(err), err)
	}
	if !strings.Contains(stdout.String(), "result: no FTP control session in this capture") {
		t.Errorf("--ports 2121,990:\n%s", stdout.String())
	}
}

// TestAuditUsage: bad invocations are usage errors (exit 2) that name
// what is wrong; an unreadable capture is a failure (exit 1); -h is not
// an error.
func TestAuditUsage(t *testing.T) {
	dir := t.TempDir()
	notPcap := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notPcap, []byte("not a capture"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string // in the message
		code int
	}{
		{nil, "give one capture FILE", 2},
		{[]string{"a.pcap", "b.pcap"}, "give one capture FILE", 2},
		{[]string{"--iface", "eth0"}, "--duration", 2},
		{[]string{"--iface", "eth0", "--duration", "-1s"}, "--duration", 2},
		{[]string{"--iface", "eth0", "--duration", "1s", "a.pcap"}, "exclude each other", 2},
		{[]string{"--duration", "1s", "a.pcap"}, "--duration applies only with --iface", 2},
		{[]string{"--write", "x.pcap", "a.pcap"}, "--write applies only with --iface", 2},
		{[]string{"--ports", "21,0", "a.pcap"}, "--ports", 2},
		{[]string{"--ports", "21,ftp", "a.pcap"}, "--ports", 2},
		{[]string{"--ports", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", "a.pcap"}, "at most 16", 2},
		{[]string{"--max-sessions", "0", "a.pcap"}, "--max-sessions", 2},
		{[]string{"--bogus", "a.pcap"}, "bogus", 2},
		{[]string{filepath.Join(dir, "missing.pcap")}, "no such file", 1},
		{[]string{notPcap}, "not a pcap or pcapng file", 1},
	} {
		var stdout, stderr bytes.Buffer
		err := runAudit(context.Background(), c.args, strings.NewReader(""), &stdout, &stderr)
		if err == nil {
			t.Errorf("audit %q: no error", c.args)
			continue
		}
		code := exitCode(err)
		if code != c.code || !strings.Contains(err.Error()+stderr.String(), c.want) {
			t.Errorf("audit %q: exit %d, %v (stderr %q); want exit %d mentioning %q", c.args, code, err, stderr.String(), c.code, c.want)
		}
		if stdout.Len() > 0 {
			t.Errorf("audit %q printed a report: %s", c.args, stdout.String())
		}
	}
	var stderr bytes.Buffer
	if err := runAudit(context.Background(), []string{"-h"}, nil, &bytes.Buffer{}, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	if !strings.Contains(stderr.String(), "--iface IFACE --duration D") {
		t.Errorf("-h prints no usage: %s", stderr.String())
	}
	// Through main's dispatch, the exit statuses the README promises.
	if got := realMain([]string{"audit", "--ports", "x"}); got != 2 {
		t.Errorf("realMain(audit --ports x) = %d, want 2", got)
	}
	if got := realMain([]string{"audit", filepath.Join(dir, "missing.pcap")}); got != 1 {
		t.Errorf("realMain(audit missing.pcap) = %d, want 1", got)
	}
}

// TestAuditLiveNeedsInterface: a live capture on an interface that does
// not exist fails (exit 1) before printing anything. Without root the
// socket is refused first, which fails the same way.
func TestAuditLiveNeedsInterface(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := runAudit(context.Background(), []string{"--iface", "pgaudit-none0", "--duration", "1s"}, nil, &stdout, &stderr)
	if exitCode(err) != 1 || stdout.Len() > 0 {
		t.Errorf("err %v, stdout %q", err, stdout.String())
	}
}
