package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// saved is one family's iptables-save output, parsed: the chains of each
// table and their rules in order.
type saved struct {
	tables map[string]*savedTable
}

type savedTable struct {
	chains map[string]bool
	rules  []savedRule
}

// savedRule is one "-A CHAIN ..." line of iptables-save.
type savedRule struct {
	table, chain string
	// raw is the line after "-A CHAIN ", quoting kept, fit to be fed back
	// to iptables-restore after "-D CHAIN ".
	raw string
	// args is raw split into arguments, quotes removed.
	args []string
}

// parseSave parses iptables-save output. It knows only the line kinds
// iptables-save writes: "# comment", "*table", ":CHAIN POLICY [p:b]",
// "-A CHAIN args" and "COMMIT".
func parseSave(text string) (*saved, error) {
	st := &saved{tables: map[string]*savedTable{}}
	var cur *savedTable
	var curName string
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		bad := func(why string) error {
			return fmt.Errorf("parsing iptables-save output line %d %q: %s", n+1, line, why)
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			curName = line[1:]
			cur = &savedTable{chains: map[string]bool{}}
			st.tables[curName] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, bad("outside a table")
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			cur.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			chain, raw, _ := strings.Cut(line[len("-A "):], " ")
			args, err := splitArgs(raw)
			if err != nil {
				return nil, bad(err.Error())
			}
			cur.rules = append(cur.rules, savedRule{table: curName, chain: chain, raw: raw, args: args})
		default:
			return nil, bad("unknown line")
		}
	}
	return st, nil
}

// splitArgs splits a rule the way iptables-restore does: on blanks, with
// double quotes grouping and a backslash escaping the next character.
func splitArgs(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inArg = true
		case c == '"':
			quoted = !quoted
			inArg = true
		case (c == ' ' || c == '\t') && !quoted:
			if inArg {
				out = append(out, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unbalanced quote")
	}
	if inArg {
		out = append(out, cur.String())
	}
	return out, nil
}

// opt returns the value after the last occurrence of option name.
func (r savedRule) opt(name string) string {
	v := ""
	for i := 0; i+1 < len(r.args); i++ {
		if r.args[i] == name {
			v = r.args[i+1]
		}
	}
	return v
}

// jumpsTo is the rule's -j or -g target.
func (r savedRule) jumpsTo() string {
	if t := r.opt("-j"); t != "" {
		return t
	}
	return r.opt("-g")
}

// mappingID is the id in a pasvgate mapping rule's comment, or "".
func (r savedRule) mappingID() string {
	id, _ := parseComment(r.opt("--comment"))
	return id
}

// parseComment reads the id and creation time out of a mapping rule's
// comment; id is "" for any other comment.
func parseComment(c string) (id string, created time.Time) {
	f := strings.Fields(c)
	if len(f) < 2 || f[0] != commentTag {
		return "", time.Time{}
	}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "id":
			if rules.ValidID(v) {
				id = v
			}
		case "created":
			if s, err := strconv.ParseInt(v, 10, 64); err == nil {
				created = time.Unix(s, 0)
			}
		}
	}
	return id, created
}

// count reports how many rules of r's chain equal r, and whether the first
// rule of the chain is one of them.
func (st *saved) count(r rule) (n int, first bool) {
	t := st.tables[r.table]
	if t == nil {
		return 0, false
	}
	pos := 0
	for _, sr := range t.rules {
		if sr.chain != r.chain {
			continue
		}
		if slices.Equal(sr.args, r.args) {
			if pos == 0 {
				first = true
			}
			n++
		}
		pos++
	}
	return n, first
}

func (st *saved) hasChain(table, chain string) bool {
	t := st.tables[table]
	return t != nil && t.chains[chain]
}

// damage lists what of pasvgate's fixed state is missing: chains, jumps,
// static rules. Empty means the install batch failed for another reason.
func (st *saved) damage(mark uint32) []string {
	var out []string
	for _, t := range tables {
		for _, c := range ownChains[t] {
			if !st.hasChain(t, c) {
				out = append(out, "chain "+t+"/"+c)
			}
		}
	}
	for _, j := range jumps {
		if n, _ := st.count(j.rule()); n == 0 {
			out = append(out, "jump "+j.table+"/"+j.from+" -> "+j.to)
		}
	}
	for _, r := range staticRules(mark) {
		if n, _ := st.count(r); n == 0 {
			out = append(out, "rule "+r.table+"/"+r.line("-A"))
		}
	}
	return out
}

