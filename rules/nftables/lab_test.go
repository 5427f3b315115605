package nftables

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// lab is three namespaces: a client side with the client and an intruder
// (203.0.113.10 and .11, 2001:db8:1::10 and ::11), a gateway that forwards,
// with pasvgate's backend (203.0.113.1 and 192.0.2.1, 2001:db8:1::1 and
// 2001:db8:2::1), and a server behind it (192.0.2.10, 2001:db8:2::10)
// whose default route is the gateway. The gateway has no firewall of its
// own unless a test gives it one.
type lab struct {
	client, gw, server *netns.NS
	b                  *Backend
	seen               chan netip.AddrPort // remote address of each connection the server accepts
	g                  *netns.GatewayLab
}

// Addresses of the lab, per family.
type labAddrs struct {
	name                                       string
	client, intruder, public, gwInside, server netip.Addr
}

var (
	lab4 = labAddrs{
		name:   "IPv4",
		client: netip.MustParseAddr("203.0.113.10"), intruder: netip.MustParseAddr("203.0.113.11"),
		public: netip.MustParseAddr("203.0.113.1"), gwInside: netip.MustParseAddr("192.0.2.1"),
		server: netip.MustParseAddr("192.0.2.10"),
	}
	lab6 = labAddrs{
		name:   "IPv6",
		client: netip.MustParseAddr("2001:db8:1::10"), intruder: netip.MustParseAddr("2001:db8:1::11"),
		public: netip.MustParseAddr("2001:db8:1::1"), gwInside: netip.MustParseAddr("2001:db8:2::1"),
		server: netip.MustParseAddr("2001:db8:2::10"),
	}
)

// serverPort is the port the server listens on in both families.
const serverPort = netns.GatewayServerPort

// mapping is a mapping of the lab: from the client to the server, on the
// gateway's public address and port q, with SNAT to the gateway's inside
// address if snat.
func (a labAddrs) mapping(id string, q uint16, snat bool) rules.Mapping {
	m := rules.Mapping{ID: id, Source: a.client, Public: netip.AddrPortFrom(a.public, q),
		Target: netip.AddrPortFrom(a.server, serverPort), Created: time.Now()}
	if snat {
		m.SNAT = a.gwInside
	}
	return m
}

func newLab(t *testing.T, cfg Config) *lab {
	t.Helper()
	g := netns.NewGatewayLab(t, nsPrefix)
	l := &lab{g: g, client: g.Client, gw: g.GW, server: g.Server, seen: g.Seen}
	l.b = newBackend(t, l.gw, cfg)
	if err := l.b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return l
}

// connects and refused use this backend's time bounds.
func (l *lab) connects(t *testing.T, from netip.Addr, to netip.AddrPort, seenFrom netip.Addr) net.Conn {
	t.Helper()
	return l.g.Connects(t, from, to, seenFrom, 3*time.Second)
}

func (l *lab) refused(t *testing.T, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	l.g.Refused(t, from, to, 500*time.Millisecond)
}

// hostFirewall is a kind of firewall the gateway's owner may run next to
// pasvgate, set up the way its users set it up, in the gateway's
// namespace only.
type hostFirewall struct {
	name string
	// bins must be installed for the firewall to be tested.
	bins []string
	// drop gives the forward hook a policy of drop, in both families.
	drop func(t *testing.T, gw *netns.NS)
	// acceptMark adds the one rule the package doc asks for: accept
	// connections that carry pasvgate's conntrack mark (or, in the
	// variants that check the doc's alternative, every DNATed one).
	acceptMark func(t *testing.T, gw *netns.NS)
	// dump returns the firewall's whole state without counters, to check
	// that pasvgate leaves it alone.
	dump func(t *testing.T, gw *netns.NS) string
}

// counters matches the packet and byte counters in iptables-save output,
// and its header and footer comments, which carry dates.
var counters = regexp.MustCompile(`\[\d+:\d+\]|(?m)^#.*$`)

// markMatch is the mark and mask of DefaultCtMark as iptables writes
// them.
var markMatch = fmt.Sprintf("0x%x/0x%x", DefaultCtMark, DefaultCtMark)

// xtables is an iptables firewall run with the binaries of one backend
// ("nft" or "legacy"), whose rule for pasvgate accepts its mark, or, if
// dnat, every DNATed connection, as port forwarding setups commonly do.
func xtables(kind string, dnat bool) hostFirewall {
	bin4, bin6 := "iptables-"+kind, "ip6tables-"+kind
	both := func(t *testing.T, gw *netns.NS, args ...string) {
		t.Helper()
		for _, b := range []string{bin4, bin6} {
			gw.MustRun(t, b, append([]string{"-w"}, args...)...)
		}
	}
	fw := hostFirewall{
		name: "iptables-" + kind,
		bins: []string{bin4, bin6, bin4 + "-save", bin6 + "-save"},
		drop: func(t *testing.T, gw *netns.NS) { both(t, gw, "-P", "FORWARD", "DROP") },
		acceptMark: func(t *testing.T, gw *netns.NS) {
			both(t, gw, "-I", "FORWARD", "-m", "connmark", "--mark", markMatch, "-j", "ACCEPT")
		},
		dump: func(t *testing.T, gw *netns.NS) string {
			return counters.ReplaceAllString(gw.MustRun(t, bin4+"-save")+gw.MustRun(t, bin6+"-save"), "")
		},
	}
	if dnat {
		fw.name += "-ctstate-dnat"
		fw.acceptMark = func(t *testing.T, gw *netns.NS) {
			both(t, gw, "-I", "FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		}
	}
	return fw
}

// nativeNFT is a native nftables firewall: table inet filter, as
// distributions ship it in /etc/nftables.conf, whose rule for pasvgate
// accepts its mark, or, if dnat, every DNATed connection.
func nativeNFT(dnat bool) hostFirewall {
	rule := []string{"ct", "mark", "and", fmt.Sprintf("0x%x", DefaultCtMark), "==", fmt.Sprintf("0x%x", DefaultCtMark), "accept"}
	name := "nftables"
	if dnat {
		rule, name = []string{"ct", "status", "dnat", "accept"}, name+"-ct-status-dnat"
	}
	return hostFirewall{
		name: name,
		bins: []string{"nft"},
		drop: func(t *testing.T, gw *netns.NS) {
			gw.MustRun(t, "nft", "add", "table", "inet", "filter")
			gw.MustRun(t, "nft", "add", "chain", "inet", "filter", "forward",
				"{ type filter hook forward priority filter; policy drop; }")
		},
		acceptMark: func(t *testing.T, gw *netns.NS) {
			gw.MustRun(t, "nft", append([]string{"insert", "rule", "inet", "filter", "forward"}, rule...)...)
		},
		dump: func(t *testing.T, gw *netns.NS) string {
			return gw.MustRun(t, "nft", "list", "table", "inet", "filter")
		},
	}
}

// require skips the test unless the firewall's binaries are installed.
func (fw hostFirewall) require(t *testing.T) {
	for _, b := range fw.bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// nftRuleset is `nft list ruleset` in ns, or "" without nft.
func nftRuleset(t *testing.T, ns *netns.NS) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	return ns.MustRun(t, "nft", "list", "ruleset")
}

// expiries matches the remaining lifetime nft prints for an element.
var expiries = regexp.MustCompile(`expires [0-9hms]+`)

// stableRuleset is nftRuleset with element lifetimes blanked.
func stableRuleset(t *testing.T, ns *netns.NS) string {
	return strings.TrimSpace(expiries.ReplaceAllString(nftRuleset(t, ns), "expires X"))
}
