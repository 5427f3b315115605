package readme

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestSidecar runs the README's router-sidecar command, copied from the
// README, on the README's router, and passes a LAN client's active and
// passive downloads from a server outside through it.
func TestSidecar(t *testing.T) {
	t.Parallel()
	l, srv := routerLab(t)
	c := readmeCommand(t, cmdSidecar)
	p := start(t, l, l.GW, c)

	// Both listeners of the command are open, one per family.
	ss, err := l.Exec(t.Context(), l.GW, "ss", "-Htln")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0.0.0.0:2121", "[::]:2121"} {
		if !strings.Contains(ss, want) {
			t.Errorf("no listener on %s in the router:\n%s", want, ss)
		}
	}
	sessionsBefore := p.Sessions()
	download(t, l, srv, lab.WANServerAddr, true, false)
	download(t, l, srv, lab.WANServerAddr, true, true)
	download(t, l, srv, lab.WANServerAddr, false, false)
	// Without the interception the LAN reaches the server directly (the
	// router masquerades): pasvgate must have seen every session.
	// pasvgate writes info lines up to 50 ms late (lab.Proc.WaitSessions).
	p.WaitSessions(sessionsBefore+3, 3*time.Second)
	if n := p.Sessions() - sessionsBefore; n != 3 {
		t.Errorf("pasvgate logged %d sessions for the three downloads, want 3: not intercepted\n%s", n, p.Output())
	}
	stop(t, p, c.key, 40*time.Second)
	checkNoMappings(t, l, l.GW)
	if st := kernelState(t, l, l.GW); strings.Contains(st, "pasvgate intercept") {
		t.Errorf("the interception stayed after the stop:\n%s", st)
	}
}

// TestConfigs runs `pasvgate run --config FILE` for every example config
// under deploy/examples/, each in a lab that has what the config names,
// and has a client download through it.
func TestConfigs(t *testing.T) {
	_, root := readmeDoc(t)
	files, err := filepath.Glob(filepath.Join(root, "deploy/examples/*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		rel, _ := filepath.Rel(root, f)
		c := command{key: "pasvgate run --config " + rel, raw: "pasvgate run --config " + rel}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			switch name {
			case "gateway-appliance.yaml":
				// The README's gateway as it is: listen 203.0.113.1:21,
				// upstream 192.0.2.10:21, metrics on 127.0.0.1:9121.
				l, srv := gatewayLab(t, lab.Options{})
				p := start(t, l, l.GW, c)
				healthz(t, l, l.GW, "127.0.0.1:9121")
				download(t, l, srv, lab.GWPublicAddr, false, false)
				stop(t, p, c.key, 70*time.Second)
				checkNoMappings(t, l, l.GW)
			case "fix-passive-address.yaml":
				// The firewall's public address 203.0.113.20 in front of
				// the server 192.0.2.10, which advertises its own, private,
				// address.
				l, srv := gatewayLab(t, lab.Options{})
				if _, err := l.Exec(t.Context(), l.GW, "ip", "addr", "add", "203.0.113.20/24", "dev", lab.GWPublicIface); err != nil {
					t.Fatal(err)
				}
				p := start(t, l, l.GW, c)
				download(t, l, srv, "203.0.113.20", false, false)
				stop(t, p, c.key, 70*time.Second)
				checkNoMappings(t, l, l.GW)
			case "router-sidecar.yaml":
				// The README's router: lan0, and wan0 with 203.0.113.1.
				l, srv := routerLab(t)
				p := start(t, l, l.GW, c)
				download(t, l, srv, lab.WANServerAddr, true, false)
				download(t, l, srv, lab.WANServerAddr, false, false)
				stop(t, p, c.key, 70*time.Second)
				checkNoMappings(t, l, l.GW)
			default:
				t.Fatalf("deploy/examples/%s: the test has no lab for it: add one to TestConfigs", name)
			}
		})
	}
}

// healthz asks the metrics listener at addr, from inside ns, for /healthz
// and wants 200 ok.
func healthz(t *testing.T, l *lab.Lab, ns, addr string) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return l.Dial(ctx, ns, "", addr)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz on %s: %v", addr, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		t.Fatalf("GET /healthz on %s: %s %q, want 200 ok", addr, resp.Status, b)
	}
}
