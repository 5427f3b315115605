package hostfw

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestDecide is --backend auto over described host firewalls, without
// root: nftables whenever the kernel runs it and every dropping forward
// chain can get pasvgate's accept; iptables when the kernel cannot, when
// --host-firewall leave forbids the accept, or when the tool to write it
// is missing.
func TestDecide(t *testing.T) {
	const mark = 0x10000000
	dropNFT := Chain{Kind: IptablesNFT, Family: "ip", Table: "filter", Name: "FORWARD", Drops: true}
	dropNFT6 := Chain{Kind: IptablesNFT, Family: "ip6", Table: "filter", Name: "FORWARD", Drops: true}
	dropLegacy := Chain{Kind: IptablesLegacy, Family: "ip", Table: "filter", Name: "FORWARD", Drops: true}
	dropNative := Chain{Kind: Native, Family: "inet", Table: "filter", Name: "forward", Drops: true}
	acceptPolicy := Chain{Kind: Native, Family: "inet", Table: "fw", Name: "fwd"}
	hostAccepts := dropNative
	hostAccepts.Accepts = true
	ours := dropNative
	ours.Ours = true
	noLegacy := map[Kind]error{IptablesLegacy: errors.New("iptables-legacy not found")}

	cases := []struct {
		name    string
		s       State
		backend string
		accept  []string
		reason  string
	}{
		{"no firewall", State{Manage: true}, Nftables, nil, "let its data connections through"},
		{"kernel cannot", State{NFTables: errors.New("no nf_tables"), Manage: true, Chains: []Chain{dropNFT}}, Iptables, nil, "no nf_tables"},
		{"intercept cannot", State{Intercept: errors.New("no tproxy"), Manage: true}, Iptables, nil, "--intercept: no tproxy"},
		{"policy accept", State{Manage: true, Chains: []Chain{acceptPolicy}}, Nftables, nil, "let its data connections through"},
		{"iptables-nft drop, both families", State{Manage: true, Chains: []Chain{dropNFT, dropNFT6}}, Nftables,
			[]string{"ip filter FORWARD", "ip6 filter FORWARD"}, "accepts conntrack mark 0x10000000"},
		{"iptables-legacy drop", State{Manage: true, Chains: []Chain{dropLegacy}}, Nftables, []string{"iptables-legacy filter FORWARD"}, ""},
		{"native drop", State{Manage: true, Chains: []Chain{dropNative}}, Nftables, []string{"inet filter forward"}, ""},
		{"native drop, host's own accept", State{Manage: true, Chains: []Chain{hostAccepts}}, Nftables, nil, ""},
		{"native drop, pasvgate's accept already there", State{Manage: true, Chains: []Chain{ours}}, Nftables, []string{"inet filter forward"}, ""},
		{"leave, drop", State{Chains: []Chain{dropNFT, dropNative}}, Iptables, nil, "ip filter FORWARD, inet filter forward drops by default"},
		{"leave, pasvgate's accept left from before", State{Chains: []Chain{ours}}, Iptables, nil, "--host-firewall leave"},
		{"leave, host's own accept", State{Chains: []Chain{hostAccepts}}, Nftables, nil, ""},
		{"legacy tool missing", State{Manage: true, Tools: noLegacy, Chains: []Chain{dropLegacy, dropNative}}, Iptables, nil, "iptables-legacy not found"},
		{"legacy tool missing, no legacy chain", State{Manage: true, Tools: noLegacy, Chains: []Chain{dropNative}}, Nftables, []string{"inet filter forward"}, ""},
	}
	for _, c := range cases {
		c.s.Mark = mark
		d := Decide(c.s)
		var accept []string
		for _, ch := range d.Accept {
			accept = append(accept, ch.String())
		}
		if d.Backend != c.backend || !slices.Equal(accept, c.accept) || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("%s: Decide = %s, accept %q, %q; want %s, accept %q, reason with %q",
				c.name, d.Backend, accept, d.Reason, c.backend, c.accept, c.reason)
		}
	}
}

// TestReadLegacy reads iptables-legacy's FORWARD as `-S` prints it.
func TestReadLegacy(t *testing.T) {
	const mark = 0x10000000
	own := []string{"-N PASVGATE-HOSTFW",
		`-A PASVGATE-HOSTFW -m connmark --mark 0x10000000/0x10000000 -m comment --comment "pasvgate host-firewall" -j ACCEPT`}
	jump := `-A FORWARD -m comment --comment "pasvgate host-firewall" -j PASVGATE-HOSTFW`
	cases := []struct {
		name                 string
		lines, own           []string
		drops, accepts, ours bool
	}{
		{"policy accept", []string{"-P FORWARD ACCEPT"}, nil, false, false, false},
		{"policy drop", []string{"-P FORWARD DROP", "-A FORWARD -i eth0 -j ACCEPT"}, nil, true, false, false},
		{"connmark accept", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000/0x10000000 -j ACCEPT"}, nil, true, true, false},
		{"connmark without mask", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000 -j ACCEPT"}, nil, true, true, false},
		{"other connmark", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x1/0x1 -j ACCEPT"}, nil, true, false, false},
		{"packet mark, not connmark", []string{"-P FORWARD DROP", "-A FORWARD -m mark --mark 0x10000000/0x10000000 -j ACCEPT"}, nil, true, false, false},
		{"negated", []string{"-P FORWARD DROP", "-A FORWARD -m connmark ! --mark 0x10000000/0x10000000 -j ACCEPT"}, nil, true, false, false},
		{"connmark drop", []string{"-P FORWARD DROP", "-A FORWARD -m connmark --mark 0x10000000/0x10000000 -j DROP"}, nil, true, false, false},
		{"ctstate DNAT", []string{"-P FORWARD DROP", "-A FORWARD -m conntrack --ctstate RELATED,DNAT -j ACCEPT"}, nil, true, true, false},
		{"ctstate established", []string{"-P FORWARD DROP", "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}, nil, true, false, false},
		{"pasvgate's jump and accept", []string{"-P FORWARD DROP", jump}, own, true, false, true},
		{"pasvgate's jump, chain emptied", []string{"-P FORWARD DROP", jump}, own[:1], true, false, false},
		{"pasvgate's chain, no jump", []string{"-P FORWARD DROP"}, own, true, false, false},
	}
	for _, c := range cases {
		got := readLegacy("ip", c.lines, c.own, mark)
		if got.Drops != c.drops || got.Accepts != c.accepts || got.Ours != c.ours {
			t.Errorf("%s: drops %v accepts %v ours %v, want %v %v %v", c.name, got.Drops, got.Accepts, got.Ours, c.drops, c.accepts, c.ours)
		}
	}
}
