package routes

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// routesYAML is a config with two routes and no default route. Each
// route announces the other public address than the one it listens on,
// so a client that ignored the 227 address would fail, and the two data
// port ranges tell in a 227 which route wrote it.
const routesYAML = `routes:
  - name: alpha
    listen: [%[1]s:21]
    upstream: [%[3]s]
    public-addr: %[2]s
    data-ports: 41000-41099
  - name: beta
    listen: [%[2]s:21]
    upstream: [%[4]s]
    public-addr: %[1]s
    data-ports: 42000-42099
`

// testRoutes: two routes, each with its own pool, public address and data
// ports; every download comes from its route's server (by SHA-256) and
// every 227 carries its route's address and a port of its range. Then a
// reload (SIGHUP) points route beta at another server: a new session on
// beta goes there, a session opened before the reload keeps its server
// and still transfers, and route alpha is untouched.
func (e *env) testRoutes(t *testing.T) {
	conf := filepath.Join(e.l.Dir, "routes.yaml")
	write := func(beta string) {
		t.Helper()
		y := fmt.Sprintf(routesYAML, lab.GWPublicAddr, lab.GWPublicAddr2, e.plain.addr, beta)
		if err := os.WriteFile(conf, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(e.second.addr)
	cp, err := e.l.Capture(e.l.Client, lab.ClientIface)
	if err != nil {
		t.Fatal(err)
	}
	p := e.startPasvgate(t, []string{lab.GWPublicAddr + ":21", lab.GWPublicAddr2 + ":21"}, "--config", conf)

	if got := download(t, e.l, e.l.Client, lab.GWPublicAddr, "alpha-1.bin"); got != e.plain.sha {
		t.Errorf("route alpha: sha256 %s, want %s's %s", got, e.plain.name, e.plain.sha)
	}
	if got := download(t, e.l, e.l.Client, lab.GWPublicAddr2, "beta-1.bin"); got != e.second.sha {
		t.Errorf("route beta: sha256 %s, want %s's %s", got, e.second.name, e.second.sha)
	}
	held := dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr2)
	held.login(t)
	if _, sum, reply := held.retr(t, e.l); sum != e.second.sha {
		t.Errorf("route beta, raw client: sha256 %q (%s), want %s", sum, reply, e.second.sha)
	}
	for _, want := range []struct{ route, backend string }{{"alpha", e.plain.addr}, {"beta", e.second.addr}} {
		// pasvgate holds info lines up to 50 ms before writing them.
		if !lab.WaitFor(2*time.Second, func() bool { return hasSession(p.Output(), want.route, want.backend) }) {
			t.Errorf("no session started on route %s with backend %s in pasvgate's log:\n%s",
				want.route, want.backend, tailLines(p.Output(), 20))
		}
	}

	// Reload: beta's pool becomes the third server.
	write(e.third.addr)
	reloads := len(logLines(p.Output(), "reloaded"))
	if err := syscall.Kill(p.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !lab.WaitFor(10*time.Second, func() bool { return len(logLines(p.Output(), "reloaded")) > reloads }) {
		t.Fatalf("no reload logged within 10 s:\n%s", tailLines(p.Output(), 20))
	}
	fresh := dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr2)
	fresh.login(t)
	if _, sum, reply := fresh.retr(t, e.l); sum != e.third.sha {
		t.Errorf("route beta after the reload, new session: sha256 %q (%s), want %s's %s", sum, reply, e.third.name, e.third.sha)
	}
	if _, sum, reply := held.retr(t, e.l); sum != e.second.sha {
		t.Errorf("route beta after the reload, session opened before it: sha256 %q (%s), want its own server %s's %s",
			sum, reply, e.second.name, e.second.sha)
	}
	if got := download(t, e.l, e.l.Client, lab.GWPublicAddr, "alpha-2.bin"); got != e.plain.sha {
		t.Errorf("route alpha after the reload: sha256 %s, want %s", got, e.plain.sha)
	}
	if !lab.WaitFor(2*time.Second, func() bool { return hasSession(p.Output(), "beta", e.third.addr) }) {
		t.Errorf("no session started on route beta with backend %s after the reload:\n%s", e.third.addr, tailLines(p.Output(), 20))
	}

	pkts, err := cp.Stop()
	if err != nil {
		t.Logf("capture: %v", err)
	}
	for _, r := range []struct {
		name      string
		listen    string
		announced string
		low, high uint16
		min       int // 227s the test caused on the route
	}{
		{"alpha", lab.GWPublicAddr, lab.GWPublicAddr2, 41000, 41099, 2},
		{"beta", lab.GWPublicAddr2, lab.GWPublicAddr, 42000, 42099, 4},
	} {
		got := replies227(pkts, hostPort(r.listen, 21), lab.ClientAddr)
		if len(got) < r.min {
			t.Errorf("route %s: %d 227s on the wire, want at least %d", r.name, len(got), r.min)
		}
		for _, ap := range got {
			if ap.Addr().String() != r.announced || ap.Port() < r.low || ap.Port() > r.high {
				t.Errorf("route %s: 227 announced %v, want %s with a port in %d-%d", r.name, ap, r.announced, r.low, r.high)
			}
		}
	}
}

// hasSession reports whether pasvgate's log has a session started on
// route with backend (the server's ADDR:PORT).
func hasSession(out, route, backend string) bool {
	for _, m := range logLines(out, "session started") {
		if m["route"] == route && m["backend"] == backend {
			return true
		}
	}
	return false
}
