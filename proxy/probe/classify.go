package probe

import "net/netip"

// Class is what an address means to a client somewhere on the Internet:
// whether such a client could ever connect to it. A 227 reply that
// advertises anything but ClassPublic works only for clients on the
// server's own network, or when it is the very address the client dialled.
type Class string

// The classes. Only ClassPublic is routable on the Internet.
const (
	ClassPublic        Class = "public"
	ClassPrivate       Class = "private"       // RFC 1918; IPv6 unique local, RFC 4193
	ClassShared        Class = "shared"        // RFC 6598: carrier-grade NAT, 100.64.0.0/10
	ClassLoopback      Class = "loopback"      // 127.0.0.0/8, ::1
	ClassUnspecified   Class = "unspecified"   // 0.0.0.0, ::
	ClassLinkLocal     Class = "link-local"    // RFC 3927, 169.254.0.0/16; fe80::/10
	ClassDocumentation Class = "documentation" // RFC 5737, RFC 3849: examples and test labs
	ClassReserved      Class = "reserved"      // special-purpose, multicast, future use
)

// classRange is one row of the classification table.
type classRange struct {
	prefix netip.Prefix
	class  Class
	what   string // how a message names the range
}

// classTable is searched in order, so a more specific prefix comes before
// the one that contains it (0.0.0.0/32 before 0.0.0.0/8). It follows the
// IANA special-purpose registries (RFC 6890), keeping the ranges an FTP
// server is actually seen to advertise apart, so a message can name them.
var classTable = func() []classRange {
	rows := []struct {
		prefix string
		class  Class
		what   string
	}{
		{"0.0.0.0/32", ClassUnspecified, "the unspecified address"},
		{"0.0.0.0/8", ClassReserved, `a reserved address ("this network", RFC 791)`},
		{"10.0.0.0/8", ClassPrivate, "a private address (RFC 1918)"},
		{"100.64.0.0/10", ClassShared, "a carrier-grade NAT address (RFC 6598)"},
		{"127.0.0.0/8", ClassLoopback, "a loopback address"},
		{"169.254.0.0/16", ClassLinkLocal, "a link-local address (RFC 3927)"},
		{"172.16.0.0/12", ClassPrivate, "a private address (RFC 1918)"},
		{"192.0.0.0/24", ClassReserved, "a reserved address (IETF protocol assignments, RFC 6890)"},
		{"192.0.2.0/24", ClassDocumentation, "a documentation address (RFC 5737)"},
		{"192.168.0.0/16", ClassPrivate, "a private address (RFC 1918)"},
		{"198.18.0.0/15", ClassReserved, "a reserved address (benchmarking, RFC 2544)"},
		{"198.51.100.0/24", ClassDocumentation, "a documentation address (RFC 5737)"},
		{"203.0.113.0/24", ClassDocumentation, "a documentation address (RFC 5737)"},
		{"224.0.0.0/4", ClassReserved, "a multicast address"},
		{"240.0.0.0/4", ClassReserved, "a reserved address (240.0.0.0/4)"},
		{"::/128", ClassUnspecified, "the unspecified address"},
		{"::1/128", ClassLoopback, "a loopback address"},
		{"fc00::/7", ClassPrivate, "a unique local address (RFC 4193)"},
		{"fe80::/10", ClassLinkLocal, "a link-local address"},
		{"2001:db8::/32", ClassDocumentation, "a documentation address (RFC 3849)"},
		{"ff00::/8", ClassReserved, "a multicast address"},
	}
	t := make([]classRange, len(rows))
	for i, r := range rows {
		t[i] = classRange{netip.MustParsePrefix(r.prefix), r.class, r.what}
	}
	return t
}()

// Classify says what a is to a client on the Internet. An IPv4-mapped IPv6
// address is classified as the IPv4 address it carries, because that is
// what a dual-stack socket reports for an IPv4 peer. An invalid address is
// ClassUnspecified: nothing can connect to it.
func Classify(a netip.Addr) Class {
	c, _ := classify(a)
	return c
}

// Describe names a's class in words for a message ("a private address (RFC
// 1918)"); a public address is "a public address".
func Describe(a netip.Addr) string {
	_, what := classify(a)
	return what
}

func classify(a netip.Addr) (Class, string) {
	if !a.IsValid() {
		return ClassUnspecified, "no address"
	}
	a = a.Unmap().WithZone("")
	for _, r := range classTable {
		if r.prefix.Contains(a) {
			return r.class, r.what
		}
	}
	return ClassPublic, "a public address"
}

// Routable reports whether a client anywhere on the Internet could reach an
// address of class c. Documentation addresses are not: outside a test lab
// they mean a configuration copied from an example.
func (c Class) Routable() bool { return c == ClassPublic }
