package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/pasvgate/pasvgate/rules"
)

// pasvgate's own chains. Installed systems know them by name, so once
// released they are never renamed.
const (
	// ChainDNAT (nat table) holds one DNAT rule per mapping. PREROUTING
	// jumps to it for traffic from outside, OUTPUT for clients on the
	// gateway itself.
	ChainDNAT = "PASVGATE-DNAT"
	// ChainSNAT (nat table) holds one SNAT rule per mapping that has
	// Mapping.SNAT. POSTROUTING jumps to it.
	ChainSNAT = "PASVGATE-SNAT"
	// ChainForward (filter table) holds a static rule that accepts the
	// established flows pasvgate admitted, then one rule per mapping that
	// sends the mapping's new connection to ChainAdmit. FORWARD jumps to it.
	ChainForward = "PASVGATE-FORWARD"
	// ChainAdmit (filter table) marks a connection as admitted by pasvgate
	// (Config.ConnMark) and accepts it. Only ChainForward jumps to it.
	ChainAdmit = "PASVGATE-ADMIT"
)

// Table names.
const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// commentTag starts the comment of every rule pasvgate writes. A mapping's
// rules add "id=ID" and, when the mapping has one, "created=UNIX-SECONDS",
// so that List can rebuild the mapping from iptables-save and a restart can
// find every leftover.
const commentTag = "pasvgate"

// Comments of the rules that are not per mapping.
const (
	commentJump        = commentTag
	commentEstablished = commentTag + " established"
	commentAdmit       = commentTag + " admit"
)

// rule is one iptables rule: the table and chain it lives in and its
// arguments after "-A CHAIN", in the form iptables-save prints them back,
// so that generated and saved rules compare equal token for token.
type rule struct {
	table string
	chain string
	args  []string
}

// line is the rule as an iptables-restore line with the given command:
// "-A", "-D" or "-C".
func (r rule) line(cmd string) string {
	return cmd + " " + r.chain + r.argText()
}

// insertFirst is the rule as an iptables-restore line that inserts it at
// the top of its chain.
func (r rule) insertFirst() string {
	return "-I " + r.chain + " 1" + r.argText()
}

func (r rule) argText() string {
	var b strings.Builder
	for _, a := range r.args {
		b.WriteByte(' ')
		b.WriteString(quote(a))
	}
	return b.String()
}

// quote quotes an argument for iptables-restore the way iptables-save does.
// Our arguments are built from netip values, numbers and rules.ValidID ids,
// so the only character that needs it is the space in comments.
func quote(a string) string {
	if a == "" || strings.ContainsAny(a, " \t") {
		return `"` + a + `"`
	}
	return a
}

// jump is a rule in a built-in chain that leads to one of ours.
type jump struct {
	table, from, to string
}

// jumps are the four ways into pasvgate's chains, in the order Setup and
// repair write them.
var jumps = []jump{
	{tableFilter, "FORWARD", ChainForward},
	{tableNAT, "PREROUTING", ChainDNAT},
	{tableNAT, "OUTPUT", ChainDNAT},
	{tableNAT, "POSTROUTING", ChainSNAT},
}

// ownChains are pasvgate's chains per table, in an order in which each
// chain's references come before the chain (so -X can follow it).
var ownChains = map[string][]string{
	tableFilter: {ChainForward, ChainAdmit},
	tableNAT:    {ChainDNAT, ChainSNAT},
}

// tables is the order tables are written in: filter first, so that a
// mapping's FORWARD accept is live before its DNAT.
var tables = []string{tableFilter, tableNAT}

// isOwnChain reports whether c is one of pasvgate's chains, the
// interception chains included.
func isOwnChain(c string) bool {
	switch c {
	case ChainDNAT, ChainSNAT, ChainForward, ChainAdmit, ChainIntercept, ChainTProxy:
		return true
	}
	return false
}

// flushTables are the tables Flush looks at: the mapping tables and the
// interception chains' mangle table.
var flushTables = []string{tableFilter, tableNAT, tableMangle}

// flushChains are every chain of pasvgate's in table t, in an order in
// which each chain's references come before the chain.
func flushChains(t string) []string {
	out := slices.Clone(ownChains[t])
	for _, h := range interceptHooks {
		if h.table == t {
			out = append(out, h.chain)
		}
	}
	return out
}

func (j jump) rule() rule {
	return rule{j.table, j.from, []string{"-m", "comment", "--comment", commentJump, "-j", j.to}}
}

