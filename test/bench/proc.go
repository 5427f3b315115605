package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// logLine is one line a process printed, stamped when the bench read it.
// The stamp is what lines a gateway's log up with the client's clock: both
// run on this machine's wall clock.
type logLine struct {
	at   time.Time
	text string
}

// proc is a long-running process in a namespace (an FTP server, pasvgate).
// It is stopped by its own PID, never by name.
type proc struct {
	name string
	cmd  *exec.Cmd
	rd   *os.File

	mu    sync.Mutex
	lines []logLine

	reading sync.WaitGroup
	done    chan struct{}
	err     error // set before done closes
}

// startProc starts name in ns through `ip netns exec`, which execs the
// program in place, so the PID is the program's own.
func startProc(ns *netns.NS, name string, args ...string) (*proc, error) {
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Stdout, cmd.Stderr = wr, wr
	// Its own process group, so a Ctrl-C at the terminal reaches only the
	// bench, which then stops everything in order; and SIGKILL if the
	// bench itself dies, so nothing outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		rd.Close()
		wr.Close()
		return nil, fmt.Errorf("starting %s in %s: %w", name, ns.Name, err)
	}
	wr.Close()
	p := &proc{name: name, cmd: cmd, rd: rd, done: make(chan struct{})}
	p.reading.Add(1)
	go p.read()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) read() {
	defer p.reading.Done()
	sc := bufio.NewScanner(p.rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := logLine{at: time.Now(), text: sc.Text()}
		p.mu.Lock()
		p.lines = append(p.lines, l)
		p.mu.Unlock()
	}
}

// output returns everything the process printed so far.
func (p *proc) output() []logLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]logLine(nil), p.lines...)
}

// outputText is output as one string, for error messages.
func (p *proc) outputText() string {
	var b strings.Builder
	for _, l := range p.output() {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return tail(b.String(), 3000)
}

// pid is the process's PID.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace for the process to exit, then
// kills it. It returns the process's exit error, or an error if it had to
// be killed. Calling it again is harmless.
func (p *proc) stop(grace time.Duration) error {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	var err error
	select {
	case <-p.done:
		err = p.err
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		err = fmt.Errorf("%s (pid %d) ignored SIGTERM for %v and was killed", p.name, p.pid(), grace)
	}
	// Children (vsftpd's sessions) may still hold the pipe; closing our end
	// ends the reader either way.
	p.rd.Close()
	p.reading.Wait()
	return err
}

// run runs name with args in ns (through `ip netns exec`), feeding it
// stdin, bounded by ctx and a minute, and returns its standard output.
func run(ctx context.Context, ns *netns.NS, stdin, name string, args ...string) (string, error) {
	return runLimit(ctx, time.Minute, ns, stdin, name, args...)
}

// runLimit is run with another bound than a minute.
func runLimit(ctx context.Context, limit time.Duration, ns *netns.NS, stdin, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("in %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return stdout.String(), nil
}

// waitBanner waits until an FTP server (or a proxy in front of one)
// answers at addr from inside ns with its 220 greeting, then says QUIT. A
// proxy's 220 is relayed from its upstream, so this also proves the
// upstream is reachable.
func waitBanner(ctx context.Context, ns *netns.NS, addr string, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var last error
	for {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before it answered on %s: %v\n%s", p.name, addr, p.err, p.outputText())
		}
		last = greet(ctx, ns, addr)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no FTP greeting on %s from %s: %w", addr, ns.Name, errors.Join(last, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func greet(ctx context.Context, ns *netns.NS, addr string) error {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := ns.Dial(dctx, "tcp", "", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	_, _ = io.WriteString(c, "QUIT\r\n")
	// Wait for the server's side to end the session, so that the greeting
	// leaves no half-open session behind in the measurement that follows.
	_, _ = io.Copy(io.Discard, c)
	return nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
