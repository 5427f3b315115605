package lab

import (
	"context"
	"testing"
)

// Addresses and interface names of a router lab (NewRouter).
const (
	LANClientAddr   = "198.51.100.10" // a client on the router's LAN
	RouterLANAddr   = "198.51.100.1"  // the router on its LAN: the LAN's default gateway
	RouterWANAddr   = "203.0.113.1"   // the router's public address
	WANServerAddr   = "203.0.113.20"  // an FTP server on the internet side
	WANIntruderAddr = "203.0.113.21"  // another host on the internet side
	LANPrefix       = "198.51.100."   // what must never reach the server
	LANNet          = "198.51.100.0/24"
	LANClientIface  = "eth0"
	RouterLANIface  = "lan0"
	RouterWANIface  = "wan0"
	WANServerIface  = "eth0"
)

// RouterOptions select variants of a router lab.
type RouterOptions struct {
	// IPTables is the iptables binary of the router namespace, as
	// Options.IPTables is for a gateway lab. Empty means DefaultIPTables.
	IPTables string
	// NoMasquerade leaves out the router's MASQUERADE of LAN traffic: the
	// LAN is routed, not hidden, and the server namespace gets a route to
	// LANNet via the router so that it can answer LAN addresses.
	NoMasquerade bool
	// NSPrefix, if not empty, replaces the namespaces' prefix "pgsc-",
	// for a suite that runs another kind of router lab next to the usual
	// ones and must not meet them in another run's clean-up. Sweep does
	// not know such a prefix: the suite sweeps its own.
	NSPrefix string
}

// NewRouter builds a router lab for tb: pasvgate's transparent mode, as a
// sidecar on a Linux router, with the FTP server somewhere on the internet.
//
//	client ns (Client)          router ns (GW)                 server ns (Server)
//	eth0 198.51.100.10/24 ----- lan0 198.51.100.1/24
//	                            wan0 203.0.113.1/24 ---------- eth0 203.0.113.20/24
//	                                                                203.0.113.21/24
//	                                                                (the intruder)
//
// The LAN client's default route is the router; the server's is the
// router's public address too (so that the server can answer anything
// routed through it, as the internet would). The router forwards IPv4
// with what a home or office router has: FORWARD policy DROP, accept LAN
// to WAN, accept established and related flows; and, unless
// RouterOptions.NoMasquerade, `nat POSTROUTING -o wan0 -j MASQUERADE`.
// Nothing admits a new connection from the WAN into the LAN: an active-mode
// data connection gets in only through what pasvgate installs. The kernel's
// FTP conntrack helper is not attached to anything (Linux 4.7 and later
// attach it only on an explicit CT rule), so nothing but pasvgate
// rewrites FTP here.
//
// StartServer's servers listen on WANServerAddr. The namespaces are named
// pgsc-<pid>-<n>-l, -r and -s (or with RouterOptions.NSPrefix), and Close
// removes them like a gateway lab's.
func NewRouter(tb testing.TB, opt RouterOptions) *Lab {
	tb.Helper()
	prefix := routerNSPrefix
	if opt.NSPrefix != "" {
		prefix = opt.NSPrefix
	}
	l := newLab(tb, prefix, "l", "r", "s", opt.IPTables)
	l.serverAddr = WANServerAddr
	l.build = func(ctx context.Context) error { return l.buildRouter(ctx, opt) }
	l.create(tb)
	return l
}

func (l *Lab) buildRouter(ctx context.Context, opt RouterOptions) error {
	steps := [][]string{
		{"-n", l.GW, "link", "add", RouterLANIface, "type", "veth", "peer", "name", LANClientIface, "netns", l.Client},
		{"-n", l.GW, "link", "add", RouterWANIface, "type", "veth", "peer", "name", WANServerIface, "netns", l.Server},

		{"-n", l.Client, "addr", "add", LANClientAddr + "/24", "dev", LANClientIface},
		{"-n", l.Client, "link", "set", "lo", "up"},
		{"-n", l.Client, "link", "set", LANClientIface, "up"},
		{"-n", l.Client, "route", "add", "default", "via", RouterLANAddr},

		{"-n", l.GW, "addr", "add", RouterLANAddr + "/24", "dev", RouterLANIface},
		{"-n", l.GW, "addr", "add", RouterWANAddr + "/24", "dev", RouterWANIface},
		{"-n", l.GW, "link", "set", "lo", "up"},
		{"-n", l.GW, "link", "set", RouterLANIface, "up"},
		{"-n", l.GW, "link", "set", RouterWANIface, "up"},

		{"-n", l.Server, "addr", "add", WANServerAddr + "/24", "dev", WANServerIface},
		{"-n", l.Server, "addr", "add", WANIntruderAddr + "/24", "dev", WANServerIface},
		{"-n", l.Server, "link", "set", "lo", "up"},
		{"-n", l.Server, "link", "set", WANServerIface, "up"},
		{"-n", l.Server, "route", "add", "default", "via", RouterWANAddr},
	}
	if opt.NoMasquerade {
		// The default route already covers it; the explicit route says
		// what the variant relies on, and would survive a change of
		// default.
		steps = append(steps, []string{"-n", l.Server, "route", "add", LANNet, "via", RouterWANAddr})
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	// The policy first, so not one packet is forwarded before the rules.
	rules := [][]string{
		{"-P", "FORWARD", "DROP"},
		{"-A", "FORWARD", "-i", RouterLANIface, "-o", RouterWANIface, "-j", "ACCEPT"},
		{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
	}
	if !opt.NoMasquerade {
		rules = append(rules, []string{"-t", "nat", "-A", "POSTROUTING", "-o", RouterWANIface, "-j", "MASQUERADE"})
	}
	for _, r := range rules {
		if _, err := l.Exec(ctx, l.GW, l.IPTables, append([]string{"-w", "5"}, r...)...); err != nil {
			return err
		}
	}
	_, err := l.Exec(ctx, l.GW, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return err
}
