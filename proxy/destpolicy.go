package proxy

import (
	"fmt"
	"net/netip"
	"strings"
)

// DestPolicy says which servers transparent mode may connect to for its
// clients. pasvgate dials each intercepted connection's destination from
// the router itself, past the router's forwarding policy: without a
// policy a LAN client could reach port 21 on any host the router can
// reach (a management network, another internal segment, the ISP's
// modem) and then get PORT pinholes from there.
//
// The zero value admits public addresses only: global unicast, outside
// the private and special-purpose ranges of NonPublic.
type DestPolicy struct {
	// Prefixes are networks admitted besides (or, with NoPublic,
	// instead of) the public addresses.
	Prefixes []netip.Prefix
	// NoPublic admits only Prefixes.
	NoPublic bool
}

// NonPublic are the ranges DestPolicy does not count as public: private
// (RFC 1918, RFC 4193), shared address space (RFC 6598), loopback,
// link-local, multicast, "this network", IETF protocol assignments,
// benchmarking (RFC 2544) and the reserved 240.0.0.0/4. The documentation
// ranges (RFC 5737, RFC 3849) are not among them: no router forwards them,
// and the test labs stand them in for the internet.
var NonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// IsPublic reports whether a is a public address in DestPolicy's sense.
func IsPublic(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.Zone() != "" {
		return false
	}
	for _, p := range NonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// Allows reports whether transparent mode may connect to a.
func (p DestPolicy) Allows(a netip.Addr) bool {
	a = a.Unmap()
	if !p.NoPublic && IsPublic(a) {
		return true
	}
	for _, pr := range p.Prefixes {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

// String formats the policy as ParseDestPolicy reads it.
func (p DestPolicy) String() string {
	var parts []string
	if !p.NoPublic {
		parts = append(parts, "public")
	}
	for _, pr := range p.Prefixes {
		parts = append(parts, pr.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// ParseDestPolicy reads a list of entries: "public" for the public
// addresses, a network ("192.0.2.0/24", "2001:db8::/32") or one address.
// An empty list is the zero value (public only); a list without "public"
// admits its networks only.
func ParseDestPolicy(entries []string) (DestPolicy, error) {
	if len(entries) == 0 {
		return DestPolicy{}, nil
	}
	p := DestPolicy{NoPublic: true}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "public" {
			p.NoPublic = false
			continue
		}
		pr, err := netip.ParsePrefix(e)
		if err != nil {
			a, aerr := netip.ParseAddr(e)
			if aerr != nil || a.Zone() != "" {
				return DestPolicy{}, fmt.Errorf("%q: want public, a network (ADDR/BITS) or an address", e)
			}
			pr = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if pr != pr.Masked() {
			return DestPolicy{}, fmt.Errorf("%q: host bits set; did you mean %s?", e, pr.Masked())
		}
		p.Prefixes = append(p.Prefixes, pr)
	}
	return p, nil
}
