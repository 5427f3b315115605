package nftables

import (
	"context"
	"net/netip"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// icLab is the shared interception lab (netns.InterceptLab) with this
// backend set up on its router.
type icLab struct {
	*netns.InterceptLab
	b *Backend
}

func newICLab(t *testing.T) *icLab {
	t.Helper()
	l := &icLab{InterceptLab: netns.NewInterceptLab(t, icPrefix)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Early demux hands an established connection's packets to their
	// socket before routing, which would deliver them whatever the
	// transparent-socket rules and the policy route do; without it, the
	// test sees whether those deliver them. (Packets that early demux
	// misses, such as the first after the socket's cached route went
	// stale, depend on them on any router.)
	must(l.Router.Sysctl("net.ipv4.ip_early_demux", "0"))
	must(l.Router.Sysctl("net.ipv4.tcp_early_demux", "0"))
	l.b = newBackend(t, l.Router, Config{})
	must(l.b.Setup(context.Background()))
	return l
}

// nftFamily is how nft names the table family of a's addresses.
func nftFamily(a netns.InterceptAddrs) string {
	if a.Client.Is6() {
		return "ip6"
	}
	return "ip"
}

// TestInterceptTraffic checks with real TCP connections through a router
// that each method, in each family, hands a LAN client's connection to
// port 21 of a server outside to the router's listener, with the original
// destination recoverable (SO_ORIGINAL_DST for redirect, the local address
// for tproxy), and that bytes flow both ways, for tproxy also with the
// tproxy rule gone (so through the transparent-socket rules alone); that
// a connection to another port, or to the router's own address, is not
// intercepted; and that after StopIntercept connections to port 21 reach
// the server again.
func TestInterceptTraffic(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	l := newICLab(t)
	for _, a := range []netns.InterceptAddrs{netns.InterceptV4, netns.InterceptV6} {
		for _, method := range []string{rules.Redirect, rules.TProxy} {
			t.Run(a.Name+"/"+method, func(t *testing.T) {
				ic := rules.Interception{Iface: "lan0", Port: 21, ListenPort: netns.InterceptRedirectPort, Method: method}
				if method == rules.TProxy {
					ic.ListenPort = netns.InterceptTProxyPort
				}
				ftp := netip.AddrPortFrom(a.Server, 21)
				if err := l.b.Intercept(ctx, ic); err != nil {
					t.Fatalf("Intercept: %v", err)
				}
				stopped := false
				defer func() {
					if !stopped {
						l.b.StopIntercept(ctx, ic)
					}
				}()

				c, err := l.Dial(t, ftp)
				if err != nil {
					t.Fatalf("dialling %s with interception on: %v", ftp, err)
				}
				rc := l.RouterGot(t)
				if rc.Method != method {
					t.Fatalf("the router's %s listener got the connection, want the %s one", rc.Method, method)
				}
				if remote := netip.MustParseAddrPort(rc.Conn.RemoteAddr().String()); remote.Addr() != a.Client {
					t.Errorf("router accepted a connection from %s, want %s", remote, a.Client)
				}
				local := netip.MustParseAddrPort(rc.Conn.LocalAddr().String())
				if method == rules.Redirect {
					od, err := netns.OriginalDst(rc.Conn)
					if err != nil || od != ftp {
						t.Errorf("SO_ORIGINAL_DST = %v, %v; want %s", od, err, ftp)
					}
					if local.Port() != netns.InterceptRedirectPort {
						t.Errorf("redirected connection's local address %s, want port %d", local, netns.InterceptRedirectPort)
					}
				} else if local != ftp {
					t.Errorf("transparent connection's local address %s, want %s", local, ftp)
				}
				netns.Talk(t, c, rc.Conn)
				if method == rules.TProxy {
					// Without the tproxy rule, only the transparent-socket
					// rules (and the policy route) can deliver the
					// established connection's packets.
					h := ruleHandle(t, l.Router, nftFamily(a), ChainTProxy, interceptComment(ic))
					l.Router.MustRun(t, "nft", "delete", "rule", nftFamily(a), TableName, ChainTProxy, "handle", h)
					netns.Talk(t, c, rc.Conn)
					if err := l.b.Intercept(ctx, ic); err != nil {
						t.Fatalf("Intercept to put the rule back: %v", err)
					}
				}

				// Another port goes straight through, untouched.
				if _, err := l.Dial(t, netip.AddrPortFrom(a.Server, 22)); err != nil {
					t.Fatalf("dialling port 22: %v", err)
				}
				l.ServerGot(t, a, 22)
				// The router's own address is not intercepted: nothing
				// listens on its port 21, so the connection is refused.
				own := netip.AddrPortFrom(a.RouterLAN, 21)
				if _, err := l.Dial(t, own); err == nil {
					t.Errorf("a connection to the router's own %s was accepted", own)
				}
				l.NothingElse(t)

				if err := l.b.StopIntercept(ctx, ic); err != nil {
					t.Fatalf("StopIntercept: %v", err)
				}
				stopped = true
				if _, err := l.Dial(t, ftp); err != nil {
					t.Fatalf("dialling %s after StopIntercept: %v", ftp, err)
				}
				l.ServerGot(t, a, 21)
				l.NothingElse(t)
				// A redirected connection outlives the interception
				// (conntrack keeps its NAT); for tproxy the socket rules
				// and the policy route are gone with it.
				if method == rules.Redirect {
					netns.Talk(t, c, rc.Conn)
				}
			})
		}
	}
}
