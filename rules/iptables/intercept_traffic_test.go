package iptables

import (
	"context"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// icLab is the shared interception lab (netns.InterceptLab) with this
// backend set up on its router.
type icLab struct {
	*netns.InterceptLab
	b nsBackend
}

// newICLab builds the lab with the iptables binary path on the router.
func newICLab(t *testing.T, path string) *icLab {
	t.Helper()
	l := &icLab{InterceptLab: netns.NewInterceptLab(t, icPrefix)}
	l.b = newBackend(t, l.Router, path, Config{})
	if err := l.b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	return l
}

// saveCounterRE reads a rule's packet counter from iptables-save -c.
var saveCounterRE = regexp.MustCompile(`^\[([0-9]+):[0-9]+\] `)

// ruleCounter is the packet counter of the one rule of the router's table
// whose iptables-save line contains substr.
func (l *icLab) ruleCounter(t *testing.T, save, table, substr string) int {
	t.Helper()
	out := l.Router.MustRun(t, save, "-c", "-t", table)
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, substr) {
			continue
		}
		m := saveCounterRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no counter in %q", line)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	t.Fatalf("no rule with %q in:\n%s", substr, out)
	return 0
}

// TestInterceptTraffic checks with real TCP connections through a router
// that each method, in each family, hands a LAN client's connection to
// port 21 of a server outside to the router's listener, with the original
// destination recoverable (SO_ORIGINAL_DST for REDIRECT, the local address
// for TPROXY), and that bytes flow both ways; that a connection to another
// port, or to the router's own address, is not intercepted; and that after
// StopIntercept connections to port 21 reach the server again.
func TestInterceptTraffic(t *testing.T) {
	netns.RequireRoot(t)
	ctx := context.Background()
	forEachBinary(t, func(t *testing.T, path string) {
		l := newICLab(t, path)
		v4, v6, err := deriveBinaries(path)
		if err != nil {
			t.Fatal(err)
		}
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
					remote := netip.MustParseAddrPort(rc.Conn.RemoteAddr().String())
					if remote.Addr() != a.Client {
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
						// The connection's later packets were delivered by
						// the socket rule, not by TPROXY again.
						save := v4.save
						if a.Client.Is6() {
							save = v6.save
						}
						if n := l.ruleCounter(t, save, tableMangle, "--set-xmark"); n == 0 {
							t.Errorf("the socket rule matched no packet")
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
					// The intercepted connection outlives the interception
					// for REDIRECT (conntrack keeps its NAT); for TPROXY the
					// socket rule and the policy route are gone with it.
					if method == rules.Redirect {
						netns.Talk(t, c, rc.Conn)
					}
				})
			}
		}
	})
}
