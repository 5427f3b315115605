package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The router checks, run in the masquerading lab after its cells: what a
// connection addressed to the router itself meets, and what stopping
// pasvgate and `pasvgate rules flush` leave behind.

// Names of the router checks, the rows of their table.
const (
	chkLocal     = "LAN dials the router's own addresses, port 21"
	chkOwnPort   = "LAN dials pasvgate's port 2121 directly"
	chkHandRule  = "hand rule sends the router's own :21 to pasvgate"
	chkInstalled = "interception in the kernel while running"
	chkStop      = "after stop: no interception, policy routing as before"
	chkFlush     = "after rules flush: nothing of pasvgate's, router firewall as before"
)

func routerChecks(string) []string {
	return []string{chkLocal, chkOwnPort, chkHandRule, chkInstalled, chkStop, chkFlush}
}

// routerState is what pasvgate may change in the router's kernel, as
// text to compare.
type routerState struct {
	saves  string // iptables-save and ip6tables-save
	policy string // ip rule and every routing table, both families, without the kernel's own routes
	nft    string // nft list ruleset, with the nftables backend
}

func (e *env) routerState(ctx context.Context) (routerState, error) {
	var st routerState
	var err error
	if st.saves, err = e.saves(ctx); err != nil {
		return st, err
	}
	if e.v.nft() {
		if st.nft, err = e.nftRuleset(ctx); err != nil {
			return st, err
		}
	}
	for _, args := range [][]string{
		{"-4", "rule", "show"}, {"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		out, err := e.l.Exec(ctx, e.l.GW, "ip", args...)
		if err != nil {
			return st, err
		}
		// Routes the kernel makes from interface addresses come and go
		// on their own (an IPv6 link-local address appears only once
		// its duplicate detection is done), so they are left out; the
		// TPROXY route pasvgate adds is not one of them.
		for _, line := range strings.Split(out, "\n") {
			if line != "" && !strings.Contains(line, "proto kernel") {
				st.policy += line + "\n"
			}
		}
	}
	return st, nil
}

// firewall reduces iptables-save output to what a router's firewall is:
// its rules and the built-in chains' policies other than ACCEPT, per table
// and sorted. Counters and comments go, and so do chains that exist with
// nothing in them: iptables-nft leaves an empty table behind once a
// program used it, which changes nothing.
func firewall(saves string) []string {
	var out []string
	table := ""
	for _, line := range strings.Split(saves, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, "-A "):
			out = append(out, table+" "+line)
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line); len(f) >= 2 && f[1] != "ACCEPT" && f[1] != "-" {
				out = append(out, table+" "+f[0]+" "+f[1])
			}
		}
	}
	slices.Sort(out)
	return out
}

