package readme

import (
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// openPASV logs in through the gateway at host and sends PASV, leaving the
// session open with its mapping installed; it returns the announced
// address.
func openPASV(t *testing.T, l *lab.Lab, srv *lab.Server, host string) (*textproto.Conn, net.Conn, netip.AddrPort) {
	t.Helper()
	c, nc, err := l.RawLogin(t.Context(), lab.RawSession{NS: l.Client, Host: host, User: srv.User, Password: srv.Password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	msg, err := lab.RawCmd(c, 227, "PASV")
	if err != nil {
		t.Fatal(err)
	}
	a := lab.Parse227s("227 " + msg)
	if len(a) != 1 {
		t.Fatalf("PASV: cannot parse %q", msg)
	}
	return c, nc, a[0]
}

// TestReverse runs the README's reverse-mode command, `rules list` and
// `rules flush` on the README's gateway.
func TestReverse(t *testing.T) {
	t.Parallel()
	l, srv := gatewayLab(t, lab.Options{})
	runCmd := readmeCommand(t, cmdReverse)
	list := readmeCommand(t, cmdRulesList)

	p := start(t, l, l.GW, runCmd)
	download(t, l, srv, lab.GWPublicAddr, false, false)

	// A mapping open: 227 names the second public address, and rules
	// list shows it.
	_, nc, announced := openPASV(t, l, srv, lab.GWPublicAddr)
	if announced.Addr().String() != lab.GWPublicAddr2 {
		t.Fatalf("227 names %v, want %s (--public-addr)", announced, lab.GWPublicAddr2)
	}
	out := mustRun(t, l, l.GW, list)
	if !strings.Contains(out, lab.ClientAddr) || !strings.Contains(out, announced.String()) {
		t.Fatalf("%s with a mapping for %s at %v open:\n%s", cmdRulesList, lab.ClientAddr, announced, out)
	}
	t.Logf("%s with a session's PASV open: %s", cmdRulesList, strings.TrimSpace(out))

	stop(t, p, cmdReverse, 40*time.Second)
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(nc); !strings.HasPrefix(string(b), "421") {
		t.Errorf("a client open at SIGTERM got %q, want 421", b)
	}
	checkNoMappings(t, l, l.GW)

	// A SIGKILL leaves the mapping behind; rules flush removes it, and
	// every chain and table of pasvgate's.
	p = start(t, l, l.GW, runCmd)
	openPASV(t, l, srv, lab.GWPublicAddr)
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pasvgate did not die of SIGKILL")
	}
	if out := mustRun(t, l, l.GW, list); !strings.Contains(out, lab.ClientAddr) {
		t.Fatalf("%s after SIGKILL with a mapping open shows no mapping:\n%s", cmdRulesList, out)
	}
	mustRun(t, l, l.GW, readmeCommand(t, cmdRulesFlush))
	checkNoMappings(t, l, l.GW)
	if st := kernelState(t, l, l.GW); strings.Contains(strings.ToLower(st), "pasvgate") {
		t.Fatalf("%s left pasvgate's rules, chains or tables:\n%s", cmdRulesFlush, st)
	}
}

// TestIPv6 runs the README's two-family command on the README's gateway
// with IPv6 on both sides.
func TestIPv6(t *testing.T) {
	t.Parallel()
	l, srv := gatewayLab(t, lab.Options{IPv6: true})
	p := start(t, l, l.GW, readmeCommand(t, cmdIPv6))
	download(t, l, srv, lab.GWPublicAddr, false, false)
	download(t, l, srv, lab.GWPublicAddr6, false, true)
	stop(t, p, cmdIPv6, 40*time.Second)
	checkNoMappings(t, l, l.GW)
}

var backendChosen = regexp.MustCompile(`msg="backend chosen" backend=(\S+)`)

// TestAcceptRule runs the README's accept rules for the nftables backend
// on a gateway whose forward policy drops, then the README's reverse-mode
// command, whose --backend auto must then take nftables.
func TestAcceptRule(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, l *lab.Lab, srv *lab.Server) {
		p := start(t, l, l.GW, readmeCommand(t, cmdReverse))
		m := backendChosen.FindStringSubmatch(p.Output())
		if m == nil || m[1] != "nftables" {
			t.Fatalf("with the README's accept rule, --backend auto chose %v, want nftables:\n%s", m, p.Output())
		}
		download(t, l, srv, lab.GWPublicAddr, false, false)
		stop(t, p, cmdReverse, 40*time.Second)
		checkNoMappings(t, l, l.GW)
	}
	t.Run("iptables", func(t *testing.T) {
		t.Parallel()
		// lab's gateway: FORWARD policy DROP in both families, with
		// iptables-nft, the host's iptables.
		l, srv := gatewayLab(t, lab.Options{IPv6: true})
		mustRun(t, l, l.GW, readmeCommand(t, cmdAccept4))
		mustRun(t, l, l.GW, readmeCommand(t, cmdAccept6))
		check(t, l, srv)
	})
	t.Run("nftables", func(t *testing.T) {
		t.Parallel()
		// A gateway whose firewall is native nftables: the lab's
		// iptables policy is lifted and an inet filter table drops
		// forwarded traffic instead.
		l, srv := gatewayLab(t, lab.Options{})
		for _, argv := range [][]string{
			{l.IPTables, "-w", "5", "-P", "FORWARD", "ACCEPT"},
			{"nft", "add table inet filter"},
			{"nft", "add chain inet filter forward { type filter hook forward priority filter; policy drop; }"},
		} {
			if _, err := l.Exec(t.Context(), l.GW, argv[0], argv[1:]...); err != nil {
				t.Fatal(err)
			}
		}
		mustRun(t, l, l.GW, readmeCommand(t, cmdAcceptNft))
		check(t, l, srv)
	})
}
