package lifecycle

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// TestSecondInstanceRefused starts pasvgate, opens a mapping through it,
// then starts a second pasvgate in the same namespace: the second exits
// with status 1 and names the first, and the first's mapping is still
// there (before, the second's start-up sweep removed it). Once the first
// is killed, a new one starts: the claim dies with its holder.
func TestSecondInstanceRefused(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	ns := gateway(t)
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099")
	args := []string{"run", "--listen", "203.0.113.1:21", "--upstream", "192.0.2.10:21",
		"--data-ports", "41000-41099", "--backend", "iptables", "--iptables-path", "iptables-nft"}
	first := start(t, ns, "pasvgate started", pasvgate, args...)
	openPASV(t, ns)
	if got := listed(t, ns, pasvgate, "iptables-nft"); len(got) != 1 {
		t.Fatalf("rules list shows %v, want the 1 mapping", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := append([]string{}, args...)
	second[2] = "203.0.113.1:2121" // another listener: not a bind conflict
	out, err := ns.Command(ctx, pasvgate, second...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another pasvgate") {
		t.Fatalf("a second pasvgate in the namespace: %v\n%s", err, out)
	}
	if got := listed(t, ns, pasvgate, "iptables-nft"); len(got) != 1 {
		t.Fatalf("after the refused second start, rules list shows %v, want the first's mapping", got)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out)))

	_ = first.cmd.Process.Kill()
	_ = first.wait(t)
	start(t, ns, "pasvgate started", pasvgate, args...)
}
