package readme

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// local runs a README command on the host, exactly as written, from the
// repository's top, bounded by d; it returns standard output, standard
// error and the exit status.
func local(t *testing.T, c command, d time.Duration) (string, string, int) {
	t.Helper()
	_, root := readmeDoc(t)
	env := append(os.Environ(), pathEnv(t))
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", c.raw)
	cmd.Dir = root
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s: not done within %v:\n%s\n%s", c.key, d, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String(), exitStatus(t, c.key, err)
}

// TestVersionDemo runs `pasvgate version` and `pasvgate demo`.
func TestVersionDemo(t *testing.T) {
	out, errOut, code := local(t, readmeCommand(t, cmdVersion), 10*time.Second)
	if code != 0 || !regexp.MustCompile(`^pasvgate \S+\n$`).MatchString(out) {
		t.Errorf("%s: exit %d, %q %q; want one line \"pasvgate VERSION\" and exit 0", cmdVersion, code, out, errOut)
	}
	out, errOut, code = local(t, readmeCommand(t, cmdDemo), 30*time.Second)
	if code != 0 {
		t.Fatalf("%s: exit %d:\n%s%s", cmdDemo, code, out, errOut)
	}
	server := regexp.MustCompile(`server's reply: +227 Entering Passive Mode \((\d+,\d+,\d+,\d+),`).FindStringSubmatch(out)
	client := regexp.MustCompile(`client sees \(rewritten\): 227 Entering Passive Mode \((\d+,\d+,\d+,\d+),`).FindStringSubmatch(out)
	if server == nil || client == nil || server[1] == client[1] {
		t.Errorf("%s does not show a 227 and its rewrite to another address:\n%s", cmdDemo, out)
	}
	for _, want := range []string{"mapping while the session was open: ", "mappings left after the session: 0\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s: no %q in:\n%s", cmdDemo, want, out)
		}
	}
}

// TestAudit runs the README's audit command and compares what it prints
// with the output the README quotes.
func TestAudit(t *testing.T) {
	c := readmeCommand(t, cmdAudit)
	if c.output == "" {
		t.Fatalf("README.md:%d: %s has no output block after it", c.line, c.key)
	}
	out, errOut, code := local(t, c, 30*time.Second)
	if code != 1 {
		t.Errorf("%s: exit %d, want 1 (problems found):\n%s", c.key, code, errOut)
	}
	if out != c.output {
		t.Errorf("%s prints what the README does not quote:\n%s", c.key, lineDiff(c.output, out))
	}
}

// lineDiff shows the lines where want and got differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var x, y string
		if i < len(w) {
			x = w[i]
		}
		if i < len(g) {
			y = g[i]
		}
		if x != y {
			b.WriteString("README: " + x + "\n got:   " + y + "\n")
		}
	}
	return b.String()
}

// portNumbers matches what the kernel or the server picks afresh each
// run: ports (four or five digits) and the port bytes of a 227 reply.
var portNumbers = regexp.MustCompile(`\b\d{4,5}\b|,\d{1,3},\d{1,3}\)`)

// dialFailure matches why a dial to an address nobody has failed: on the
// gateway's own link, the neighbour lookup gives up after three seconds,
// the same moment the probe's 3 s timeout ends, so either may come first.
var dialFailure = regexp.MustCompile(`\((?:no route to host|timed out after \d+s)\)`)

// maskProbe leaves free, in probe's report, what changes from run to run.
func maskProbe(s string) string {
	return portNumbers.ReplaceAllString(dialFailure.ReplaceAllString(s, "(unreachable)"), "N")
}

// TestProbe runs the README's probe commands on the README's gateway:
// the first against vsftpd with its defaults, the second against the same
// server advertising 192.0.2.99, as the README says. Each must print what
// the README quotes after it, port numbers left free.
func TestProbe(t *testing.T) {
	t.Parallel()
	cs := readmeCommands(t, cmdProbe)
	if len(cs) != 2 {
		t.Fatalf("README.md shows %q %d times, want 2 (a healthy server, a misconfigured one)", cmdProbe, len(cs))
	}
	l := lab.New(t, lab.Options{NSPrefix: nsPrefix})
	for i, tc := range []struct {
		opt  lab.ServerOptions
		exit int
	}{
		{lab.ServerOptions{}, 0},
		{lab.ServerOptions{PublicAddr: "192.0.2.99"}, 1},
	} {
		c := cs[i]
		if c.output == "" {
			t.Fatalf("README.md:%d: %s has no output block after it", c.line, c.key)
		}
		srv, err := l.StartServer(t.Context(), lab.Vsftpd, tc.opt)
		if errors.Is(err, lab.ErrMissing) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		out, code := run(t, l, l.GW, c)
		if code != tc.exit {
			t.Errorf("README.md:%d: %s: exit %d, want %d:\n%s", c.line, c.key, code, tc.exit, out)
		}
		if maskProbe(out) != maskProbe(c.output) {
			t.Errorf("README.md:%d: %s prints what the README does not quote (port numbers aside):\n%s", c.line, c.key, lineDiff(maskProbe(c.output), maskProbe(out)))
		}
		srv.Proc.Stop()
	}
}

// TestMakeDemo runs `make demo`, which builds its own namespaces, and
// checks its verdict and that it left none of them.
func TestMakeDemo(t *testing.T) {
	lab.RequireRoot(t)
	t.Parallel()
	out, errOut, code := local(t, readmeCommand(t, cmdMakeDemo), 3*time.Minute)
	if code != 0 || !strings.Contains(out, "demo: OK") {
		t.Fatalf("%s: exit %d:\n%s\n%s", cmdMakeDemo, code, out, errOut)
	}
	for _, want := range []string{"backend=nftables", "host firewall:            -A FORWARD", "server said:", "client saw (rewritten):",
		"mapping while it lived:   ", "`pasvgate rules list` is empty"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s: no %q in:\n%s", cmdMakeDemo, want, out)
		}
	}
	ns, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`pgdemo-\d+-`).FindAllString(string(ns), -1); len(m) > 0 {
		// Another run's could be alive; the demo's own names carry its
		// shell's pid, which is gone once it exits.
		for _, n := range m {
			pid := strings.TrimSuffix(strings.TrimPrefix(n, "pgdemo-"), "-")
			if _, err := os.Stat("/proc/" + pid); err != nil {
				t.Errorf("%s left namespace %s…", cmdMakeDemo, n)
			}
		}
	}
}

// TestMakeTest checks, without running it, that `make test` runs this
// package: its go test covers ./... with a timeout.
func TestMakeTest(t *testing.T) {
	readmeCommand(t, cmdMakeTest)
	_, root := readmeDoc(t)
	b, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	target := regexp.MustCompile(`(?ms)^test:[^\n]*\n((?:\t[^\n]*\n)+)`).FindSubmatch(b)
	if target == nil || !regexp.MustCompile(`\$\(GO\) test [^\n]*-timeout \S+ [^\n]*\./\.\.\.`).Match(target[1]) {
		t.Fatalf("the Makefile's test target runs no go test -timeout ... ./...:\n%s", target)
	}
}

// staticELF reports whether the file at path is an ELF executable with no
// interpreter (statically linked).
func staticELF(t *testing.T, path string) bool {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
