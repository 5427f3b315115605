package probe

import (
	"net/netip"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		class Class
		what  string // part of Describe's text
	}{
		{"0.0.0.0", ClassUnspecified, "unspecified"},
		{"0.1.2.3", ClassReserved, "this network"},
		{"10.0.0.5", ClassPrivate, "RFC 1918"},
		{"10.255.255.255", ClassPrivate, "RFC 1918"},
		{"11.0.0.1", ClassPublic, "public"},
		{"100.63.255.255", ClassPublic, "public"},
		{"100.64.0.1", ClassShared, "carrier-grade NAT"},
		{"100.127.255.254", ClassShared, "RFC 6598"},
		{"100.128.0.0", ClassPublic, "public"},
		{"127.0.0.1", ClassLoopback, "loopback"},
		{"127.0.0.9", ClassLoopback, "loopback"},
		{"169.254.10.1", ClassLinkLocal, "link-local"},
		{"172.15.255.255", ClassPublic, "public"},
		{"172.16.0.1", ClassPrivate, "RFC 1918"},
		{"172.31.255.255", ClassPrivate, "RFC 1918"},
		{"172.32.0.0", ClassPublic, "public"},
		{"192.0.0.8", ClassReserved, "IETF"},
		{"192.0.2.10", ClassDocumentation, "RFC 5737"},
		{"192.0.3.1", ClassPublic, "public"},
		{"192.168.1.10", ClassPrivate, "RFC 1918"},
		{"198.18.0.1", ClassReserved, "benchmarking"},
		{"198.19.255.255", ClassReserved, "benchmarking"},
		{"198.51.100.7", ClassDocumentation, "RFC 5737"},
		{"203.0.113.2", ClassDocumentation, "RFC 5737"},
		{"8.8.8.8", ClassPublic, "public"},
		{"224.0.0.1", ClassReserved, "multicast"},
		{"240.0.0.1", ClassReserved, "240.0.0.0/4"},
		{"255.255.255.255", ClassReserved, "240.0.0.0/4"},
		{"::", ClassUnspecified, "unspecified"},
		{"::1", ClassLoopback, "loopback"},
		{"fd12:3456::1", ClassPrivate, "RFC 4193"},
		{"fe80::1", ClassLinkLocal, "link-local"},
		{"fe80::1%eth0", ClassLinkLocal, "link-local"},
		{"2001:db8:2::10", ClassDocumentation, "RFC 3849"},
		{"2a00:1450::1", ClassPublic, "public"},
		{"ff02::1", ClassReserved, "multicast"},
		// A dual-stack socket's view of an IPv4 peer.
		{"::ffff:10.1.2.3", ClassPrivate, "RFC 1918"},
		{"::ffff:203.0.113.1", ClassDocumentation, "RFC 5737"},
		{"::ffff:0.0.0.0", ClassUnspecified, "unspecified"},
	} {
		a := netip.MustParseAddr(tc.addr)
		if got := Classify(a); got != tc.class {
			t.Errorf("Classify(%s) = %s, want %s", tc.addr, got, tc.class)
		}
		if got := Describe(a); !strings.Contains(got, tc.what) {
			t.Errorf("Describe(%s) = %q, want it to mention %q", tc.addr, got, tc.what)
		}
	}
	if got := Classify(netip.Addr{}); got != ClassUnspecified {
		t.Errorf("Classify(invalid) = %s", got)
	}
}

func TestRoutable(t *testing.T) {
	for _, c := range []Class{ClassPrivate, ClassShared, ClassLoopback, ClassUnspecified, ClassLinkLocal, ClassDocumentation, ClassReserved} {
		if c.Routable() {
			t.Errorf("%s is routable", c)
		}
	}
	if !ClassPublic.Routable() {
		t.Error("public is not routable")
	}
}
