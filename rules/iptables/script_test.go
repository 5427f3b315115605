package iptables

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"github.com/pasvgate/pasvgate/rules/rulestest"
)

// These tests need no root: rule generation and parsing are pure.

func TestMappingRules(t *testing.T) {
	noSNAT := rulestest.Sample("m-b1", 40002)
	noSNAT.SNAT = netip.Addr{}
	noSNAT.Created = time.Time{}
	tests := []struct {
		name string
		m    rules.Mapping
		want []rule
	}{
		{"IPv4 with SNAT", rulestest.Sample("m-a1", 40001), []rule{
			{tableFilter, ChainForward, []string{"-s", "203.0.113.10/32", "-d", "192.0.2.10/32", "-p", "tcp", "-m", "tcp", "--dport", "30000",
				"-m", "conntrack", "--ctstate", "NEW", "--ctorigdst", "203.0.113.2", "--ctorigdstport", "40001",
				"-m", "comment", "--comment", "pasvgate id=m-a1 created=1700000000", "-j", "PASVGATE-ADMIT"}},
			{tableNAT, ChainSNAT, []string{"-s", "203.0.113.10/32", "-d", "192.0.2.10/32", "-p", "tcp", "-m", "tcp", "--dport", "30000",
				"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", "203.0.113.2", "--ctorigdstport", "40001",
				"-m", "comment", "--comment", "pasvgate id=m-a1 created=1700000000", "-j", "SNAT", "--to-source", "192.0.2.1", "--random-fully"}},
			{tableNAT, ChainDNAT, []string{"-s", "203.0.113.10/32", "-d", "203.0.113.2/32", "-p", "tcp", "-m", "tcp", "--dport", "40001",
				"-m", "recent", "!", "--rcheck", "--name", "pasvgate-m-a1", "--mask", "255.255.255.255", "--rsource", "-m", "recent", "--set", "--name", "pasvgate-m-a1", "--mask", "255.255.255.255", "--rsource",
				"-m", "comment", "--comment", "pasvgate id=m-a1 created=1700000000", "-j", "DNAT", "--to-destination", "192.0.2.10:30000"}},
		}},
		{"IPv4 without SNAT or Created", noSNAT, []rule{
			{tableFilter, ChainForward, []string{"-s", "203.0.113.10/32", "-d", "192.0.2.10/32", "-p", "tcp", "-m", "tcp", "--dport", "30000",
				"-m", "conntrack", "--ctstate", "NEW", "--ctorigdst", "203.0.113.2", "--ctorigdstport", "40002",
				"-m", "comment", "--comment", "pasvgate id=m-b1", "-j", "PASVGATE-ADMIT"}},
			{tableNAT, ChainDNAT, []string{"-s", "203.0.113.10/32", "-d", "203.0.113.2/32", "-p", "tcp", "-m", "tcp", "--dport", "40002",
				"-m", "recent", "!", "--rcheck", "--name", "pasvgate-m-b1", "--mask", "255.255.255.255", "--rsource", "-m", "recent", "--set", "--name", "pasvgate-m-b1", "--mask", "255.255.255.255", "--rsource",
				"-m", "comment", "--comment", "pasvgate id=m-b1", "-j", "DNAT", "--to-destination", "192.0.2.10:30000"}},
		}},
		{"IPv6", rulestest.Sample6("m-6", 40003), []rule{
			{tableFilter, ChainForward, []string{"-s", "2001:db8:1::10/128", "-d", "2001:db8:2::10/128", "-p", "tcp", "-m", "tcp", "--dport", "30000",
				"-m", "conntrack", "--ctstate", "NEW", "--ctorigdst", "2001:db8:1::2", "--ctorigdstport", "40003",
				"-m", "comment", "--comment", "pasvgate id=m-6 created=1700000000", "-j", "PASVGATE-ADMIT"}},
			{tableNAT, ChainDNAT, []string{"-s", "2001:db8:1::10/128", "-d", "2001:db8:1::2/128", "-p", "tcp", "-m", "tcp", "--dport", "40003",
				"-m", "recent", "!", "--rcheck", "--name", "pasvgate-m-6", "--mask", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "--rsource", "-m", "recent", "--set", "--name", "pasvgate-m-6", "--mask", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "--rsource",
				"-m", "comment", "--comment", "pasvgate id=m-6 created=1700000000", "-j", "DNAT", "--to-destination", "[2001:db8:2::10]:30000"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.m.Validate(); err != nil {
				t.Fatal(err)
			}
			got := mappingRules(tt.m)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d rules, want %d: %v", len(got), len(tt.want), got)
			}
			for i := range got {
				if got[i].table != tt.want[i].table || got[i].chain != tt.want[i].chain || !slices.Equal(got[i].args, tt.want[i].args) {
					t.Errorf("rule %d:\n got %s %q\nwant %s %q", i, got[i].chain, got[i].args, tt.want[i].chain, tt.want[i].args)
				}
			}
		})
	}
}

func TestInstallRemoveScripts(t *testing.T) {
	m := rulestest.Sample("m-a1", 40001)
	const fwd = `PASVGATE-FORWARD -s 203.0.113.10/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 30000 -m conntrack --ctstate NEW --ctorigdst 203.0.113.2 --ctorigdstport 40001 -m comment --comment "pasvgate id=m-a1 created=1700000000" -j PASVGATE-ADMIT`
	const snat = `PASVGATE-SNAT -s 203.0.113.10/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 30000 -m conntrack --ctstate DNAT --ctorigdst 203.0.113.2 --ctorigdstport 40001 -m comment --comment "pasvgate id=m-a1 created=1700000000" -j SNAT --to-source 192.0.2.1 --random-fully`
	const dnat = `PASVGATE-DNAT -s 203.0.113.10/32 -d 203.0.113.2/32 -p tcp -m tcp --dport 40001 -m recent ! --rcheck --name pasvgate-m-a1 --mask 255.255.255.255 --rsource -m recent --set --name pasvgate-m-a1 --mask 255.255.255.255 --rsource -m comment --comment "pasvgate id=m-a1 created=1700000000" -j DNAT --to-destination 192.0.2.10:30000`
	wantInstall := `*filter
-C FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-C PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j CONNMARK --set-xmark 0x10000000/0x10000000
-C PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j ACCEPT
-A ` + fwd + `
COMMIT
*nat
-C PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-C OUTPUT -m comment --comment pasvgate -j PASVGATE-DNAT
-C POSTROUTING -m comment --comment pasvgate -j PASVGATE-SNAT
-A ` + snat + `
-A ` + dnat + `
COMMIT
`
	if got := installScript(m, DefaultConnMark, true); got != wantInstall {
		t.Errorf("installScript:\n%s\nwant:\n%s", got, wantInstall)
	}
	wantNoCheck := "*filter\n-A " + fwd + "\nCOMMIT\n*nat\n-A " + snat + "\n-A " + dnat + "\nCOMMIT\n"
	if got := installScript(m, DefaultConnMark, false); got != wantNoCheck {
		t.Errorf("installScript without checks:\n%s\nwant:\n%s", got, wantNoCheck)
	}
	wantRemove := "*nat\n-D " + dnat + "\n-D " + snat + "\nCOMMIT\n*filter\n-D " + fwd + "\nCOMMIT\n"
	if got := removeScript(m, false); got != wantRemove {
		t.Errorf("removeScript:\n%s\nwant:\n%s", got, wantRemove)
	}
	wantBlind := "*filter\n-D " + fwd + "\nCOMMIT\n*nat\n-D " + snat + "\n-D " + dnat + "\nCOMMIT\n"
	if got := blindRollbackScript(m); got != wantBlind {
		t.Errorf("blindRollbackScript:\n%s\nwant:\n%s", got, wantBlind)
	}
	// Another mark changes the admit checks only.
	if got := installScript(m, 0x4, true); !strings.Contains(got, "--set-xmark 0x4/0x4") {
		t.Errorf("installScript with mark 0x4 checks:\n%s", got)
	}
}

// savedState is what iptables-save prints for a namespace where pasvgate
// was set up, with one mapping installed, a duplicated FORWARD jump, a
// PREROUTING jump below someone else's rule and a foreign jump to one of
// pasvgate's chains.
const savedState = `# Generated by iptables-save v1.8.9 on Sun Nov 22 01:42:56 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [10:600]
:OUTPUT ACCEPT [0:0]
:PASVGATE-ADMIT - [0:0]
:PASVGATE-FORWARD - [0:0]
:SITE - [0:0]
-A FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-A FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-A SITE -i lan0 -j PASVGATE-FORWARD
-A PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j CONNMARK --set-xmark 0x10000000/0x10000000
-A PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j ACCEPT
-A PASVGATE-FORWARD -m connmark --mark 0x10000000/0x10000000 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "pasvgate established" -j ACCEPT
-A PASVGATE-FORWARD -s 203.0.113.10/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 30000 -m conntrack --ctstate NEW --ctorigdst 203.0.113.2 --ctorigdstport 40001 -m comment --comment "pasvgate id=m-a1 created=1700000000" -j PASVGATE-ADMIT
COMMIT
# Completed on Sun Nov 22 01:42:56 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PASVGATE-DNAT - [0:0]
:PASVGATE-SNAT - [0:0]
-A PREROUTING -d 203.0.113.5/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.20:80
-A PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-A OUTPUT -m comment --comment pasvgate -j PASVGATE-DNAT
-A POSTROUTING -m comment --comment pasvgate -j PASVGATE-SNAT
-A PASVGATE-DNAT -s 203.0.113.10/32 -d 203.0.113.2/32 -p tcp -m tcp --dport 40001 -m comment --comment "pasvgate id=m-a1 created=1700000000" -j DNAT --to-destination 192.0.2.10:30000
-A PASVGATE-SNAT -s 203.0.113.10/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 30000 -m conntrack --ctstate DNAT --ctorigdst 203.0.113.2 --ctorigdstport 40001 -m comment --comment "pasvgate id=m-a1 created=1700000000" -j SNAT --to-source 192.0.2.1 --random-fully
COMMIT
`

func TestResetScript(t *testing.T) {
	st, err := parseSave(savedState)
	if err != nil {
		t.Fatal(err)
	}
	m := rulestest.Sample("m-z", 40009)
	m.SNAT = netip.Addr{}
	got := resetScript(st, DefaultConnMark, []rules.Mapping{m}, nil)
	want := `*filter
:PASVGATE-FORWARD - [0:0]
:PASVGATE-ADMIT - [0:0]
-D FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-D FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-I FORWARD 1 -m comment --comment pasvgate -j PASVGATE-FORWARD
-A PASVGATE-FORWARD -m connmark --mark 0x10000000/0x10000000 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "pasvgate established" -j ACCEPT
-A PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j CONNMARK --set-xmark 0x10000000/0x10000000
-A PASVGATE-ADMIT -m comment --comment "pasvgate admit" -j ACCEPT
-A PASVGATE-FORWARD -s 203.0.113.10/32 -d 192.0.2.10/32 -p tcp -m tcp --dport 30000 -m conntrack --ctstate NEW --ctorigdst 203.0.113.2 --ctorigdstport 40009 -m comment --comment "pasvgate id=m-z created=1700000000" -j PASVGATE-ADMIT
COMMIT
*nat
:PASVGATE-DNAT - [0:0]
:PASVGATE-SNAT - [0:0]
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-DNAT
-A PASVGATE-DNAT -s 203.0.113.10/32 -d 203.0.113.2/32 -p tcp -m tcp --dport 40009 -m recent ! --rcheck --name pasvgate-m-z --mask 255.255.255.255 --rsource -m recent --set --name pasvgate-m-z --mask 255.255.255.255 --rsource -m comment --comment "pasvgate id=m-z created=1700000000" -j DNAT --to-destination 192.0.2.10:30000
COMMIT
`
	if got != want {
		t.Errorf("resetScript:\n%s", lineDiff(want, got))
	}

	// From nothing, everything is created.
	empty, _ := parseSave("")
	got = resetScript(empty, DefaultConnMark, nil, nil)
	for _, l := range []string{
		"-I FORWARD 1 -m comment --comment pasvgate -j PASVGATE-FORWARD",
		"-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-DNAT",
		"-I OUTPUT 1 -m comment --comment pasvgate -j PASVGATE-DNAT",
		"-I POSTROUTING 1 -m comment --comment pasvgate -j PASVGATE-SNAT",
	} {
		if !strings.Contains(got, l+"\n") {
			t.Errorf("resetScript from nothing lacks %q:\n%s", l, got)
		}
	}
	if strings.Contains(got, "-D ") {
		t.Errorf("resetScript from nothing deletes:\n%s", got)
	}
}

func TestFlushScript(t *testing.T) {
	st, err := parseSave(savedState)
	if err != nil {
		t.Fatal(err)
	}
	want := `*filter
-D FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-D FORWARD -m comment --comment pasvgate -j PASVGATE-FORWARD
-D SITE -i lan0 -j PASVGATE-FORWARD
-F PASVGATE-FORWARD
-F PASVGATE-ADMIT
-X PASVGATE-FORWARD
-X PASVGATE-ADMIT
COMMIT
*nat
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-D OUTPUT -m comment --comment pasvgate -j PASVGATE-DNAT
-D POSTROUTING -m comment --comment pasvgate -j PASVGATE-SNAT
-F PASVGATE-DNAT
-F PASVGATE-SNAT
-X PASVGATE-DNAT
-X PASVGATE-SNAT
COMMIT
`
	if got := flushScript(st); got != want {
		t.Errorf("flushScript:\n%s", lineDiff(want, got))
	}
	clean, _ := parseSave("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n")
	if got := flushScript(clean); got != "" {
		t.Errorf("flushScript of a system without pasvgate = %q, want nothing", got)
	}
	if clean.hasOwn() || !st.hasOwn() {
		t.Errorf("hasOwn wrong")
	}
}

func TestParseSave(t *testing.T) {
	st, err := parseSave(savedState)
	if err != nil {
		t.Fatal(err)
	}
	want := rulestest.Sample("m-a1", 40001)
	ms := st.mappings()
	if len(ms) != 1 || !mapindex.Same(ms[0], want) || !ms[0].Created.Equal(want.Created) {
		t.Fatalf("mappings = %v, want [%v]", ms, want)
	}
	if d := st.damage(DefaultConnMark); len(d) != 0 {
		t.Errorf("damage = %v, want none", d)
	}
	if d := st.damage(0x4); len(d) != 2 {
		t.Errorf("damage with another mark = %v, want the two rules that hold the mark", d)
	}
	if n, first := st.count(jumps[0].rule()); n != 2 || !first {
		t.Errorf("FORWARD jump count = %d, %v; want 2, first", n, first)
	}
	if n, first := st.count(jumps[1].rule()); n != 1 || first {
		t.Errorf("PREROUTING jump count = %d, %v; want 1, not first", n, first)
	}
	if got := len(st.rulesOf("m-a1")); got != 3 {
		t.Errorf("rulesOf(m-a1) = %d rules, want 3", got)
	}
	if got := len(st.rulesOf("m-zz")); got != 0 {
		t.Errorf("rulesOf(m-zz) = %d rules, want 0", got)
	}
	got := deleteScript(st.rulesOf("m-a1"))
	if !strings.HasPrefix(got, "*filter\n-D PASVGATE-FORWARD -s 203.0.113.10/32") || strings.Count(got, "-D ") != 3 {
		t.Errorf("deleteScript:\n%s", got)
	}

	// Damage: no jumps, no admit rules, no SNAT chain.
	var b strings.Builder
	for _, l := range strings.Split(savedState, "\n") {
		if strings.Contains(l, "comment pasvgate -j") || strings.HasPrefix(l, "-A PASVGATE-ADMIT") || strings.Contains(l, "PASVGATE-SNAT") {
			continue
		}
		b.WriteString(l + "\n")
	}
	damaged, err := parseSave(b.String())
	if err != nil {
		t.Fatal(err)
	}
	if d := damaged.damage(DefaultConnMark); len(d) != 7 {
		t.Errorf("damage = %q, want chain SNAT, four jumps, two admit rules", d)
	}
	// What is left of the mapping is still listed.
	if ms := damaged.mappings(); len(ms) != 1 || ms[0].Public != want.Public || ms[0].Target != want.Target || ms[0].SNAT.IsValid() {
		t.Errorf("mappings of a damaged state = %v", ms)
	}
}

func TestParseSaveRoundTrip(t *testing.T) {
	noSNAT := rulestest.Sample6("m-6", 40003)
	noCreated := rulestest.Sample("m-4", 40004)
	noCreated.Created = time.Time{}
	in := []rules.Mapping{rulestest.Sample("m-1", 40001), noCreated, noSNAT}
	text := map[string]*strings.Builder{tableFilter: {}, tableNAT: {}}
	for _, m := range in {
		for _, r := range mappingRules(m) {
			text[r.table].WriteString(r.line("-A") + "\n")
		}
	}
	st, err := parseSave("*filter\n:PASVGATE-FORWARD - [0:0]\n" + text[tableFilter].String() + "COMMIT\n*nat\n" + text[tableNAT].String() + "COMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	got := st.mappings()
	if len(got) != len(in) {
		t.Fatalf("mappings = %v, want %v", got, in)
	}
	for i, m := range []rules.Mapping{in[0], in[1], in[2]} {
		if !mapindex.Same(got[i], m) {
			t.Errorf("mapping %d = %v, want %v", i, got[i], m)
		}
	}
	if !got[1].Created.IsZero() {
		t.Errorf("Created of a mapping without one = %v", got[1].Created)
	}
}

func TestParseSaveErrors(t *testing.T) {
	for _, in := range []string{
		"-A FORWARD -j ACCEPT\n",
		"*filter\n-A FORWARD -m comment --comment \"unbalanced -j ACCEPT\nCOMMIT\n",
		"*filter\nbogus\nCOMMIT\n",
	} {
		if _, err := parseSave(in); err == nil {
			t.Errorf("parseSave(%q) succeeded", in)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
	}{
		{`-s 1.2.3.4/32 -j ACCEPT`, []string{"-s", "1.2.3.4/32", "-j", "ACCEPT"}},
		{`-m comment --comment "a b  c" -j X`, []string{"-m", "comment", "--comment", "a b  c", "-j", "X"}},
		{`--comment "say \"hi\"" x`, []string{"--comment", `say "hi"`, "x"}},
		{`--comment ""  x`, []string{"--comment", "", "x"}},
		{"", nil},
	} {
		got, err := splitArgs(tt.in)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseComment(t *testing.T) {
	for _, tt := range []struct {
		in      string
		id      string
		created int64
	}{
		{"pasvgate id=m-1 created=1700000000", "m-1", 1700000000},
		{"pasvgate id=m-1", "m-1", 0},
		{"pasvgate admit", "", 0},
		{"pasvgate id=Bad!", "", 0},
		{"other id=m-1", "", 0},
		{"", "", 0},
	} {
		id, created := parseComment(tt.in)
		var c int64
		if !created.IsZero() {
			c = created.Unix()
		}
		if id != tt.id || c != tt.created {
			t.Errorf("parseComment(%q) = %q, %d; want %q, %d", tt.in, id, c, tt.id, tt.created)
		}
	}
}

func TestDeriveBinaries(t *testing.T) {
	for _, tt := range []struct {
		path   string
		v4, v6 binaries
		bad    bool
	}{
		{path: "iptables",
			v4: binaries{"iptables", "iptables-restore", "iptables-save"},
			v6: binaries{"ip6tables", "ip6tables-restore", "ip6tables-save"}},
		{path: "/usr/sbin/iptables-legacy",
			v4: binaries{"/usr/sbin/iptables-legacy", "/usr/sbin/iptables-legacy-restore", "/usr/sbin/iptables-legacy-save"},
			v6: binaries{"/usr/sbin/ip6tables-legacy", "/usr/sbin/ip6tables-legacy-restore", "/usr/sbin/ip6tables-legacy-save"}},
		{path: "iptables-nft",
			v4: binaries{"iptables-nft", "iptables-nft-restore", "iptables-nft-save"},
			v6: binaries{"ip6tables-nft", "ip6tables-nft-restore", "ip6tables-nft-save"}},
		{path: "/opt/x/iptables-wrapped-nft",
			v4: binaries{"/opt/x/iptables-wrapped-nft", "/opt/x/iptables-wrapped-nft-restore", "/opt/x/iptables-wrapped-nft-save"},
			v6: binaries{"/opt/x/ip6tables-wrapped-nft", "/opt/x/ip6tables-wrapped-nft-restore", "/opt/x/ip6tables-wrapped-nft-save"}},
		{path: "/usr/sbin/iptables-restore", bad: true},
		{path: "/usr/sbin/iptables-nft-save", bad: true},
		{path: "/usr/sbin/ip6tables", bad: true},
		{path: "/usr/sbin/xtables-nft-multi", bad: true},
		{path: "iptablesfoo", bad: true},
		{path: "", bad: true},
	} {
		v4, v6, err := deriveBinaries(tt.path)
		if tt.bad {
			if err == nil {
				t.Errorf("deriveBinaries(%q) accepted", tt.path)
			}
			continue
		}
		if err != nil || v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("deriveBinaries(%q) = %v, %v, %v; want %v, %v", tt.path, v4, v6, err, tt.v4, tt.v6)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		out  string
		kind error
		line int
	}{
		{"Another app is currently holding the xtables lock. Stopped waiting after 5s.\n", ErrLocked, 0},
		{"Can't lock /run/xtables.lock: Resource temporarily unavailable\nAnother app is currently holding the xtables lock. Stopped waiting after 1s.\n", ErrLocked, 0},
		{"iptables: Chain already exists.\n", rules.ErrExists, 0},
		{"iptables-nft-restore: line 2 failed: Chain already exists.\n", rules.ErrExists, 2},
		{"iptables-nft-restore: line 5 failed: Bad rule (does a matching rule exist in that chain?).\n", ErrNotExist, 5},
		{"iptables-nft-restore: line 2 failed: No chain/target/match by that name.\n", ErrNotExist, 2},
		{"iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 3\n", ErrNotExist, 3},
		{"iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE':No such file or directory\n\nError occurred at line: 2\n", ErrNotExist, 2},
		{"iptables-restore: line 12 failed\n", nil, 12},
		{"injected failure\n", nil, 0},
	} {
		line, kind := classify(tt.out)
		if kind != tt.kind || line != tt.line {
			t.Errorf("classify(%q) = %v, %d; want %v, %d", tt.out, kind, line, tt.kind, tt.line)
		}
	}
	e := &ExecError{Cmd: "iptables-restore --noflush", Output: "Another app is currently holding the xtables lock.", Err: errors.New("exit status 4")}
	if !IsLocked(e) || IsNotExist(e) || !strings.Contains(e.Error(), "iptables-restore --noflush") || !strings.Contains(e.Error(), "holding") {
		t.Errorf("ExecError %v: kinds or text wrong", e)
	}
	if got := withFailedLine("iptables-restore: line 2 failed", "*filter\n-A X -j Y\nCOMMIT\n"); !strings.Contains(got, "[input line 2: -A X -j Y]") {
		t.Errorf("withFailedLine = %q", got)
	}
	if got := withFailedLine("iptables-restore: line 99 failed", "*filter\n"); got != "iptables-restore: line 99 failed" {
		t.Errorf("withFailedLine out of range = %q", got)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{"pasvgate": "pasvgate", "pasvgate id=x": `"pasvgate id=x"`, "": `""`} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %q, want %q", in, got, want)
		}
	}
}
