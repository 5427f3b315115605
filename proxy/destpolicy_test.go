package proxy

import (
	"net/netip"
	"testing"
)

func TestDestPolicy(t *testing.T) {
	for _, tc := range []struct {
		entries []string
		allow   []string
		deny    []string
	}{
		{nil, // the default: public only
			[]string{"203.0.113.20", "198.51.100.7", "8.8.8.8", "2001:db8::1", "2a00:1450::1", "::ffff:203.0.113.20"},
			[]string{"10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.169.254",
				"0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.0.8", "198.18.0.1", "::1", "fd00::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1"}},
		{[]string{"public", "10.1.2.0/24"},
			[]string{"203.0.113.20", "10.1.2.3"},
			[]string{"10.1.3.1", "192.168.1.1"}},
		{[]string{"203.0.113.20", "2001:db8::/32"},
			[]string{"203.0.113.20", "2001:db8::5"},
			[]string{"203.0.113.21", "8.8.8.8", "10.0.0.1"}},
	} {
		p, err := ParseDestPolicy(tc.entries)
		if err != nil {
			t.Fatalf("%q: %v", tc.entries, err)
		}
		for _, a := range tc.allow {
			if !p.Allows(netip.MustParseAddr(a)) {
				t.Errorf("policy %s refuses %s", p, a)
			}
		}
		for _, a := range tc.deny {
			if p.Allows(netip.MustParseAddr(a)) {
				t.Errorf("policy %s admits %s", p, a)
			}
		}
	}
	for _, bad := range [][]string{{"everything"}, {"10.1.2.3/8"}, {"fe80::1%lan0"}, {"10.0.0.0/33"}} {
		if _, err := ParseDestPolicy(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
