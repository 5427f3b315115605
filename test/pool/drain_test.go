package pool

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// poolYAML is pasvgate's config file with the pool and its policy, the
// member drained (weight 0) if not negative. The rest of the settings are
// flags, which do not change on reload.
func poolYAML(drained int) string {
	var b strings.Builder
	b.WriteString("balance: round-robin\nupstream:\n")
	for i, m := range members {
		w := 1
		if i == drained {
			w = 0
		}
		fmt.Fprintf(&b, "  - {addr: \"%s:21\", weight: %d}\n", m.addr, w)
	}
	return b.String()
}

// TestDrain drains a server by a reload (weight 0 in the config file,
// then SIGHUP) while it holds an idle session and a transfer in progress:
// pasvgate logs it draining, new sessions never go to it, the transfer
// completes byte-exact, and both held sessions go on working (a later
// download on each comes from the drained server, intact).
func TestDrain(t *testing.T) {
	t.Parallel()
	// A shaped client link caps the TCP buffers at 64 KiB, so a 1 MiB
	// download whose client stops reading stays in progress on the
	// server (which blocks writing) for as long as the test wants,
	// whatever the kernel's buffer tuning; inProgress checks it. The
	// rate itself only has to be quick.
	p := newPoolLab(t, lab.Options{ClientLinkRate: 4 << 20})
	cfg := filepath.Join(t.TempDir(), "pasvgate.yaml")
	writeFile(t, cfg, poolYAML(-1))
	p.start(t, "--config", cfg)
	p.settle(t)

	// Two sessions on one server: round-robin gives each server one in
	// three, so six are plenty. The rest are closed.
	var onA []held
	var others []held
	byServer := map[*lab.Server][]held{}
	for range 6 {
		h := p.openHeld(t)
		byServer[h.server] = append(byServer[h.server], h)
		if len(byServer[h.server]) == 2 {
			onA = byServer[h.server]
			break
		}
	}
	if onA == nil {
		t.Fatal("six round-robin sessions found no server twice")
	}
	a := onA[0].server
	for s, hs := range byServer {
		if s != a {
			others = append(others, hs...)
		}
	}
	for _, h := range others {
		h.s.close()
	}
	idle, busy := onA[0], onA[1]
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	_ = busy.s.nc.SetDeadline(time.Now().Add(90 * time.Second))
	tr, err := busy.s.startRetr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.read(64 << 10); err != nil {
		t.Fatalf("first 64 KiB of the transfer: %v", err)
	}
	// The premise: the server is still sending (no final reply yet).
	if running, err := tr.inProgress(500*time.Millisecond, time.Now().Add(90*time.Second)); !running {
		t.Fatalf("the transfer on %s ended before the reload (%v): the drain would not be tested with one in progress", a.Kind, err)
	}

	drained := slices.IndexFunc(members, func(m member) bool { return m.addr+":21" == a.Addr })
	writeFile(t, cfg, poolYAML(drained))
	n := len(stateLines(p.pg.Output(), "upstream server draining", hostOf(a.Addr)))
	if err := syscall.Kill(p.pg.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if _, err := p.waitState("upstream server draining", hostOf(a.Addr), n, 5*time.Second); err != nil {
		t.Fatalf("after the reload draining %s: %v\n%s", a.Kind, err, lastLines(p.pg.Output(), 10))
	}
	p.checkSeries(t, "pasvgate_upstream_weight", a, "0")

	// New sessions, two at a time, while the transfer still waits.
	counts, _ := p.checkDownloads(t, p.downloads(ctx, 6, 2, []string{lab.ClientAddr}))
	t.Logf("distribution round-robin, %s drained: %s", a.Kind, p.countBy(counts))
	if counts[a] != 0 {
		t.Errorf("drained %s got %d new sessions", a.Kind, counts[a])
	}

	sum, err := tr.finish()
	switch {
	case err != nil:
		t.Errorf("transfer in progress on drained %s: %v", a.Kind, err)
	case sum != a.DataSHA256:
		t.Errorf("transfer in progress on drained %s: sha256 %s, want its file's %s", a.Kind, sum, a.DataSHA256)
	}
	for _, h := range []held{idle, busy} {
		_ = h.s.nc.SetDeadline(time.Now().Add(60 * time.Second))
		sum, err := h.s.retr(ctx)
		switch {
		case err != nil:
			t.Errorf("session %v held on drained %s, a download after the reload: %v", h.s.client, a.Kind, err)
		case sum != a.DataSHA256:
			t.Errorf("session %v held on drained %s, a download after the reload: sha256 %s, want its file's %s",
				h.s.client, a.Kind, sum, a.DataSHA256)
		}
	}
}
