package interop

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestFaultHostFirewallReload runs pasvgate with its defaults (--backend
// auto, --host-firewall auto) on the lab's gateway, whose FORWARD drops
// with no rule for pasvgate: it must take the nftables backend and add its
// own accept. Then, in the middle of a rate-limited download, the host's
// firewall is reloaded from the ruleset saved before pasvgate started
// (`iptables-restore`, as a firewall service does), which removes the
// accept: the download must complete with the server's bytes, and
// pasvgate must log that it put the accept back, and have done so.
func TestFaultHostFirewallReload(t *testing.T) {
	lab.RequireRoot(t)
	if err := (lab.Curl{}).Available(); err != nil {
		t.Skip(err)
	}
	bin := *flagPasvgate
	if bin == "" {
		var err error
		if bin, err = lab.BuildGo(t.Context(), t.TempDir(), "./cmd/pasvgate"); err != nil {
			t.Fatal(err)
		}
	}
	l := lab.New(t, labOptions(256<<10, false))
	srv, err := l.StartServer(t.Context(), lab.Vsftpd, lab.ServerOptions{})
	if err != nil {
		if strings.Contains(err.Error(), lab.ErrMissing.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	saved, err := l.Exec(t.Context(), l.GW, l.IPTables+"-save")
	if err != nil {
		t.Fatal(err)
	}
	savedFile := filepath.Join(l.Dir, "host-firewall.rules")
	if err := os.WriteFile(savedFile, []byte(saved), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &faultLab{l: l, srv: srv, bin: bin, pgArgs: []string{"--backend", "auto"}}
	f.start(t)
	out := f.pg.proc.Output()
	if !strings.Contains(out, `"backend":"nftables"`) {
		t.Fatalf("--backend auto on a FORWARD DROP gateway did not take nftables:\n%s", lastLines(out, 20))
	}
	hasJump := func() bool {
		s, err := l.Exec(t.Context(), l.GW, l.IPTables, "-w", "5", "-S", "FORWARD")
		return err == nil && strings.Contains(s, "-j PASVGATE-HOSTFW")
	}
	if !hasJump() {
		t.Fatal("no jump to PASVGATE-HOSTFW in FORWARD")
	}

	local := filepath.Join(l.Dir, "got.bin")
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := (lab.Curl{}).Run(context.Background(), l, lab.Transfer{NS: l.Client, Host: lab.GWPublicAddr,
			User: srv.User, Password: srv.Password, Op: lab.Get, Remote: lab.DataFile, Local: local, Timeout: 40 * time.Second})
		done <- err
	}()
	// 1 MiB at 256 KiB/s: the reload lands about a third of the way in.
	time.Sleep(1500 * time.Millisecond)
	if _, err := l.Exec(t.Context(), l.GW, "sh", "-c", l.IPTables+"-restore -w 5 < "+savedFile); err != nil {
		t.Fatal(err)
	}
	if hasJump() {
		t.Fatal("the reload left pasvgate's jump: the test would prove nothing")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the download across the reload failed: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the download did not end")
	}
	if got, _ := lab.FileSHA256(local); got != srv.DataSHA256 {
		t.Fatalf("download across the reload: sha256 %s, want %s", got, srv.DataSHA256)
	}
	t.Logf("download across the host firewall reload took %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(f.pg.proc.Output(), "put it back") {
		t.Errorf("pasvgate did not log putting its accept back:\n%s", lastLines(f.pg.proc.Output(), 20))
	}
	if !hasJump() {
		t.Error("pasvgate's jump is not back in FORWARD")
	}
	f.pg.proc.Stop()
}
