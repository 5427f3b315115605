package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/test/netns"
)

// Addresses of the lab. Only documentation ranges: nothing the lab sends
// can mean anything outside it.
const (
	clientAddr  = "203.0.113.10"
	gwPublic    = "203.0.113.1" // where clients dial port 21 (A and B)
	gwPublic2   = "203.0.113.2" // pasvgate's --public-addr: 227 replies point here
	gwPrivate   = "192.0.2.1"
	serverAddr  = "192.0.2.10"
	iptNFT      = "iptables-nft"
	iptLegacy   = "iptables-legacy"
	serverPorts = "30000-30999" // the FTP server's passive range
	// serverPortsIpt is serverPorts in iptables' syntax.
	serverPortsIpt = "30000:30999"
	dataPorts      = "40000-40999" // pasvgate's public data range
)

// Built-in chains of the tables any gateway of the bench uses.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// lab is the three namespaces:
//
//	client ns              gw ns                          server ns
//	eth0 203.0.113.10/24 - pub0  203.0.113.1/24, .2/24
//	                       priv0 192.0.2.1/24  ---------- eth0 192.0.2.10/24
//
// The client's and the server's default routes point at the gw, which
// forwards IPv4 under a FORWARD policy of DROP: nothing crosses unless the
// gateway under test lets it.
type lab struct {
	client, gw, server *netns.NS
	// legacy says whether iptables-legacy tables exist in the gw (for the
	// legacy pasvgate column). They then exist for every column, since
	// their hooks cost every packet a little.
	legacy bool
	// baseline is the gw's rules between gateways (see snapshot).
	baseline string
}

// newLab builds the topology. On error it deletes whatever it made.
func newLab(ctx context.Context, legacy bool, nsPrefix string) (l *lab, retErr error) {
	if err := netns.Sweep(nsPrefix); err != nil {
		return nil, fmt.Errorf("sweeping namespaces of dead benches: %w", err)
	}
	l = &lab{legacy: legacy}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, l.close())
		}
	}()
	var err error
	// pgbench-c-PID-RAND and so on: Sweep(nsPrefix) finds all three of
	// a dead bench by its PID.
	for role, p := range map[string]**netns.NS{"c": &l.client, "g": &l.gw, "s": &l.server} {
		if *p, err = netns.Create(nsPrefix + "-" + role); err != nil {
			return l, err
		}
	}
	steps := []func() error{
		func() error { return netns.Veth(l.gw, "pub0", l.client, "eth0") },
		func() error { return netns.Veth(l.gw, "priv0", l.server, "eth0") },
		func() error { return l.client.AddAddr("eth0", netip.MustParsePrefix(clientAddr+"/24")) },
		func() error { return l.client.AddDefaultRoute(netip.MustParseAddr(gwPublic)) },
		func() error { return l.gw.AddAddr("pub0", netip.MustParsePrefix(gwPublic+"/24")) },
		func() error { return l.gw.AddAddr("pub0", netip.MustParsePrefix(gwPublic2+"/24")) },
		func() error { return l.gw.AddAddr("priv0", netip.MustParsePrefix(gwPrivate+"/24")) },
		func() error { return l.server.AddAddr("eth0", netip.MustParsePrefix(serverAddr+"/24")) },
		func() error { return l.server.AddDefaultRoute(netip.MustParseAddr(gwPrivate)) },
		func() error { return l.gw.Sysctl("net.ipv4.ip_forward", "1") },
		// TCP timestamps without a random offset per destination. Column
		// C reaches the server directly and B through the helper's DNAT,
		// both from the client's own address: with offsets that differ
		// by destination, a data connection of B could meet, at the
		// server, a tuple that one of C's left in TIME_WAIT with higher
		// timestamps, and be refused (PAWS), which failed a bench now and
		// then ("connection refused" in column B).
		func() error { return l.client.Sysctl("net.ipv4.tcp_timestamps", "2") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return l, err
		}
	}
	if err := l.prepareTables(ctx); err != nil {
		return l, err
	}
	if l.baseline, err = l.snapshot(ctx); err != nil {
		return l, err
	}
	return l, nil
}

// prepareTables creates, before anything is measured, every table and
// built-in chain any gateway will touch, and sets FORWARD to DROP.
// iptables-nft registers a built-in chain's hook only when a rule first
// lands in it, and an iptables-legacy table hooks in when first used; a
// hook, even empty, costs every packet something, and conntrack runs as
// soon as a nat chain exists. Made up front, every gateway in every round
// pays the same, and a gateway's rounds cannot make the next one slower.
func (l *lab) prepareTables(ctx context.Context) error {
	for _, bin := range l.iptablesBinaries() {
		for table, chains := range builtinChains {
			for _, c := range chains {
				if _, err := run(ctx, l.gw, "", bin, "-w", "5", "-t", table, "-P", c, "ACCEPT"); err != nil {
					return err
				}
			}
		}
	}
	// The policy lives in the backend that B, C and pasvgate with
	// iptables-nft program. A packet must pass the hooks of both backends,
	// so the legacy column moves it for its rounds (setForwardPolicy).
	_, err := run(ctx, l.gw, "", iptNFT, "-w", "5", "-P", "FORWARD", "DROP")
	return err
}

