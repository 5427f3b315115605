package iptables

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
)

// These tests need no root: interception rule generation is pure.

var (
	icRedirect = rules.Interception{Iface: "lan0", Port: 21, ListenPort: 2121, Method: rules.Redirect}
	icTProxy   = rules.Interception{Iface: "lan1", Port: 21, ListenPort: 2122, Method: rules.TProxy}
)

func TestInterceptRule(t *testing.T) {
	match := func(iface string) []string {
		return []string{"-i", iface, "-p", "tcp", "-m", "tcp", "--dport", "21", "-m", "addrtype", "!", "--dst-type", "LOCAL",
			"-m", "comment", "--comment", "pasvgate intercept"}
	}
	tests := []struct {
		name string
		ic   rules.Interception
		v6   bool
		want rule
	}{
		{"redirect IPv4", icRedirect, false, rule{tableNAT, ChainIntercept, append(match("lan0"), "-j", "REDIRECT", "--to-ports", "2121")}},
		{"redirect IPv6", icRedirect, true, rule{tableNAT, ChainIntercept, append(match("lan0"), "-j", "REDIRECT", "--to-ports", "2121")}},
		{"tproxy IPv4", icTProxy, false, rule{tableMangle, ChainTProxy, append(match("lan1"),
			"-j", "TPROXY", "--on-port", "2122", "--on-ip", "0.0.0.0", "--tproxy-mark", "0x20000000/0x20000000")}},
		{"tproxy IPv6", icTProxy, true, rule{tableMangle, ChainTProxy, append(match("lan1"),
			"-j", "TPROXY", "--on-port", "2122", "--on-ip", "::", "--tproxy-mark", "0x20000000/0x20000000")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := interceptRule(tt.ic, tt.v6, DefaultTProxyMark)
			if got.table != tt.want.table || got.chain != tt.want.chain || !slices.Equal(got.args, tt.want.args) {
				t.Errorf("got %s %s %q\nwant %s %s %q", got.table, got.chain, got.args, tt.want.table, tt.want.chain, tt.want.args)
			}
		})
	}
	mark := func(port string) []string {
		return []string{"-p", "tcp", "-m", "multiport", "--ports", port, "-m", "socket", "--transparent",
			"-m", "comment", "--comment", "pasvgate tproxy", "-j", "MARK", "--set-xmark", "0x4/0x4"}
	}
	want := [][]string{mark("21"), mark("990"),
		{"-p", "tcp", "-m", "mark", "--mark", "0x4/0x4", "-m", "comment", "--comment", "pasvgate tproxy", "-j", "ACCEPT"},
	}
	got := tproxyStaticRules(0x4, []uint16{21, 990})
	if len(got) != len(want) {
		t.Fatalf("static rules = %v, want %q", got, want)
	}
	for i, r := range got {
		if r.table != tableMangle || r.chain != ChainTProxy || !slices.Equal(r.args, want[i]) {
			t.Errorf("static rule %d = %s %s %q, want %q", i, r.table, r.chain, r.args, want[i])
		}
	}
	// Each intercepted port once, in order, before the TPROXY rules.
	ics := []rules.Interception{
		{Iface: "lan1", Port: 990, ListenPort: 2990, Method: rules.TProxy},
		icTProxy,
		{Iface: "lan2", Port: 21, ListenPort: 2122, Method: rules.TProxy},
		icRedirect,
	}
	slices.SortFunc(ics, rules.CompareInterceptions)
	var lines []string
	for _, r := range interceptChainRules(interceptHooks[1], ics, false, 0x4) {
		lines = append(lines, strings.Join(r.args, " "))
	}
	if len(lines) != 6 || !strings.Contains(lines[0], "--ports 21 ") || !strings.Contains(lines[1], "--ports 990 ") ||
		!strings.Contains(lines[2], "-j ACCEPT") || !strings.Contains(lines[3], "-i lan1 -p tcp -m tcp --dport 21 ") {
		t.Errorf("TPROXY chain rules:\n%s", strings.Join(lines, "\n"))
	}
}