// routerChecks runs the checks and records them in checks.
func (e *env) routerChecks(t *testing.T, checks *lab.Grid, before routerState) {
	ctx := t.Context()
	record := func(name string, fails []string, note string, start time.Time) {
		row := []string{e.method, name}
		if len(fails) > 0 {
			checks.Set(row, "result", lab.StatusFail, strings.Join(fails, "; "), time.Since(start))
			t.Errorf("%s: %s", name, strings.Join(fails, "; "))
			return
		}
		checks.Set(row, "result", lab.StatusOK, note, time.Since(start))
		t.Logf("%s: %s", name, note)
	}

	// While running: the interception is in the kernel.
	start := time.Now()
	running, err := e.routerState(ctx)
	var fails []string
	if err != nil {
		fails = append(fails, err.Error())
	}
	chain, target := "PASVGATE-INTERCEPT", "-j REDIRECT"
	if e.method == "tproxy" {
		chain, target = "PASVGATE-TPROXY", "-j TPROXY"
	}
	switch {
	case e.v.nft():
		chain, target = "intercept", fmt.Sprintf("redirect to :%d", listenPort)
		if e.method == "tproxy" {
			chain, target = "intercept_tproxy", fmt.Sprintf("tproxy to :%d", listenPort)
		}
		if !hasNFTRule(running.nft, "ip", chain, target) {
			fails = append(fails, fmt.Sprintf("no %q rule in table ip pasvgate chain %s:\n%s", target, chain, running.nft))
		}
	case !hasRule(running.saves, chain, target):
		fails = append(fails, fmt.Sprintf("no %s rule in %s", target, chain))
	}
	if e.method == "tproxy" && lineDiff(before.policy, running.policy) == "" {
		fails = append(fails, "TPROXY without a policy route: ip rule and routes unchanged")
	}
	record(chkInstalled, fails, fmt.Sprintf("%s rule in %s", target, chain), start)

	// Connections addressed to the router itself.
	start = time.Now()
	sessions := func() (started, refused int) {
		out := e.pg.Settled() // no line held back, so none missed
		return strings.Count(out, `"msg":"session started"`), strings.Count(out, `"msg":"session refused"`)
	}
	started0, refused0 := sessions()
	fails = nil
	var notes []string
	for _, a := range []string{lab.RouterLANAddr, lab.RouterWANAddr} {
		greeting, err := e.greeting(ctx, net.JoinHostPort(a, "21"))
		switch {
		case err == nil:
			fails = append(fails, fmt.Sprintf("%s:21 answered %q: intercepted or served", a, greeting))
		case !strings.Contains(err.Error(), "connection refused"):
			fails = append(fails, fmt.Sprintf("%s:21: %v, want connection refused", a, err))
		default:
			notes = append(notes, a+":21 connection refused")
		}
	}
	if s, r := sessions(); s != started0 || r != refused0 {
		fails = append(fails, fmt.Sprintf("pasvgate saw them: %d sessions started, %d refused", s-started0, r-refused0))
	}
	record(chkLocal, fails, strings.Join(notes, "; ")+" (not intercepted: the rule leaves local destinations alone)", start)

	// pasvgate's own port, dialed directly: its original destination is
	// the router, and it must say so instead of dialing itself.
	start = time.Now()
	fails = e.expect421(ctx, net.JoinHostPort(lab.RouterLANAddr, strconv.Itoa(listenPort)), sessions)
	record(chkOwnPort, fails, "421, one refusal logged, no session started", start)

	// A hand-written interception without pasvgate's exclusion of local
	// destinations (the rule an operator might write), so that a
	// connection to the router's own :21 does reach pasvgate.
	start = time.Now()
	hand := []string{"-t", "nat", "PREROUTING", "-i", lab.RouterLANIface, "-p", "tcp", "-d", lab.RouterLANAddr,
		"--dport", "21", "-j", "REDIRECT", "--to-ports", strconv.Itoa(listenPort)}
	if e.method == "tproxy" {
		hand = []string{"-t", "mangle", "PREROUTING", "-i", lab.RouterLANIface, "-p", "tcp", "-d", lab.RouterLANAddr,
			"--dport", "21", "-j", "TPROXY", "--on-port", strconv.Itoa(listenPort), "--on-ip", "0.0.0.0"}
	}
	ipt := func(op string) error {
		_, err := e.l.Exec(ctx, e.l.GW, e.l.IPTables, append([]string{"-w", "5", hand[0], hand[1], op, hand[2]}, hand[3:]...)...)
		return err
	}
	if err := ipt("-I"); err != nil {
		record(chkHandRule, []string{err.Error()}, "", start)
	} else {
		fails = e.expect421(ctx, net.JoinHostPort(lab.RouterLANAddr, "21"), sessions)
		if err := ipt("-D"); err != nil {
			fails = append(fails, "removing the hand rule: "+err.Error())
		}
		record(chkHandRule, fails, "421, one refusal logged, no session started", start)
	}

	// Stop: the interception goes, policy routing included; the LAN
	// reaches the server directly again.
	start = time.Now()
	e.pg.Stop()
	fails = nil
	if done, err := e.pg.Exited(); !done || err != nil {
		fails = append(fails, fmt.Sprintf("pasvgate did not exit cleanly: %v", err))
	}
	if !strings.Contains(e.pg.Output(), `"msg":"stopped cleanly"`) {
		fails = append(fails, "no \"stopped cleanly\" in its log:\n"+lastLines(e.pg.Output(), 5))
	}
	stopped, err := e.routerState(ctx)
	if err != nil {
		fails = append(fails, err.Error())
	}
	for _, c := range []string{"PASVGATE-INTERCEPT", "PASVGATE-TPROXY"} {
		if strings.Contains(stopped.saves, c) {
			fails = append(fails, c+" still in the kernel")
		}
	}
	for _, c := range []string{"chain intercept {", "chain intercept_tproxy {", `comment "pasvgate intercept`} {
		if strings.Contains(stopped.nft, c) {
			fails = append(fails, fmt.Sprintf("%q still in the kernel:\n%s", c, stopped.nft))
		}
	}
	if d := lineDiff(before.policy, stopped.policy); d != "" {
		fails = append(fails, "ip rule or routes differ from before pasvgate started: "+d)
	}
	if left, err := e.mappingRules(ctx); err != nil || len(left) > 0 {
		fails = append(fails, fmt.Sprintf("mapping rules left: %v %v", left, err))
	}
	if g, err := e.greeting(ctx, net.JoinHostPort(lab.WANServerAddr, "21")); err != nil || !strings.HasPrefix(g, "220") {
		fails = append(fails, fmt.Sprintf("LAN cannot reach the server directly after stop: %q %v", g, err))
	}
	record(chkStop, fails, "interception chains gone, ip rule and routes as before, LAN reaches the server directly", start)

	// Flush: no PASVGATE chain or jump in either family, and the router's
	// own firewall exactly as it was.
	start = time.Now()
	fails = nil
	if out, err := e.l.Exec(ctx, e.l.GW, e.bin, "rules", "flush", "--backend", e.v.backend, "--iptables-path", e.l.IPTables); err != nil {
		fails = append(fails, fmt.Sprintf("rules flush: %v %s", err, out))
	}
	flushed, err := e.routerState(ctx)
	if err != nil {
		fails = append(fails, err.Error())
	}
	for _, c := range ownChains {
		if strings.Contains(flushed.saves, c) {
			fails = append(fails, c+" still in the kernel")
		}
	}
	if got, want := firewall(flushed.saves), firewall(before.saves); !slices.Equal(got, want) {
		fails = append(fails, fmt.Sprintf("router firewall changed:\nbefore %q\nafter  %q", want, got))
	}
	if e.v.nft() {
		// pasvgate's tables are gone, and the rest of the ruleset (the
		// router firewall's iptables-nft tables) is as before, down to
		// the accept rule the operator added for pasvgate.
		if strings.Contains(flushed.nft, "pasvgate") {
			fails = append(fails, "pasvgate's tables still in the kernel:\n"+flushed.nft)
		}
		if d := lineDiff(nftFirewall(before.nft), nftFirewall(flushed.nft)); d != "" {
			fails = append(fails, "nft ruleset changed: "+d)
		}
		if !slices.ContainsFunc(firewall(before.saves), func(s string) bool { return strings.Contains(s, ctMarkArg) }) {
			fails = append(fails, "the baseline shows no accept of pasvgate's mark: the comparison proves nothing")
		}
	}
	if !slices.ContainsFunc(firewall(before.saves), func(s string) bool { return strings.Contains(s, "MASQUERADE") }) {
		fails = append(fails, "the baseline shows no MASQUERADE: the comparison proves nothing")
	}
	record(chkFlush, fails, fmt.Sprintf("%d router rules and policies as before", len(firewall(before.saves))), start)
}

