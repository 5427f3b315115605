package lab

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tellPeer opens a TCP listener inside ns that answers every connection
// with the peer's address as it sees it, so a test learns who connected:
// the source address selection and the NAT in between. It closes at test
// end.
func tellPeer(t *testing.T, l *Lab, ns, addr string) {
	t.Helper()
	ln, err := l.Listen(ns, addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			_, _ = io.WriteString(c, ap.Addr().Unmap().String())
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
}

// TestTopologyIPv6 checks a gateway lab with IPv6: the client reaches the
// gw and the gw the server over IPv6, each from its first address (the
// second, the intruder or the neighbour, is used only when bound); the gw
// forwards nothing unless a rule says so; and the ip6tables binary is the
// one of the same backend as the iptables binary.
func TestTopologyIPv6(t *testing.T) {
	for _, ipt := range []string{"/usr/sbin/iptables-nft", "/usr/sbin/iptables-legacy"} {
		t.Run(filepath.Base(ipt), func(t *testing.T) {
			l := New(t, Options{IPTables: ipt, IPv6: true})
			if want := strings.Replace(ipt, "iptables", "ip6tables", 1); l.IP6Tables != want {
				t.Errorf("IP6Tables %q, want %q", l.IP6Tables, want)
			}
			tellPeer(t, l, l.GW, net.JoinHostPort(GWPublicAddr6, "2121"))
			tellPeer(t, l, l.Server, net.JoinHostPort(ServerAddr6, "30000"))
			tellPeer(t, l, l.Client, net.JoinHostPort(ClientAddr6, "30001"))
			for _, tc := range []struct {
				what, ns, local, remote, want string
			}{
				{"client -> gw", l.Client, "", net.JoinHostPort(GWPublicAddr6, "2121"), ClientAddr6},
				{"intruder -> gw", l.Client, IntruderAddr6, net.JoinHostPort(GWPublicAddr6, "2121"), IntruderAddr6},
				{"gw -> server", l.GW, "", net.JoinHostPort(ServerAddr6, "30000"), GWPrivateAddr6},
				{"neighbour -> server", l.Server, NeighborAddr6, net.JoinHostPort(ServerAddr6, "30000"), NeighborAddr6},
				{"client -> server, not forwarded", l.Client, "", net.JoinHostPort(ServerAddr6, "30000"), ""},
				{"server -> client, not forwarded", l.Server, "", net.JoinHostPort(ClientAddr6, "30001"), ""},
			} {
				got, err := fetch(l, tc.ns, tc.local, tc.remote)
				switch {
				case tc.want == "" && err == nil:
					t.Errorf("%s: got %q, want the gw to drop it", tc.what, got)
				case tc.want != "" && (err != nil || got != tc.want):
					t.Errorf("%s: seen from %q (%v), want %s", tc.what, got, err, tc.want)
				}
			}
		})
	}
}

// TestRouterTopology checks a router lab, masquerading and routed: the
// LAN reaches the internet side, seen as the router's address or as
// itself; nothing from the internet side reaches the LAN; the router
// reaches both.
func TestRouterTopology(t *testing.T) {
	for _, masq := range []bool{true, false} {
		name := map[bool]string{true: "masquerade", false: "routed"}[masq]
		t.Run(name, func(t *testing.T) {
			l := NewRouter(t, RouterOptions{NoMasquerade: !masq})
			if !strings.HasPrefix(l.Client, routerNSPrefix) || !labNSName.MatchString(l.GW) {
				t.Errorf("namespace names %s, %s: not the router lab's format", l.Client, l.GW)
			}
			tellPeer(t, l, l.Server, WANServerAddr+":30000")
			tellPeer(t, l, l.Client, LANClientAddr+":30001")
			seen := RouterWANAddr
			if !masq {
				seen = LANClientAddr
			}
			if got, err := fetch(l, l.Client, "", WANServerAddr+":30000"); err != nil || got != seen {
				t.Errorf("LAN -> server: seen from %q (%v), want %s", got, err, seen)
			}
			if got, err := fetch(l, l.Server, "", LANClientAddr+":30001"); err == nil {
				t.Errorf("server -> LAN: got %q, want the router to drop it", got)
			}
			if got, err := fetch(l, l.Server, WANIntruderAddr, LANClientAddr+":30001"); err == nil {
				t.Errorf("intruder -> LAN: got %q, want the router to drop it", got)
			}
			if got, err := fetch(l, l.GW, "", LANClientAddr+":30001"); err != nil || got != RouterLANAddr {
				t.Errorf("router -> LAN: seen from %q (%v)", got, err)
			}
		})
	}
}

// TestSweepRouterNames checks that Sweep treats router labs' namespaces
// like gateway labs': a dead creator's go, a live one's stay, and a name
// that only looks similar is not touched.
func TestSweepRouterNames(t *testing.T) {
	RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("pgsc-%d-1-r", dead.Process.Pid)
	live := "pgsc-1-1-r"                                  // pid 1 is alive
	other := fmt.Sprintf("pgsc-%d-1-x", dead.Process.Pid) // not a lab role
	for _, ns := range []string{stale, live, other} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() { _ = removeNS(ns) })
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	exists := func(ns string) bool {
		_, err := os.Stat(filepath.Join("/run/netns", ns))
		return err == nil
	}
	if exists(stale) {
		t.Errorf("%s survived the sweep", stale)
	}
	if !exists(live) || !exists(other) {
		t.Errorf("%s or %s was swept", live, other)
	}
}