// rulesOf returns the rules in pasvgate's chains that belong to mapping id.
func (st *saved) rulesOf(id string) []savedRule {
	var out []savedRule
	for _, t := range tables {
		tab := st.tables[t]
		if tab == nil {
			continue
		}
		for _, r := range tab.rules {
			if isOwnChain(r.chain) && r.mappingID() == id {
				out = append(out, r)
			}
		}
	}
	return out
}

// hasOwn reports whether st holds any pasvgate chain or any rule that jumps
// to one.
func (st *saved) hasOwn() bool {
	for _, tab := range st.tables {
		for c := range tab.chains {
			if isOwnChain(c) {
				return true
			}
		}
		for _, r := range tab.rules {
			if isOwnChain(r.jumpsTo()) {
				return true
			}
		}
	}
	return false
}

// hasNATRules reports whether st holds any of the nat rules of the mapping
// id, and so whether the kernel still holds its xt_recent list (its DNAT
// rule names it).
func (st *saved) hasNATRules(id string) bool {
	return slices.ContainsFunc(st.rulesOf(id), func(r savedRule) bool { return r.table == tableNAT })
}

// mappings rebuilds the mappings whose rules st holds, ordered by ID. Each
// of a mapping's rules tells most of it (the FORWARD and SNAT rules carry
// Public in their conntrack match), so a mapping of which only some rules
// are left is still reported.
func (st *saved) mappings() []rules.Mapping {
	byID := map[string]*rules.Mapping{}
	for _, t := range tables {
		tab := st.tables[t]
		if tab == nil {
			continue
		}
		for _, r := range tab.rules {
			if !isOwnChain(r.chain) {
				continue
			}
			id, created := parseComment(r.opt("--comment"))
			if id == "" {
				continue
			}
			m := byID[id]
			if m == nil {
				m = &rules.Mapping{ID: id, Created: created}
				byID[id] = m
			}
			if slices.Contains(strings.Fields(r.opt("--comment")), dialedWord) {
				r.fillDialed(m)
				continue
			}
			r.fill(m)
		}
	}
	out := make([]rules.Mapping, 0, len(byID))
	for _, m := range byID {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b rules.Mapping) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// fill sets the fields of m that r tells and m does not have yet.
func (r savedRule) fill(m *rules.Mapping) {
	setAddr := func(dst *netip.Addr, v string) {
		if !dst.IsValid() {
			*dst = parseHost(v)
		}
	}
	setAddrPort := func(dst *netip.AddrPort, a netip.Addr, port string) {
		p, err := strconv.ParseUint(port, 10, 16)
		if !dst.IsValid() && a.IsValid() && err == nil {
			*dst = netip.AddrPortFrom(a, uint16(p))
		}
	}
	setAddr(&m.Source, r.opt("-s"))
	switch r.jumpsTo() {
	case "DNAT":
		setAddrPort(&m.Public, parseHost(r.opt("-d")), r.opt("--dport"))
		if !m.Target.IsValid() {
			if ap, err := netip.ParseAddrPort(r.opt("--to-destination")); err == nil {
				m.Target = ap
			}
		}
	case "SNAT":
		setAddr(&m.SNAT, r.opt("--to-source"))
		fallthrough
	case ChainAdmit:
		setAddrPort(&m.Target, parseHost(r.opt("-d")), r.opt("--dport"))
		setAddrPort(&m.Public, parseHost(r.opt("--ctorigdst")), r.opt("--ctorigdstport"))
	}
}

// fillDialed sets m.Dialed from a rule of m's Dialed address, unless m
// has it already.
func (r savedRule) fillDialed(m *rules.Mapping) {
	if m.Dialed.IsValid() {
		return
	}
	switch r.jumpsTo() {
	case "DNAT":
		m.Dialed = parseHost(r.opt("-d"))
	case "SNAT", ChainAdmit:
		m.Dialed = parseHost(r.opt("--ctorigdst"))
	}
}

// parseHost parses an address as iptables-save prints it, with or without a
// host prefix length; anything else gives the zero Addr.
func parseHost(s string) netip.Addr {
	if p, err := netip.ParsePrefix(s); err == nil && p.IsSingleIP() {
		return p.Addr()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a
	}
	return netip.Addr{}
}
