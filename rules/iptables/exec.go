package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// Kinds of failure of the iptables binaries, told apart by classify. An
// *ExecError wraps the kind of its failure, so errors.Is works on any
// error this package returns.
var (
	// ErrLocked: the binary gave up waiting for the xtables lock after
	// Config.LockTimeout. Nothing was changed.
	ErrLocked = errors.New("xtables lock held by another process")
	// ErrNotExist: a chain, rule or target the command names does not
	// exist.
	ErrNotExist = errors.New("chain or rule does not exist")
)

// IsLocked reports whether err is a binary giving up on the xtables lock.
func IsLocked(err error) bool { return errors.Is(err, ErrLocked) }

// IsNotExist reports whether err is a binary saying that a chain, rule or
// target does not exist.
func IsNotExist(err error) bool { return errors.Is(err, ErrNotExist) }

// failedLineRE finds the input line iptables-restore blames: "line 5
// failed" (both backends) or "Error occurred at line: 3" (a parse error).
var failedLineRE = regexp.MustCompile(`(?:line |Error occurred at line: )([0-9]{1,6})`)

// classify is the one place that reads the English error text of
// iptables, ip6tables and their -restore and -save variants (legacy and
// nft, 1.8.x), including text that go-iptables passes on. It returns the
// input line that iptables-restore blamed, or 0, and the kind of failure:
// ErrLocked, rules.ErrExists, ErrNotExist, or nil when it cannot tell.
//
// Known limits: iptables-legacy-restore says only "line N failed" when a
// -D or -C finds nothing, so callers never rely on classify to learn that
// a rule is missing; they read the rules back with iptables-save instead.
func classify(out string) (line int, kind error) {
	if m := failedLineRE.FindStringSubmatch(out); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	switch {
	case strings.Contains(out, "holding the xtables lock"):
		// "Another app is currently holding the xtables lock. Stopped
		// waiting after 5s."
		kind = ErrLocked
	case strings.Contains(out, "already exists"):
		// "iptables: Chain already exists." and restore's "line N failed:
		// Chain already exists."
		kind = rules.ErrExists
	case strings.Contains(out, "does not exist"),
		strings.Contains(out, "does a matching rule exist"),
		strings.Contains(out, "No chain/target/match by that name"),
		strings.Contains(out, "Couldn't load target"):
		// "Chain 'X' does not exist" (nft), "Bad rule (does a matching
		// rule exist in that chain?)", "No chain/target/match by that
		// name.", "Couldn't load target `X':No such file or directory"
		// (legacy, a jump to a missing chain).
		kind = ErrNotExist
	}
	return line, kind
}

// ExecError is a failed run of an iptables binary.
type ExecError struct {
	// Cmd is the command line.
	Cmd string
	// Output is what the binary wrote to stdout and stderr.
	Output string
	// Err is the exec failure: an exit status, or the context's error when
	// the run was cut short.
	Err error
}

// Error returns the command line, how it failed and its output.
func (e *ExecError) Error() string {
	return fmt.Sprintf("running %s: %v: %s", e.Cmd, e.Err, strings.TrimSpace(e.Output))
}

// Unwrap returns the exec failure and, when classify can tell, the kind of
// failure (ErrLocked, rules.ErrExists, ErrNotExist).
func (e *ExecError) Unwrap() []error {
	if _, k := classify(e.Output); k != nil {
		return []error{e.Err, k}
	}
	return []error{e.Err}
}

// run runs a binary with stdin as its input, bounded by ctx and by
// Config.ExecTimeout, and returns its stdout. The binary runs in its own
// process group, which is killed as a whole when the bound is hit, so a
// wrapper script's children do not outlive it.
func (b *Backend) run(ctx context.Context, stdin, path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	b.execs.Add(1)
	err := cmd.Run()
	b.log.Debug("ran", "cmd", filepath.Base(path), "args", args, "took", time.Since(start), "err", err)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return "", &ExecError{
			Cmd:    strings.Join(cmd.Args, " "),
			Output: stdout.String() + stderr.String(),
			Err:    err,
		}
	}
	return stdout.String(), nil
}

// restore feeds text to the family's iptables-restore without flushing
// anything else, waiting at most Config.LockTimeout for the xtables lock.
func (b *Backend) restore(ctx context.Context, f *family, text string) error {
	_, err := b.run(ctx, text, f.restorePath, "--noflush", "--wait", b.waitArg())
	if err != nil {
		var ee *ExecError
		if errors.As(err, &ee) {
			ee.Output = withFailedLine(ee.Output, text)
		}
		return err
	}
	return nil
}

// save returns the family's whole iptables-save output, parsed.
func (b *Backend) save(ctx context.Context, f *family) (*saved, error) {
	out, err := b.run(ctx, "", f.savePath)
	if err != nil {
		return nil, err
	}
	return parseSave(out)
}

// withFailedLine adds the input line that iptables-restore blamed to its
// output, so that the error says which rule failed.
func withFailedLine(out, input string) string {
	n, _ := classify(out)
	lines := strings.Split(input, "\n")
	if n < 1 || n > len(lines) {
		return out
	}
	return strings.TrimSpace(out) + fmt.Sprintf(" [input line %d: %s]", n, lines[n-1])
}