// markArg formats a connmark value/mask as iptables-save prints it.
func markArg(mark uint32) string {
	return fmt.Sprintf("0x%x/0x%x", mark, mark)
}

// staticRules are the rules of pasvgate's chains that do not belong to a
// mapping, in chain order.
//
// The established rule is what keeps a data connection flowing after its
// mapping is removed, under a FORWARD policy of DROP and without relying on
// an ESTABLISHED rule of the machine's own firewall: it accepts both
// directions of every flow that ChainAdmit marked, and nothing else.
func staticRules(mark uint32) []rule {
	return []rule{
		{tableFilter, ChainForward, []string{
			"-m", "connmark", "--mark", markArg(mark),
			"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
			"-m", "comment", "--comment", commentEstablished,
			"-j", "ACCEPT"}},
		{tableFilter, ChainAdmit, []string{
			"-m", "comment", "--comment", commentAdmit,
			"-j", "CONNMARK", "--set-xmark", markArg(mark)}},
		{tableFilter, ChainAdmit, []string{
			"-m", "comment", "--comment", commentAdmit,
			"-j", "ACCEPT"}},
	}
}

// mappingComment is the comment on each of m's rules.
func mappingComment(m rules.Mapping) string {
	c := commentTag + " id=" + m.ID
	if !m.Created.IsZero() {
		c += " created=" + strconv.FormatInt(m.Created.Unix(), 10)
	}
	return c
}