// iptablesBinaries are the iptables binaries whose tables the gw has:
// pasvgate programs the IPv6 family too (its jumps), so its tables exist
// as well.
func (l *lab) iptablesBinaries() []string {
	bins := []string{iptNFT, "ip6tables-nft"}
	if l.legacy {
		bins = append(bins, iptLegacy, "ip6tables-legacy")
	}
	return bins
}

// setForwardPolicy puts the FORWARD DROP policy into the iptables backend
// ipt (nft or legacy) and ACCEPT into the other, so that exactly one
// backend filters forwarding: the one whose accepts the gateway installs.
func (l *lab) setForwardPolicy(ctx context.Context, ipt string) error {
	other := iptLegacy
	if ipt == iptLegacy {
		other = iptNFT
	}
	if _, err := run(ctx, l.gw, "", ipt, "-w", "5", "-P", "FORWARD", "DROP"); err != nil {
		return err
	}
	if other == iptLegacy && !l.legacy {
		return nil
	}
	_, err := run(ctx, l.gw, "", other, "-w", "5", "-P", "FORWARD", "ACCEPT")
	return err
}

// counters matches the packet and byte counters iptables-save prints on
// chain lines; they change with traffic, rules do not.
var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// snapshot returns the gw's whole ruleset in both iptables families and as
// nftables sees it, without comments and counters. Between two gateways it
// must equal the baseline taken before the first: a gateway that left a
// rule behind would otherwise bend every measurement after it.
func (l *lab) snapshot(ctx context.Context) (string, error) {
	var b strings.Builder
	// Both families and both backends, whether in use or not: a leak into
	// a backend nobody looks at is still a leak.
	for _, save := range []string{iptNFT + "-save", "ip6tables-nft-save", iptLegacy + "-save", "ip6tables-legacy-save"} {
		out, err := run(ctx, l.gw, "", save)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "== %s\n", save)
		for line := range strings.SplitSeq(out, "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, "[]"))
			b.WriteByte('\n')
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		// -s leaves out counters and other state.
		out, err := run(ctx, l.gw, "", "nft", "-s", "list", "ruleset")
		if err != nil {
			return "", err
		}
		b.WriteString("== nft -s list ruleset\n")
		b.WriteString(out)
	}
	return b.String(), nil
}

// checkClean fails unless the gw's rules are back to the baseline.
func (l *lab) checkClean(ctx context.Context, after string) error {
	now, err := l.snapshot(ctx)
	if err != nil {
		return err
	}
	if now != l.baseline {
		return fmt.Errorf("rules in the gw are not back to the baseline after %s:\n--- baseline\n%s\n--- now\n%s", after, l.baseline, now)
	}
	return nil
}

// flushConntrack empties the gw's connection tracking table, so that no
// gateway inherits another's NAT bindings or helper assignments (their
// expectations go with them), but for TCP connections in TIME_WAIT. Those
// carry no binding a new connection could inherit (a SYN that meets one
// re-creates it), and they are what keeps the kernel's SNAT from giving a
// new data connection the tuple of one that the server still holds in
// TIME_WAIT: the server would refuse its SYN, and the one-shot mapping
// its retry (what failed the bench's trace runs before, issue 13).
func (l *lab) flushConntrack() error {
	h, err := netlink.NewHandleAt(l.gw.Handle())
	if err != nil {
		return fmt.Errorf("opening netlink in %s: %w", l.gw.Name, err)
	}
	defer h.Close()
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		if _, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, notTimeWait{}); err != nil {
			return fmt.Errorf("flushing conntrack in %s: %w", l.gw.Name, err)
		}
	}
	return nil
}

// notTimeWait matches every conntrack entry but TCP's in TIME_WAIT.
type notTimeWait struct{}

func (notTimeWait) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
	return !ok || tcp.State != nl.TCP_CONNTRACK_TIME_WAIT
}

// close kills whatever still runs in the lab's namespaces (by PID: the
// sessions an FTP server forked are in there too) and deletes them.
func (l *lab) close() error {
	var errs []error
	for _, n := range []*netns.NS{l.client, l.gw, l.server} {
		if n == nil {
			continue
		}
		errs = append(errs, killInside(n))
		errs = append(errs, n.Close())
	}
	return errors.Join(errs...)
}

// killInside kills the processes `ip netns pids` finds in ns. They can only
// be the bench's own: nobody else knows the namespace.
func killInside(ns *netns.NS) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns.Name).Output()
	if err != nil {
		return fmt.Errorf("listing processes in %s: %w", ns.Name, err)
	}
	for f := range strings.FieldsSeq(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
	return nil
}
