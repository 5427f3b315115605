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

// TestHostFirewallAccept runs the README's reverse-mode command on
// gateways whose forward policy drops, with no rule for pasvgate (as "The
// nftables backend" promises): --backend auto must take nftables and add
// its own accept, a passive download goes through, the accept stays after
// a clean stop, and the README's `rules flush` removes it, leaving the
// host's firewall as it was.
func TestHostFirewallAccept(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, l *lab.Lab, srv *lab.Server, state func() string) {
		before := state()
		p := start(t, l, l.GW, readmeCommand(t, cmdReverse))
		m := backendChosen.FindStringSubmatch(p.Output())
		if m == nil || m[1] != "nftables" {
			t.Fatalf("on a drop-policy gateway, --backend auto chose %v, want nftables:\n%s", m, p.Output())
		}
		download(t, l, srv, lab.GWPublicAddr, false, false)
		stop(t, p, cmdReverse, 40*time.Second)
		checkNoMappings(t, l, l.GW)
		if got := state(); !strings.Contains(got, "pasvgate host-firewall") {
			t.Errorf("pasvgate's accept is gone after a clean stop:\n%s", got)
		}
		mustRun(t, l, l.GW, readmeCommand(t, cmdRulesFlush))
		if got := state(); got != before {
			t.Errorf("after %s the host firewall is\n%s\nwant\n%s", cmdRulesFlush, got, before)
		}
	}
	t.Run("iptables", func(t *testing.T) {
		t.Parallel()
		// lab's gateway: FORWARD policy DROP in both families, with
		// iptables-nft, the host's iptables.
		l, srv := gatewayLab(t, lab.Options{IPv6: true})
		check(t, l, srv, func() string {
			return execOut(t, l, l.IPTables, "-w", "5", "-S", "FORWARD") + execOut(t, l, l.IP6Tables, "-w", "5", "-S", "FORWARD")
		})
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
		check(t, l, srv, func() string { return execOut(t, l, "nft", "list table inet filter") })
	})
}

// execOut runs a command on the lab's gateway and returns its output.
func execOut(t *testing.T, l *lab.Lab, name string, args ...string) string {
	t.Helper()
	out, err := l.Exec(t.Context(), l.GW, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
