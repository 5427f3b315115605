package netns

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a process started inside a namespace by StartProc, stopped by
// its PID when the test ends.
type Proc struct {
	cmd  *exec.Cmd
	name string
	done chan struct{}
	err  error

	mu       sync.Mutex
	lines    []string
	maxLines int
}

// StartProc starts name inside ns, forked from a thread that entered the
// namespace, so that the PID is the program's own and not ip(8)'s. It
// keeps the process's output (stdout and stderr), its last maxLines lines
// if maxLines is positive (servers that log a line per session, in a test
// of thousands), all of it otherwise. If ready is not empty it waits (up
// to 15 s) for a line containing it. The process is stopped when tb ends.
func StartProc(tb testing.TB, ns *NS, maxLines int, ready, name string, args ...string) *Proc {
	tb.Helper()
	p := &Proc{cmd: exec.Command(name, args...), name: filepath.Base(name), done: make(chan struct{}), maxLines: maxLines}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := ns.Do(p.cmd.Start); err != nil {
		tb.Fatalf("starting %s in %s: %v", name, ns.Name, err)
	}
	seen := make(chan struct{})
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if p.lines = append(p.lines, line); p.maxLines > 0 && len(p.lines) > p.maxLines {
				p.lines = p.lines[len(p.lines)-p.maxLines:]
			}
			p.mu.Unlock()
			if ready != "" && strings.Contains(line, ready) {
				once.Do(func() { close(seen) })
			}
		}
		// Keep draining past a line too long, so the child never blocks.
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { p.err = p.cmd.Wait(); pw.Close(); close(p.done) }()
	tb.Cleanup(p.Stop)
	if ready == "" {
		return p
	}
	select {
	case <-seen:
	case <-p.done:
		tb.Fatalf("%s exited before it was ready: %v\n%s", name, p.err, p.Output())
	case <-time.After(15 * time.Second):
		tb.Fatalf("%s not ready after 15s:\n%s", name, p.Output())
	}
	return p
}

// Name is the program's base name.
func (p *Proc) Name() string { return p.name }

// Pid is the process's PID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process exited; read it only once Done is closed.
func (p *Proc) Err() error { return p.err }

// Signal sends sig to the process by its PID.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop asks the process to end (SIGTERM: pasvgate then drains and removes
// its rules) and kills it if it has not within ten seconds.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Output is what the process printed, as kept (see StartProc).
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lines) == 0 {
		return ""
	}
	return strings.Join(p.lines, "\n") + "\n"
}
