package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/sniff"
	"github.com/pasvgate/pasvgate/test/lab"
)

// TestLiveAudit runs `pasvgate audit --iface pub0 --duration 3s --json
// --write F` in the lab's gateway namespace while a client lists a
// directory through it, and checks that the report names the session and
// its passive address, and that the saved capture reads back the same.
func TestLiveAudit(t *testing.T) {
	lab.RequireRoot(t)
	bin, err := lab.BuildGo(t.Context(), t.TempDir(), "./cmd/pasvgate")
	if err != nil {
		t.Fatal(err)
	}
	l := newRoutedLab(t)
	startScripted(t, l, shapeSplit, nil)
	saved := filepath.Join(t.TempDir(), "live.pcap")

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.GW, bin, "audit",
		"--iface", lab.GWPublicIface, "--duration", "3s", "--json", "--write", saved)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The capture is open once it says so; only then may the session run.
	ready := make(chan string, 1)
	var errText strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			errText.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "capturing on") {
				select {
				case ready <- sc.Text():
				default:
				}
			}
		}
		close(ready)
	}()
	if _, ok := <-ready; !ok {
		_ = cmd.Wait()
		t.Fatalf("pasvgate audit did not start capturing: %s", errText.String())
	}
	start := time.Now()

	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login("pgtest", "pgtest-pass"); err != nil {
		t.Fatal(err)
	}
	d, err := c.pasv(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 2500*time.Millisecond {
		t.Skip("the session outlasted most of the capture: the machine is too slow for this check")
	}

	if err := cmd.Wait(); err != nil {
		t.Fatalf("pasvgate audit: %v\n%s", err, errText.String())
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("a 3s capture took %v", took)
	}
	var r sniff.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	if r.Source != "live:"+lab.GWPublicIface {
		t.Errorf("source %q", r.Source)
	}
	s := session(t, &r, 1)
	ev := passiveOK(t, &r)
	if !s.FromStart || s.Ended != sniff.EndFIN || !strings.HasPrefix(ev.Line, "227 Entering Passive Mode (") {
		t.Errorf("session %+v, 227 %+v", s, ev)
	}

	f, err := os.Open(saved)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	again, err := sniff.ReadPcap(io.Reader(f), sniff.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := reportJSON(t, &r, ""), reportJSON(t, again, ""); !bytes.Equal(a, b) {
		t.Errorf("the saved capture reads differently:\nlive\n%s\nsaved\n%s", a, b)
	}
}
