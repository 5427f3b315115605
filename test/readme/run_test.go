package readme

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/lab"
)

// nsPrefix names every lab namespace of this package.
const nsPrefix = "rdm-"

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Leftovers of a run that was killed before its clean-ups.
		_ = lab.SweepPrefix(nsPrefix)
	}
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// pathEnv returns PATH with the directory of the built pasvgate first, so
// that a README line's `pasvgate` is the binary under test.
func pathEnv(t testing.TB) string {
	t.Helper()
	pasvgate, _ := bins.Build(t)
	return "PATH=" + filepath.Dir(pasvgate) + ":" + os.Getenv("PATH")
}

// gatewayLab is the README's gateway (test/lab's New, named with
// nsPrefix) with vsftpd, at its defaults, on 192.0.2.10:21.
func gatewayLab(t *testing.T, opt lab.Options) (*lab.Lab, *lab.Server) {
	t.Helper()
	opt.NSPrefix = nsPrefix
	l := lab.New(t, opt)
	srv, err := l.StartServer(t.Context(), lab.Vsftpd, lab.ServerOptions{})
	if errors.Is(err, lab.ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l, srv
}

// routerLab is the README's router (test/lab's NewRouter: LAN on lan0,
// public address 203.0.113.1 on wan0), with vsftpd outside on
// 203.0.113.20:21.
func routerLab(t *testing.T) (*lab.Lab, *lab.Server) {
	t.Helper()
	l := lab.NewRouter(t, lab.RouterOptions{NSPrefix: nsPrefix})
	srv, err := l.StartServer(t.Context(), lab.Vsftpd, lab.ServerOptions{})
	if errors.Is(err, lab.ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l, srv
}

// start runs a long-running README command in namespace ns, exactly as
// written, from the repository's top, and waits for pasvgate's start-up
// line. exec keeps the process pasvgate itself, so that a signal reaches it.
func start(t *testing.T, l *lab.Lab, ns string, c command) *lab.Proc {
	t.Helper()
	_, root := readmeDoc(t)
	p, err := l.Start(ns, "env", pathEnv(t), "sh", "-c", "cd "+root+" && exec "+c.raw)
	if err != nil {
		t.Fatal(err)
	}
	waitStarted(t, p, c.key)
	return p
}

// waitStarted waits up to 20 s for pasvgate's start-up line.
func waitStarted(t *testing.T, p *lab.Proc, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.Output(), "pasvgate started") {
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited before it started (%v):\n%s", what, err, p.Output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no start-up line within 20s:\n%s", what, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks that the process exits 0 within d.
func stop(t *testing.T, p *lab.Proc, what string, d time.Duration) {
	t.Helper()
	t0 := time.Now()
	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatalf("signalling %s: %v", what, err)
	}
	select {
	case <-p.Done():
	case <-time.After(d):
		t.Fatalf("%s: still running %v after SIGTERM:\n%s", what, d, p.Output())
	}
	if _, err := p.Exited(); err != nil {
		t.Fatalf("%s after SIGTERM: %v, want exit 0:\n%s", what, err, p.Output())
	}
	t.Logf("%s: SIGTERM, exit 0 after %v", what, time.Since(t0).Round(time.Millisecond))
}

// run runs a short README command in namespace ns, exactly as written,
// from the repository's top, and returns its standard output and exit
// status.
func run(t *testing.T, l *lab.Lab, ns string, c command) (string, int) {
	t.Helper()
	_, root := readmeDoc(t)
	out, err := l.Exec(t.Context(), ns, "env", pathEnv(t), "sh", "-c", "cd "+root+" && "+c.raw)
	return out, exitStatus(t, c.key, err)
}

// exitStatus is the exit status err carries; any other error fails t.
func exitStatus(t testing.TB, what string, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", what, err)
	return -1
}

// mustRun is run that wants exit 0.
func mustRun(t *testing.T, l *lab.Lab, ns string, c command) string {
	t.Helper()
	out, code := run(t, l, ns, c)
	if code != 0 {
		t.Fatalf("%s: exit %d, want 0:\n%s", c.key, code, out)
	}
	return out
}

// download has curl, told to trust the 227 address, fetch the server's
// file from host (in passive mode, or active with PORT) through whatever
// the lab runs, and checks what it got.
func download(t *testing.T, l *lab.Lab, srv *lab.Server, host string, active, extended bool) {
	t.Helper()
	local := filepath.Join(l.Dir, fmt.Sprintf("got-%d", time.Now().UnixNano()))
	tr := lab.Transfer{NS: l.Client, Host: host, User: srv.User, Password: srv.Password,
		Op: lab.Get, Remote: lab.DataFile, Local: local, Active: active, EPSV: extended, Timeout: 30 * time.Second}
	res, err := lab.Curl{}.Run(t.Context(), l, tr)
	mode := map[[2]bool]string{{false, false}: "PASV", {false, true}: "EPSV", {true, false}: "PORT", {true, true}: "EPRT"}[[2]bool{active, extended}]
	if err != nil {
		t.Fatalf("curl %s download from %s: %v", mode, host, err)
	}
	if bad := srv.CheckOutcome(lab.Get, res, local, "", "", ""); bad != "" {
		t.Fatalf("curl %s download from %s: %s", mode, host, bad)
	}
	os.Remove(local)
	t.Logf("curl %s download of %d bytes from %s: same SHA-256 as the server's file", mode, lab.DataSize, host)
}

// mappingLeft matches a mapping rule or element in iptables-save or nft
// list ruleset output: each carries "created=".
var mappingLeft = regexp.MustCompile(`(?m)^.*created=.*$`)

// kernelState returns what iptables-save (both families) and nft list
// ruleset show in namespace ns.
func kernelState(t *testing.T, l *lab.Lab, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, argv := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := l.Exec(context.Background(), ns, argv[0], argv[1:]...)
		if err != nil {
			t.Fatalf("%s: %v", argv[0], err)
		}
		b.WriteString(out)
	}
	return b.String()
}

// checkNoMappings runs the README's `pasvgate rules list` in ns and wants
// it empty, and no mapping in the kernel either.
func checkNoMappings(t *testing.T, l *lab.Lab, ns string) {
	t.Helper()
	if out := mustRun(t, l, ns, readmeCommand(t, cmdRulesList)); out != "" {
		t.Fatalf("%s after the stop: %q, want nothing", cmdRulesList, out)
	}
	if left := mappingLeft.FindAllString(kernelState(t, l, ns), -1); len(left) > 0 {
		t.Fatalf("mappings left in the kernel:\n%s", strings.Join(left, "\n"))
	}
}