// counters matches the counters that nft prints for iptables-nft's rules.
var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// nftFirewall reduces an `nft list ruleset` to what a router's firewall
// is, as firewall does for iptables-save: counters go (traffic changes
// them), and so do base chains with no rule and policy accept, and tables
// left empty. iptables-nft makes a table's base chains when a rule is
// added to it and leaves them when the rule goes (the router checks' hand
// rule does that), which changes nothing.
func nftFirewall(ruleset string) string {
	var out, table, chain []string
	inChain, chainRules := false, false
	for _, line := range strings.Split(counters.ReplaceAllString(ruleset, "counter"), "\n") {
		l := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "table "):
			table = []string{line}
		case strings.HasPrefix(l, "chain ") && strings.HasSuffix(l, "{"):
			inChain, chainRules, chain = true, false, []string{line}
		case inChain && l == "}":
			inChain = false
			if chainRules {
				table = append(table, append(chain, line)...)
			}
		case inChain:
			chain = append(chain, line)
			if l != "" && !(strings.HasPrefix(l, "type ") && strings.HasSuffix(l, "policy accept;")) {
				chainRules = true
			}
		case line == "}":
			if len(table) > 1 {
				out = append(out, append(table, line)...)
			}
			table = nil
		case l != "" && table != nil:
			table = append(table, line)
		}
	}
	return strings.Join(out, "\n")
}

