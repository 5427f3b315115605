package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	testbins "github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// nsPrefix names every network namespace these tests create.
const nsPrefix = "pgdep"

// buildVersion is the VERSION build argument the tests give the
// Dockerfile's build command.
const buildVersion = "deploytest"

// The capabilities pasvgate needs, as setpriv(1) names them. The systemd
// unit, its legacy drop-in, the Dockerfile's setcap lines and the
// Kubernetes manifests are checked against these lists, and
// TestLeastPrivilege proves them enough and each one necessary.
var (
	// capsNFT is what `pasvgate run` needs with iptables-nft: its own
	// chains (nf_tables over netlink), and port 21.
	capsNFT = []string{"net_admin", "net_bind_service"}
	// capsLegacyExtra is what iptables-legacy needs on top: a raw socket
	// for libiptc, and reading /proc/net/ip_tables_names (0440 root) and
	// opening root's xtables lock (0600) read-only.
	capsLegacyExtra = []string{"net_raw", "dac_read_search"}
)

// capBits are the bit numbers of the capabilities above (linux/capability.h).
var capBits = map[string]uint{"dac_read_search": 2, "net_bind_service": 10, "net_admin": 12, "net_raw": 13}

// Unprivileged ids the binaries run as: nobody, as a systemd User= would
// be, and the container image's USER.
const (
	nobodyUID    = 65534
	containerUID = 65532
)

var bins struct {
	once           sync.Once
	dir            string
	pasvgate, ftpd string
	err            error
}

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Leftovers of a test binary that was killed before its cleanups.
		_ = netns.Sweep(nsPrefix)
	}
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// build compiles pasvgate with the very command the Dockerfile's build
// stage runs (so every test here checks the binary the image ships), and
// the test FTP server. The directory is world-readable: the binaries run
// as unprivileged users.
func build(t testing.TB) (pasvgate, ftpd string) {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "pasvgate-deploy-")
		if bins.err != nil {
			return
		}
		if bins.err = os.Chmod(bins.dir, 0o755); bins.err != nil {
			return
		}
		bins.pasvgate = filepath.Join(bins.dir, "pasvgate")
		bins.ftpd = filepath.Join(bins.dir, "testftpd")
		var line string
		if line, bins.err = dockerBuildCommand(bins.pasvgate); bins.err != nil {
			return
		}
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("the Dockerfile's build command %q: %v\n%s", line, err, out)
			return
		}
		bins.err = testbins.Compile(bins.ftpd, testbins.FTPDPkg)
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.pasvgate, bins.ftpd
}

// dockerBuildCommand returns the shell command of the Dockerfile's RUN
// that builds pasvgate, with the build argument VERSION set to
// buildVersion and the output going to out.
func dockerBuildCommand(out string) (string, error) {
	df, err := parseDockerfile("container/Dockerfile")
	if err != nil {
		return "", err
	}
	var runs []string
	for _, in := range df {
		if in.Cmd == "RUN" && strings.Contains(in.Args, "go build") {
			runs = append(runs, in.Args)
		}
	}
	if len(runs) != 1 {
		return "", fmt.Errorf("container/Dockerfile: want one RUN with go build, found %d", len(runs))
	}
	line := strings.ReplaceAll(runs[0], "${VERSION}", buildVersion)
	o := regexp.MustCompile(`-o\s+\S+`)
	if len(o.FindAllString(line, -1)) != 1 {
		return "", fmt.Errorf("container/Dockerfile: the go build has no single -o: %s", runs[0])
	}
	return o.ReplaceAllLiteralString(line, "-o "+out), nil
}

var help struct {
	once  sync.Once
	text  string
	flags map[string]bool
	err   error
}

// runFlags returns the flags that `pasvgate run -h` prints: the names every
// flag and config key in deploy/ is checked against, so that a renamed or
// removed flag breaks these tests instead of a deployment.
func runFlags(t testing.TB) map[string]bool {
	t.Helper()
	pasvgate, _ := build(t)
	help.once.Do(func() {
		// -h exits non-zero in some versions; the text is what counts.
		out, _ := exec.Command(pasvgate, "run", "-h").CombinedOutput()
		help.text = string(out)
		help.flags = map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
			help.flags[m[1]] = true
		}
		if len(help.flags) < 5 || !help.flags["listen"] || !help.flags["config"] {
			help.err = fmt.Errorf("pasvgate run -h lists no usable flags:\n%s", out)
		}
	})
	if help.err != nil {
		t.Fatal(help.err)
	}
	return help.flags
}

// flagDefault returns the default `pasvgate run -h` prints for a flag.
func flagDefault(t testing.TB, name string) string {
	t.Helper()
	runFlags(t)
	m := regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(name) + `\b.*\n\s+.*\(default "?([^")]*)"?\)`).FindStringSubmatch(help.text)
	if m == nil {
		t.Fatalf("pasvgate run -h shows no default for --%s", name)
	}
	return m[1]
}

// configKeys returns the keys a config file may have: every flag but
// --config itself.
func configKeys(t testing.TB) []string {
	var keys []string
	for f := range runFlags(t) {
		if f != "config" {
			keys = append(keys, f)
		}
	}
	slices.Sort(keys)
	return keys
}