// Lines of an iptables-save of one family with both interceptions of the
// tests installed, as the kernel prints them.
const (
	savedJumpIntercept = `-A PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT`
	savedRedirect      = `-A PASVGATE-INTERCEPT -i lan0 -p tcp -m tcp --dport 21 -m addrtype ! --dst-type LOCAL -m comment --comment "pasvgate intercept" -j REDIRECT --to-ports 2121`
	savedJumpTProxy    = `-A PREROUTING -m comment --comment pasvgate -j PASVGATE-TPROXY`
	savedMark          = `-A PASVGATE-TPROXY -p tcp -m multiport --ports 21 -m socket --transparent -m comment --comment "pasvgate tproxy" -j MARK --set-xmark 0x20000000/0x20000000`
	savedAccept        = `-A PASVGATE-TPROXY -p tcp -m mark --mark 0x20000000/0x20000000 -m comment --comment "pasvgate tproxy" -j ACCEPT`
	savedTProxy        = `-A PASVGATE-TPROXY -i lan1 -p tcp -m tcp --dport 21 -m addrtype ! --dst-type LOCAL -m comment --comment "pasvgate intercept" -j TPROXY --on-port 2122 --on-ip 0.0.0.0 --tproxy-mark 0x20000000/0x20000000`
)

// interceptedState is an iptables-save of a gateway that was set up, with
// the two interceptions installed next to someone's mangle rule.
var interceptedState = `*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PASVGATE-TPROXY - [0:0]
` + savedJumpTProxy + `
-A PREROUTING -i wan0 -j MARK --set-xmark 0x1/0x1
` + savedMark + "\n" + savedAccept + "\n" + savedTProxy + `
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PASVGATE-DNAT - [0:0]
:PASVGATE-INTERCEPT - [0:0]
:PASVGATE-SNAT - [0:0]
` + savedJumpIntercept + `
-A PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-A OUTPUT -m comment --comment pasvgate -j PASVGATE-DNAT
-A POSTROUTING -m comment --comment pasvgate -j PASVGATE-SNAT
` + savedRedirect + `
COMMIT
`