// hasNFTRule reports whether an `nft list ruleset` has, in pasvgate's
// table of family, a rule in chain that contains target.
func hasNFTRule(ruleset, family, chain, target string) bool {
	_, table, ok := strings.Cut(ruleset, "table "+family+" pasvgate {")
	if !ok {
		return false
	}
	table, _, _ = strings.Cut(table, "\ntable ")
	_, body, ok := strings.Cut(table, "chain "+chain+" {")
	if !ok {
		return false
	}
	body, _, _ = strings.Cut(body, "}")
	return strings.Contains(body, target)
}

// hasRule reports whether saves has a rule in chain with target.
func hasRule(saves, chain, target string) bool {
	for _, line := range strings.Split(saves, "\n") {
		if strings.HasPrefix(line, "-A "+chain+" ") && strings.Contains(line, target) {
			return true
		}
	}
	return false
}

// greeting connects from the LAN client to addr and returns the first
// line the peer sends.
func (e *env) greeting(ctx context.Context, addr string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := e.l.Dial(dctx, e.l.Client, lab.LANClientAddr, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if line == "" && err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// expect421 dials addr from the LAN and wants pasvgate's 421 saying the
// destination is this gateway, one more refusal in its log, and no
// session started: no loop.
func (e *env) expect421(ctx context.Context, addr string, sessions func() (int, int)) []string {
	var fails []string
	started0, refused0 := sessions()
	g, err := e.greeting(ctx, addr)
	if err != nil || !strings.HasPrefix(g, "421 ") {
		fails = append(fails, fmt.Sprintf("%s: got %q (%v), want 421", addr, g, err))
	}
	// The refusal is logged as the 421 is sent; allow the log write a
	// moment to land.
	deadline := time.Now().Add(time.Second)
	for {
		s, r := sessions()
		if r == refused0+1 && s == started0 {
			break
		}
		if time.Now().After(deadline) {
			fails = append(fails, fmt.Sprintf("log: %d sessions started and %d refused, want 0 and 1", s-started0, r-refused0))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(lastLines(e.pg.Output(), 3), "is this gateway") {
		fails = append(fails, "refusal reason not logged:\n"+lastLines(e.pg.Output(), 3))
	}
	return fails
}

// lineDiff returns the lines only in a ("-") and only in b ("+"), or "".
func lineDiff(a, b string) string {
	as, bs := strings.Split(a, "\n"), strings.Split(b, "\n")
	var d []string
	for _, l := range as {
		if !slices.Contains(bs, l) {
			d = append(d, "-"+l)
		}
	}
	for _, l := range bs {
		if !slices.Contains(as, l) {
			d = append(d, "+"+l)
		}
	}
	return strings.Join(d, " | ")
}

// TestNFTFirewall proves the nft comparison of the flush check can fail:
// the empty base chains iptables-nft leaves, and counters, are the same
// firewall; a changed or removed rule, a chain whose policy drops, or a
// table of pasvgate's left behind are not.
func TestNFTFirewall(t *testing.T) {
	base := `table ip filter {
	chain FORWARD {
		type filter hook forward priority filter; policy drop;
		meta mark & 0x10000000 == 0x10000000 counter packets 0 bytes 0 accept
	}
}
table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" counter packets 3 bytes 180 masquerade
	}
}
`
	same := map[string]string{
		"counters": strings.ReplaceAll(base, "packets 3 bytes 180", "packets 9 bytes 540"),
		"an empty accept chain": strings.Replace(base, "table ip nat {\n", `table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
	}

`, 1),
		"an empty table": base + "table ip mangle {\n\tchain PREROUTING {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\t}\n}\n",
	}
	differ := map[string]string{
		"a rule changed":      strings.Replace(base, `"wan0"`, `"wan1"`, 1),
		"a rule removed":      strings.Replace(base, "\t\toifname \"wan0\" counter packets 3 bytes 180 masquerade\n", "", 1),
		"an empty drop chain": base + "table inet f {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n",
		"pasvgate's table":    base + "table ip pasvgate {\n\tmap dnat_map {\n\t\ttype ipv4_addr : ipv4_addr\n\t}\n}\n",
	}
	want := nftFirewall(base)
	if !strings.Contains(want, "masquerade") || !strings.Contains(want, "policy drop") {
		t.Fatalf("nftFirewall lost the firewall:\n%s", want)
	}
	for name, rs := range same {
		if got := nftFirewall(rs); got != want {
			t.Errorf("%s: %s", name, lineDiff(want, got))
		}
	}
	for name, rs := range differ {
		if nftFirewall(rs) == want {
			t.Errorf("%s: not seen", name)
		}
	}
}
