package hostfw

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// nativeAccept is pasvgate's rule for a native forward chain:
// `ct mark & MARK == MARK accept comment "pasvgate host-firewall"`.
func nativeAccept(t *nftables.Table, chain string, mark uint32) *nftables.Rule {
	m := binary.NativeEndian.AppendUint32(nil, mark)
	return &nftables.Rule{
		Table: t,
		Chain: &nftables.Chain{Name: chain, Table: t},
		Exprs: []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
		UserData: userdata.AppendString(nil, userdata.TypeComment, Comment),
	}
}

// tableOf is the nftables.Table of a native chain.
func tableOf(c Chain) *nftables.Table {
	for f, name := range families {
		if name == c.Family {
			return &nftables.Table{Name: c.Table, Family: f}
		}
	}
	return nil
}

// addNative inserts pasvgate's accept at the top of native chain c, in
// one batch of its own.
func (m *Manager) addNative(c Chain) error {
	t := tableOf(c)
	if t == nil {
		return fmt.Errorf("unknown family %q", c.Family)
	}
	x, err := dialNFT(m.cfg.Timeout)
	if err != nil {
		return err
	}
	defer x.close()
	x.c.InsertRule(nativeAccept(t, c.Name, m.cfg.Mark))
	return x.c.Flush()
}

// removeNative deletes every rule carrying Comment from the chains of
// native tables of family ip, ip6 and inet (not iptables-nft's, whose
// jumps iptables-nft removes), one batch.
func (m *Manager) removeNative() (int, error) {
	x, err := dialNFT(m.cfg.Timeout)
	if err != nil {
		return 0, err
	}
	defer x.close()
	chains, err := x.c.ListChains()
	if err != nil {
		return 0, fmt.Errorf("listing nftables chains: %w", err)
	}
	n := 0
	for _, ch := range chains {
		if _, ok := families[ch.Table.Family]; !ok || ch.Table.Name == ownTable || isIptablesNFT(ch.Table, ch.Name) {
			continue
		}
		rs, err := x.c.GetRules(ch.Table, ch)
		if err != nil {
			return n, fmt.Errorf("listing rules of %s %s %s: %w", families[ch.Table.Family], ch.Table.Name, ch.Name, err)
		}
		for _, r := range rs {
			if isOurs(r) {
				if err := x.c.DelRule(r); err != nil {
					return n, err
				}
				n++
			}
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := x.c.Flush(); err != nil {
		return 0, fmt.Errorf("deleting pasvgate's rules from native forward chains: %w", err)
	}
	return n, nil
}

// nftTable is an nf_tables table of iptables-nft's.
type nftTable struct {
	table string
	v6    bool
}

// iptablesNFTOwnChains lists the iptables-nft tables (family ip or ip6)
// that hold ChainName.
func (m *Manager) iptablesNFTOwnChains() ([]nftTable, error) {
	x, err := dialNFT(m.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	defer x.close()
	chains, err := x.c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []nftTable
	for _, ch := range chains {
		f := ch.Table.Family
		if ch.Name == ChainName && (f == nftables.TableFamilyIPv4 || f == nftables.TableFamilyIPv6) {
			out = append(out, nftTable{ch.Table.Name, f == nftables.TableFamilyIPv6})
		}
	}
	return out, nil
}
