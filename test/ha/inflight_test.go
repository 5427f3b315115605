package ha

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Shaping of the in-flight test: a 2 MiB download at 384 KiB/s lasts
// about 5.5 s; the master dies 2.5 s into it.
const (
	inflightRate = 384 << 10
	inflightSize = 2 << 20
	inflightKill = 2500 * time.Millisecond
	inflightFile = "big.bin"
)

// A client variant of the in-flight test: a command line in the client
// namespace, and how the master dies.
type inflightCase struct {
	name string
	kill string // links or processes
	cmd  func(p *pair, local string) []string
}

// TestInflightTransfer starts a download that lasts about 5.5 s, kills the
// master 2.5 s into it, and records what arrived: the bytes, whether the
// file is byte-exact, and the client's exit status and message. Asserted:
// that conntrackd gave the backup the data connection before the kill,
// with pasvgate's conntrack mark (the entry its FORWARD accept needs).
// Logged, not asserted: whether the client ended with the whole file,
// since that depends on the client's reaction to its lost control
// connection, which is what this test documents.
func TestInflightTransfer(t *testing.T) {
	p := newPair(t, inflightRate)
	sum, err := lab.WriteRandomFile(filepath.Join(p.srv.Root, inflightFile), inflightSize)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("ftp://%s/%s", publicVIP, inflightFile)
	curl := func(extra ...string) func(p *pair, local string) []string {
		return func(p *pair, local string) []string {
			args := []string{"curl", "--silent", "--show-error", "--ftp-pasv", "--no-ftp-skip-pasv-ip",
				"--disable-epsv", "--connect-timeout", "5", "--max-time", "40", "--output", local,
				"--user", p.srv.User + ":" + p.srv.Password}
			return append(append(args, extra...), url)
		}
	}
	lftp := func(settings ...string) func(p *pair, local string) []string {
		return func(p *pair, local string) []string {
			s := append([]string{
				"set cmd:fail-exit yes", "set net:timeout 5",
				"set ftp:passive-mode yes", "set ftp:prefer-epsv no",
				"set ftp:fix-pasv-address no", "set ftp:ignore-pasv-address no",
			}, settings...)
			s = append(s, fmt.Sprintf("open -u %s,%s %s", p.srv.User, p.srv.Password, publicVIP),
				fmt.Sprintf("get -c %s -o %s", inflightFile, local))
			return []string{"lftp", "-c", strings.Join(s, "; ")}
		}
	}
	cases := []inflightCase{
		{"curl (no retry)", "processes", curl()},
		{"curl --retry 3 --retry-delay 1 --retry-all-errors -C -", "processes",
			curl("--retry", "3", "--retry-delay", "1", "--retry-all-errors", "--continue-at", "-")},
		{"lftp (net:max-retries 1)", "links", lftp("set net:max-retries 1", "set xfer:use-temp-file off")},
		{"lftp net:max-retries 5, net:reconnect-interval-base 1, get -c", "links",
			lftp("set net:max-retries 5", "set net:reconnect-interval-base 1", "set net:reconnect-interval-multiplier 1", "set xfer:use-temp-file off")},
	}
	for i, c := range cases {
		p.inflight(t, i, c, sum)
	}
}

func (p *pair) inflight(t *testing.T, i int, c inflightCase, sum string) {
	t.Helper()
	m := p.master()
	if m < 0 {
		t.Fatalf("%s: no master", c.name)
	}
	local := filepath.Join(p.l.Dir, fmt.Sprintf("inflight-%d.bin", i))
	argv := c.cmd(p, local)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.l.Client}, argv...)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(inflightKill)
	// The backup must know the data connection, marked, before the kill.
	backup := 1 - m
	ct, _ := p.l.Exec(context.Background(), p.nodes[backup].ns, "conntrack", "-L", "-p", "tcp", "--dst", publicVIP, "--mark", "0x10000000/0x10000000")
	synced := strings.Contains(ct, "dport=4") && strings.Contains(ct, "ESTABLISHED")
	if !synced {
		t.Errorf("%s: %s has no marked data connection from conntrackd before the kill:\n%s", c.name, p.nodes[backup].id, ct)
	}
	atKill := fileSize(local)
	if c.kill == "links" {
		p.killLinks(m)
	} else {
		p.killProcs(m)
	}
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	took := time.Since(start)
	if err := p.waitMaster(backup, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	got, _ := lab.FileSHA256(local)
	t.Logf("in flight: %s, master %s killed by %s at %v: %d bytes then, %d of %d at the end, byte-exact=%v, exit=%d after %v; client said: %q",
		c.name, p.nodes[m].id, c.kill, inflightKill, atKill, fileSize(local), inflightSize, got == sum, code, took.Round(100*time.Millisecond), oneLine(out.String()))
	if c.kill == "links" {
		p.restoreLinks(m)
	} else {
		p.restoreProcs(m)
	}
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// oneLine keeps a client's messages short for a log line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return tail(s, 600)
}
