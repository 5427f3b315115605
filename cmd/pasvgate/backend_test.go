package main

import "testing"

func TestLegacyBlocks(t *testing.T) {
	const mark = 0x10000000
	cases := []struct {
		name  string
		lines []string
		want  bool
	}{
		{"policy accept", []string{"-P FORWARD ACCEPT"}, false},
		{"policy drop", []string{"-P FORWARD DROP", "-A FORWARD -i eth0 -j ACCEPT"}, true},
		{"connmark accept", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000/0x10000000 -j ACCEPT"}, false},
		{"connmark without mask", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000 -j ACCEPT"}, false},
		{"other connmark", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x1/0x1 -j ACCEPT"}, true},
		{"packet mark, not connmark", []string{"-P FORWARD DROP", "-A FORWARD -m mark --mark 0x10000000/0x10000000 -j ACCEPT"}, true},
		{"negated", []string{"-P FORWARD DROP", "-A FORWARD -m connmark ! --mark 0x10000000/0x10000000 -j ACCEPT"}, true},
		{"connmark drop", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000/0x10000000 -j DROP"}, true},
		{"ctstate DNAT", []string{"-P FORWARD DROP", "-A FORWARD -m conntrack --ctstate RELATED,DNAT -j ACCEPT"}, false},
		{"ctstate established", []string{"-P FORWARD DROP", "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}, true},
	}
	for _, c := range cases {
		if got := legacyBlocks(c.lines, mark); got != c.want {
			t.Errorf("%s: legacyBlocks = %v, want %v", c.name, got, c.want)
		}
	}
}