// host formats a as a host prefix, as iptables-save prints -s and -d.
func host(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// recentName is the name of m's xt_recent list, which holds m's source
// once m has admitted its connection. The kernel keeps a list while a rule
// names it, and frees it with the last such rule.
func recentName(m rules.Mapping) string { return commentTag + "-" + m.ID }

// fullMask is the --mask of an xt_recent match on a host address of a's
// family, as iptables-save prints it.
func fullMask(a netip.Addr) string {
	if a.Is4() {
		return "255.255.255.255"
	}
	return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
}

// mappingRules are m's rules in install order: the FORWARD accept, then the
// SNAT if any, the DNAT last. m must be valid.
//
// The FORWARD and SNAT rules match the connection's original destination
// (conntrack --ctorigdst/--ctorigdstport, that is Public), not just Target:
// they admit and rewrite exactly the connection the DNAT rule made, and
// never a connection made straight to Target.
//
// A mapping admits one connection, the first, like the kernel FTP
// helper's expectations, with the xt_recent list recentName(m): the DNAT
// rule DNATs only a source that is not in the list (! --rcheck), and adds
// it (--set) as it DNATs. The nat table sees a connection's first packet
// only, so a second connection from the same client (another source port:
// a new conntrack entry) finds the client in the list and is not DNATed;
// it is addressed to the gateway itself, and refused there. The kernel
// does it alone, with no round trip to pasvgate. The first connection's
// DNAT is in its conntrack entry, and its SNAT rule does not look at the
// list, so it keeps flowing.
//
// The check and the --set are two matches of one rule, a few instructions
// apart, which is the whole window left: two first packets of one client
// that both pass the check before either is added both get through (the
// server accepts one of them on its passive port; what one-shot closes is
// a later connection, after the server has given that port to someone
// else). Doing the --set later, in POSTROUTING once the packet has passed
// FORWARD, would keep a first packet that FORWARD drops from using the
// mapping up, but measured a window of hundreds of microseconds under load
// (two first packets crossing PREROUTING on two CPUs before either reaches
// POSTROUTING); pasvgate's own FORWARD accept is the first rule of FORWARD,
// so that drop does not happen unless someone puts a rule above it.
//
// A mapping with a Dialed address has the same three rules once more for
// that address, on the same port and with the same xt_recent list.
func mappingRules(m rules.Mapping) []rule {
	out := addrRules(m, m.Public.Addr(), mappingComment(m))
	if m.Dialed.IsValid() {
		// The Dialed address's rules name the same xt_recent list as
		// Public's, so that the first connection to either address uses
		// the mapping up for both. Their comment tells them apart.
		out = append(out, addrRules(m, m.Dialed, mappingComment(m)+" "+dialedWord)...)
	}
	// Install order: filter, then SNAT, then DNAT, whatever the address.
	order := map[string]int{ChainForward: 0, ChainSNAT: 1, ChainDNAT: 2}
	slices.SortStableFunc(out, func(a, b rule) int { return order[a.chain] - order[b.chain] })
	return out
}

// dialedWord ends the comment of the rules of a mapping's Dialed
// address.
const dialedWord = "via=dialed"

// snatRandom documents --random-fully on the SNAT rule: the kernel picks
// the source port at random among those free in conntrack instead of
// keeping the client's. Keeping it made the connection's tuple towards the
// target that of an earlier data connection whenever the client reused
// its source port and the server its passive port; when conntrack had
// forgotten the earlier one (a flush, an early drop) while the server
// still held it in TIME_WAIT, the server refused the new SYN and the
// transfer failed (issue 13; rulestest.SNATPortReuse). The port stays in
// its class (below 512, below 1024, or above). The nftables backend's
// snat rule is fully-random for the same reason.
const snatRandom = "--random-fully"

// addrRules are the rules that admit m's connection to gateway address
// pub on m's public port, with the given comment.
func addrRules(m rules.Mapping, pubAddr netip.Addr, mc string) []rule {
	comment := []string{"-m", "comment", "--comment", mc}
	src, tgt := host(m.Source), host(m.Target.Addr())
	pub, pubPort := pubAddr.String(), strconv.Itoa(int(m.Public.Port()))
	tport := strconv.Itoa(int(m.Target.Port()))

	fwd := []string{"-s", src, "-d", tgt, "-p", "tcp", "-m", "tcp", "--dport", tport,
		"-m", "conntrack", "--ctstate", "NEW", "--ctorigdst", pub, "--ctorigdstport", pubPort}
	fwd = append(append(fwd, comment...), "-j", ChainAdmit)
	out := []rule{{tableFilter, ChainForward, fwd}}

	if m.SNAT.IsValid() {
		snat := []string{"-s", src, "-d", tgt, "-p", "tcp", "-m", "tcp", "--dport", tport,
			"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", pub, "--ctorigdstport", pubPort}
		snat = append(append(snat, comment...), "-j", "SNAT", "--to-source", m.SNAT.String(), snatRandom)
		out = append(out, rule{tableNAT, ChainSNAT, snat})
	}

	recent := func(op ...string) []string {
		r := append([]string{"-m", "recent"}, op...)
		return append(r, "--name", recentName(m), "--mask", fullMask(m.Source), "--rsource")
	}
	dnat := []string{"-s", src, "-d", host(pubAddr), "-p", "tcp", "-m", "tcp", "--dport", pubPort}
	dnat = append(append(append(dnat, recent("!", "--rcheck")...), recent("--set")...), comment...)
	dnat = append(dnat, "-j", "DNAT", "--to-destination", m.Target.String())
	return append(out, rule{tableNAT, ChainDNAT, dnat})
}

// rulesOf are m's rules as mappingRules makes them or, if spent, without
// the DNAT rule: a mapping that a repair put back without knowing whether
// it had admitted its connection must admit nothing.
func rulesOf(m rules.Mapping, spent bool) []rule {
	rs := mappingRules(m)
	if spent {
		rs = slices.DeleteFunc(rs, func(r rule) bool { return r.chain == ChainDNAT })
	}
	return rs
}

// script is iptables-restore input built one table section at a time.
type script struct {
	b       strings.Builder
	current string
}

// add appends a line to the section of table, opening it (and committing
// the previous one) as needed. Sections must be added table by table.
func (s *script) add(table, line string) {
	if s.current != table {
		s.commit()
		s.b.WriteString("*" + table + "\n")
		s.current = table
	}
	s.b.WriteString(line)
	s.b.WriteByte('\n')
}

func (s *script) commit() {
	if s.current != "" {
		s.b.WriteString("COMMIT\n")
		s.current = ""
	}
}

// String returns the script with its last section committed.
func (s *script) String() string {
	s.commit()
	return s.b.String()
}

// installScript is the one iptables-restore batch that installs m.
//
// iptables-legacy-restore and iptables-nft-restore alike commit each table
// at its COMMIT line (nft: one transaction per table) and stop at the first
// line that fails, so a failed batch may leave the filter table committed
// and the nat table not; Install then rolls back. Filter goes first so
// that the DNAT is never live without its FORWARD accept.
//
// With check, each table section first checks (-C) that the jumps into
// pasvgate's chains and ChainAdmit's rules are still there: if someone
// flushed a built-in chain or reloaded the firewall, the check fails the
// batch before that table is touched, and Install repairs and retries. The
// checks cost no extra exec. They do not cover ChainForward's established
// rule, which only a targeted flush of pasvgate's own chain removes.
func installScript(m rules.Mapping, mark uint32, check bool) string {
	var s script
	rs := mappingRules(m)
	for _, t := range tables {
		if check {
			for _, j := range jumps {
				if j.table == t {
					s.add(t, j.rule().line("-C"))
				}
			}
			for _, r := range staticRules(mark) {
				if r.table == t && r.chain == ChainAdmit {
					s.add(t, r.line("-C"))
				}
			}
		}
		for _, r := range rs {
			if r.table == t {
				s.add(t, r.line("-A"))
			}
		}
	}
	return s.String()
}

// removeScript is the one iptables-restore batch that removes m (spent as
// rulesOf says): the nat section first (DNAT, then SNAT), so that no new
// connection is DNATed once its FORWARD accept is gone.
func removeScript(m rules.Mapping, spent bool) string {
	var s script
	rs := rulesOf(m, spent)
	for _, t := range []string{tableNAT, tableFilter} {
		for i := len(rs) - 1; i >= 0; i-- {
			if rs[i].table == t {
				s.add(t, rs[i].line("-D"))
			}
		}
	}
	return s.String()
}

// blindRollbackScript deletes m's rules in install order, filter first,
// for when a failed install cannot be looked at. An install batch commits
// a prefix of its tables, and this batch stops at the first table whose
// rules are not there, so it deletes exactly what was committed (and then
// fails, unless everything was).
func blindRollbackScript(m rules.Mapping) string {
	var s script
	for _, t := range tables {
		for _, r := range mappingRules(m) {
			if r.table == t {
				s.add(t, r.line("-D"))
			}
		}
	}
	return s.String()
}

// resetScript is the batch that makes pasvgate's part of one family's
// rules exactly what it should be, whatever st (that family's
// iptables-save) shows: every own chain is declared, which creates it or,
// under --noflush, empties it; each jump is put first in its built-in chain
// exactly once; the static rules are written; then the rules of ms, those
// whose ID is in spent without their DNAT rule. Each table is replaced in
// one commit, so established flows never see a gap. A mapping whose rules
// st still holds keeps its xt_recent list, and so whether it was used,
// through the commit: the new rules find the list while the old ones still
// hold it.
//
// Setup uses it with no mappings to sweep an earlier process's leftovers;
// Install uses it with every mapping it has installed to repair what was
// changed from outside.
func resetScript(st *saved, mark uint32, ms []rules.Mapping, spent map[string]bool) string {
	var s script
	static := staticRules(mark)
	for _, t := range tables {
		for _, c := range ownChains[t] {
			s.add(t, ":"+c+" - [0:0]")
		}
		for _, j := range jumps {
			if j.table != t {
				continue
			}
			jr := j.rule()
			n, first := st.count(jr)
			if n == 1 && first {
				continue
			}
			for range n {
				s.add(t, jr.line("-D"))
			}
			s.add(t, jr.insertFirst())
		}
		for _, r := range static {
			if r.table == t {
				s.add(t, r.line("-A"))
			}
		}
		for _, m := range ms {
			for _, r := range rulesOf(m, spent[m.ID]) {
				if r.table == t {
					s.add(t, r.line("-A"))
				}
			}
		}
	}
	return s.String()
}

// flushScript is the batch that takes every pasvgate rule, jump and chain
// out of one family, as st shows it, interception chains included, and
// nothing else. Any rule outside pasvgate's chains that jumps to one of
// them is deleted too (a chain that is still referenced cannot be
// deleted); the built-in jumps are pasvgate's own, others are someone's
// mistake. It returns "" when st holds nothing of pasvgate's.
func flushScript(st *saved) string {
	var s script
	for _, t := range flushTables {
		tab := st.tables[t]
		if tab == nil {
			continue
		}
		for _, r := range tab.rules {
			if !isOwnChain(r.chain) && r.jumpsTo() != "" && isOwnChain(r.jumpsTo()) {
				s.add(t, "-D "+r.chain+" "+r.raw)
			}
		}
		var own []string
		for _, c := range flushChains(t) {
			if tab.chains[c] {
				own = append(own, c)
			}
		}
		for _, c := range own {
			s.add(t, "-F "+c)
		}
		for _, c := range own {
			s.add(t, "-X "+c)
		}
	}
	return s.String()
}

// deleteScript deletes saved rules, as iptables-save printed them.
func deleteScript(rs []savedRule) string {
	var s script
	for _, t := range tables {
		for _, r := range rs {
			if r.table == t {
				s.add(t, "-D "+r.chain+" "+r.raw)
			}
		}
	}
	return s.String()
}
