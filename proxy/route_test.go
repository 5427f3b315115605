package proxy_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/pool"
)

// TestAnnouncePerNetwork: a client from an announced network is told that
// network's address in its 227, and its mapping matches that address; a
// client from elsewhere gets the public address.
func TestAnnouncePerNetwork(t *testing.T) {
	lan := netip.MustParseAddr("127.0.0.4")
	for _, tc := range []struct {
		name    string
		network string
		want    netip.Addr
	}{
		{"announced", "127.0.0.0/24", lan},
		{"elsewhere", "198.51.100.0/24", publicAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, options{settings: func(st *proxy.Settings) {
				st.Announce = []proxy.Announce{{Network: netip.MustParsePrefix(tc.network), Addr: lan}}
			}})
			c := h.dial(t)
			c.login()
			ap := parse227(t, c.cmd("PASV"))
			if ap.Addr() != tc.want {
				t.Fatalf("227 carries %v, want %v", ap.Addr(), tc.want)
			}
			ms, _ := h.backend.List(t.Context())
			if len(ms) != 1 || ms[0].Public != ap {
				t.Fatalf("installed %v, want one mapping on %v", ms, ap)
			}
		})
	}
}

// TestRouteOwnPoolAndPorts: a listener served with ServeRoute sends its
// sessions to its route's pool, and draws its data ports from the route's
// range.
func TestRouteOwnPoolAndPorts(t *testing.T) {
	ports := nat.PortRange{Low: 20500, High: 20509}
	var rt proxy.Route
	h := newHarness(t, options{settings: func(st *proxy.Settings) {
		// The route's pool is the same server, through the tap; the
		// default route's is a server that does not exist: a session of
		// the route that went there would fail.
		rt = proxy.Route{
			Pool:  pool.New(pool.Config{Name: "r1", Members: []pool.Member{{Addr: st.Upstream, Weight: 1}}}, nil),
			Ports: ports,
		}
		st.Routes = map[string]proxy.Route{"r1": rt}
		st.Upstream = "127.0.0.2:1"
	}})
	ln, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.proxy.ServeRoute(t.Context(), ln, "r1", false) }()
	h.addr = ln.Addr().String()
	c := h.dial(t)
	c.login()
	ap := parse227(t, c.cmd("PASV"))
	if ap.Port() < ports.Low || ap.Port() > ports.High {
		t.Fatalf("227 port %d, want one of the route's %v", ap.Port(), ports)
	}
	if err := h.proxy.ServeRoute(t.Context(), ln, "nope", false); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("ServeRoute of an unknown route = %v, want an error naming it", err)
	}
	h.waitLog(t, "route=r1 pool=r1")
}

// TestUpstreamSource: sessions dial their server from UpstreamSource, so
// the server sees that address, and a data mapping's SNAT source is it
// too.
func TestUpstreamSource(t *testing.T) {
	src := netip.MustParseAddr("127.0.0.5")
	h := newHarness(t, options{settings: func(st *proxy.Settings) {
		st.UpstreamSource = []netip.Addr{netip.MustParseAddr("2001:db8::5"), src}
	}})
	c := h.dial(t)
	c.login()
	parse227(t, c.cmd("PASV"))
	ms, _ := h.backend.List(t.Context())
	if len(ms) != 1 || ms[0].SNAT != src {
		t.Fatalf("mappings %v, want one with SNAT source %v", ms, src)
	}
}