// flagsIn returns the flag names used in args ("--a=b" and "--a b" give a).
func flagsIn(args []string) []string {
	var fs []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			fs = append(fs, name)
		}
	}
	return fs
}

// requireTools skips the test unless every tool is installed.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

// capList is caps as setpriv takes them: "-all,+a,+b".
func capList(caps []string) string {
	s := "-all"
	for _, c := range caps {
		s += ",+" + c
	}
	return s
}

// capMask is caps as /proc/PID/status shows them.
func capMask(t testing.TB, caps []string) uint64 {
	var m uint64
	for _, c := range caps {
		b, ok := capBits[c]
		if !ok {
			t.Fatalf("unknown capability %q", c)
		}
		m |= 1 << b
	}
	return m
}

// asNobody is the setpriv(1) command line that runs a program the way the
// systemd unit does: uid and gid nobody, no supplementary groups,
// no_new_privs, and exactly caps, as ambient capabilities (which the
// iptables binaries it runs inherit) and as the bounding set.
func asNobody(caps []string) []string {
	c := capList(caps)
	return []string{"setpriv", fmt.Sprintf("--reuid=%d", nobodyUID), fmt.Sprintf("--regid=%d", nobodyUID),
		"--clear-groups", "--no-new-privs", "--inh-caps=" + c, "--ambient-caps=" + c, "--bounding-set=" + c}
}

// asContainer is the command line prefix that runs a program the way a
// container runtime runs the image as a non-root USER: no ambient or
// inheritable capabilities, the bounding set the container was given, and
// no_new_privs only if asked (allowPrivilegeEscalation: false). Docker
// also empties the permitted and effective sets of a non-root container
// before its first exec (moby/moby#36587, #45491), which matters under
// no_new_privs, where an exec may grant only what was permitted before
// it. setpriv keeps them full, so it execs env, a program without file
// capabilities, whose exec by a non-root user empties them the same way.
func asContainer(bounding []string, noNewPrivs bool) []string {
	a := []string{"setpriv", fmt.Sprintf("--reuid=%d", containerUID), fmt.Sprintf("--regid=%d", containerUID),
		"--clear-groups", "--inh-caps=-all", "--bounding-set=" + capList(bounding)}
	if noNewPrivs {
		a = append(a, "--no-new-privs")
	}
	return append(a, "env")
}

// proc is a process started in a namespace. Its cleanup kills it by PID.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

// start starts cmd and waits until a line of its output contains ready
// (empty: do not wait). It fails the test if the process exits first.
func start(t testing.TB, cmd *exec.Cmd, ready string) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := make(chan struct{})
	read := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if ready != "" && strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(seen) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	// done closes once the output is all read, so output() is complete.
	go func() { p.err = cmd.Wait(); pw.Close(); <-read; close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	if ready == "" {
		return p
	}
	select {
	case <-seen:
	case <-p.done:
		t.Fatalf("%s exited before it was ready (%v):\n%s", strings.Join(cmd.Args, " "), p.err, p.output())
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready after 20s:\n%s", strings.Join(cmd.Args, " "), p.output())
	}
	return p
}

// waitFor waits until the output has s (true), or the process exits or d
// passes (false).
func (p *proc) waitFor(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if strings.Contains(p.output(), s) {
			return true
		}
		select {
		case <-p.done:
			return strings.Contains(p.output(), s)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// signal sends sig to the process and waits for it to exit; it returns
// the exit error.
func (p *proc) stop(t testing.TB, pid int, sig syscall.Signal) error {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("signalling %d: %v", pid, err)
	}
	return p.wait(t, 45*time.Second)
}

func (p *proc) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s did not exit within %v:\n%s", strings.Join(p.cmd.Args, " "), d, p.output())
		return nil
	}
}

// exitCode is the exit status in err (0 for nil, -1 if it is not one).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// checkPrivileges asserts that process pid runs as uid, with exactly caps
// effective and permitted, bounding as its bounding set and ambient as
// its ambient set, and no supplementary groups.
func checkPrivileges(t testing.TB, pid, uid int, caps, bounding, ambient []string) {
	t.Helper()
	st := procStatus(t, pid)
	for _, k := range []string{"Uid", "Gid"} {
		for _, f := range strings.Fields(st[k]) {
			if f != strconv.Itoa(uid) {
				t.Errorf("%s: %s, want %d everywhere", k, st[k], uid)
				break
			}
		}
	}
	for k, want := range map[string][]string{"CapEff": caps, "CapPrm": caps, "CapBnd": bounding, "CapAmb": ambient} {
		got, err := strconv.ParseUint(st[k], 16, 64)
		if m := capMask(t, want); err != nil || got != m {
			t.Errorf("%s: %s, want %016x %v", k, st[k], m, want)
		}
	}
	if g := st["Groups"]; g != "" {
		t.Errorf("supplementary groups %q, want none", g)
	}
}

// sharedDir returns a new directory that every user can reach and read
// (t.TempDir's parent is private to root), removed when the test ends.
func sharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgdep-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nsCommand is a command inside ns, with extra environment variables,
// started in / so that an unprivileged user can run it.
func nsCommand(ns *netns.NS, env []string, argv ...string) *exec.Cmd {
	cmd := ns.Command(context.Background(), argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = "/"
	return cmd
}