// edit returns text without the lines in drop and with the lines of add
// appended to the table section named by each key.
func edit(text string, drop []string, add map[string][]string) string {
	var out []string
	table := ""
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		if l == "COMMIT" {
			out = append(out, add[table]...)
		}
		if !slices.Contains(drop, l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestInterceptScript(t *testing.T) {
	both := []rules.Interception{icTProxy, icRedirect}
	tests := []struct {
		name  string
		state string
		ics   []rules.Interception
		want  string
	}{
		{"from nothing", "", both, `*nat
:PASVGATE-INTERCEPT - [0:0]
-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-INTERCEPT
` + savedRedirect + `
COMMIT
*mangle
:PASVGATE-TPROXY - [0:0]
-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-TPROXY
` + savedMark + "\n" + savedAccept + "\n" + savedTProxy + `
COMMIT
`},
		{"already there", interceptedState, both, ""},
		{"already there, other order", interceptedState, []rules.Interception{icRedirect, icTProxy}, ""},
		{"remove redirect", interceptedState, []rules.Interception{icTProxy}, `*nat
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT
-F PASVGATE-INTERCEPT
-X PASVGATE-INTERCEPT
COMMIT
`},
		{"remove all", interceptedState, nil, `*nat
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT
-F PASVGATE-INTERCEPT
-X PASVGATE-INTERCEPT
COMMIT
*mangle
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-TPROXY
-F PASVGATE-TPROXY
-X PASVGATE-TPROXY
COMMIT
`},
		{"remove all with a foreign jump", edit(interceptedState, nil, map[string][]string{"mangle": {"-A FORWARD -j PASVGATE-TPROXY"}}), []rules.Interception{icRedirect}, `*mangle
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-TPROXY
-D FORWARD -j PASVGATE-TPROXY
-F PASVGATE-TPROXY
-X PASVGATE-TPROXY
COMMIT
`},
		{"jump lost", edit(interceptedState, []string{savedJumpTProxy}, nil), both, `*mangle
-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-TPROXY
COMMIT
`},
		{"jump doubled", edit(interceptedState, nil, map[string][]string{"nat": {savedJumpIntercept}}), both, `*nat
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT
-I PREROUTING 1 -m comment --comment pasvgate -j PASVGATE-INTERCEPT
COMMIT
`},
		{"static rule lost", edit(interceptedState, []string{savedAccept}, nil), both, `*mangle
:PASVGATE-TPROXY - [0:0]
` + savedMark + "\n" + savedAccept + "\n" + savedTProxy + `
COMMIT
`},
		{"stale rule in the chain", edit(interceptedState, nil, map[string][]string{"nat": {strings.ReplaceAll(savedRedirect, "lan0", "lan9")}}), both, `*nat
:PASVGATE-INTERCEPT - [0:0]
` + savedRedirect + `
COMMIT
`},
		{"add to an existing chain", interceptedState, append(both, rules.Interception{Iface: "lan2", Port: 21, ListenPort: 2121, Method: rules.Redirect}), `*nat
:PASVGATE-INTERCEPT - [0:0]
` + savedRedirect + "\n" + strings.ReplaceAll(savedRedirect, "lan0", "lan2") + `
COMMIT
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseSave(tt.state)
			if err != nil {
				t.Fatal(err)
			}
			if got := interceptScript(st, tt.ics, false, DefaultTProxyMark); got != tt.want {
				t.Errorf("interceptScript:\n%s", lineDiff(tt.want, got))
			}
		})
	}
	// Interception rules are not mappings, but they are pasvgate's.
	st, _ := parseSave(interceptedState)
	if ms := st.mappings(); len(ms) != 0 {
		t.Errorf("interception rules listed as mappings: %v", ms)
	}
	if !st.hasOwn() {
		t.Errorf("hasOwn of a state with interception chains = false")
	}
}

func TestFlushScriptIntercept(t *testing.T) {
	st, err := parseSave(interceptedState)
	if err != nil {
		t.Fatal(err)
	}
	want := `*nat
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-INTERCEPT
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-DNAT
-D OUTPUT -m comment --comment pasvgate -j PASVGATE-DNAT
-D POSTROUTING -m comment --comment pasvgate -j PASVGATE-SNAT
-F PASVGATE-DNAT
-F PASVGATE-SNAT
-F PASVGATE-INTERCEPT
-X PASVGATE-DNAT
-X PASVGATE-SNAT
-X PASVGATE-INTERCEPT
COMMIT
*mangle
-D PREROUTING -m comment --comment pasvgate -j PASVGATE-TPROXY
-F PASVGATE-TPROXY
-X PASVGATE-TPROXY
COMMIT
`
	if got := flushScript(st); got != want {
		t.Errorf("flushScript:\n%s", lineDiff(want, got))
	}
}

func TestCheckInterception(t *testing.T) {
	for _, tt := range []struct {
		ic rules.Interception
		ok bool
	}{
		{icRedirect, true},
		{icTProxy, true},
		{rules.Interception{Iface: "br-lan.10", Port: 21, ListenPort: 2121, Method: rules.TProxy}, true},
		{rules.Interception{Iface: "lan+", Port: 21, ListenPort: 2121, Method: rules.Redirect}, true},
		{rules.Interception{Iface: "", Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "lan 0", Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: `la"n`, Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: `lan\`, Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "!lan", Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "-j", Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "lan#1", Port: 21, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "lan0", Port: 0, ListenPort: 2121, Method: rules.Redirect}, false},
		{rules.Interception{Iface: "lan0", Port: 21, ListenPort: 2121, Method: "dnat"}, false},
	} {
		err := checkInterception(tt.ic)
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, rules.ErrInvalid)) {
			t.Errorf("checkInterception(%+v) = %v, want ok %v", tt.ic, err, tt.ok)
		}
	}
}

func TestCheckTProxyConfig(t *testing.T) {
	for _, tt := range []struct {
		table, prio int
		ok          bool
	}{
		{DefaultTProxyTable, DefaultTProxyPriority, true},
		{100, 1, true},
		{252, 32765, true},
		{253, 100, false},
		{254, 100, false},
		{255, 100, false},
		{-1, 100, false},
		{100, 32766, false},
		{100, -5, false},
	} {
		err := checkTProxyConfig(Config{TProxyTable: tt.table, TProxyPriority: tt.prio})
		if tt.ok != (err == nil) {
			t.Errorf("checkTProxyConfig(table %d, priority %d) = %v, want ok %v", tt.table, tt.prio, err, tt.ok)
		}
	}
}
