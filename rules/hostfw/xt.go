package hostfw

import (
	"context"
	"errors"
	"fmt"

	goipt "github.com/coreos/go-iptables/iptables"
)

// binary is the iptables binary that writes chains of kind k.
func binaryOf(k Kind, v6 bool) string {
	b := "iptables"
	if v6 {
		b = "ip6tables"
	}
	if k == IptablesLegacy {
		return b + "-legacy"
	}
	return b + "-nft"
}

// xtables is one iptables binary, through go-iptables.
type xtables struct {
	ipt *goipt.IPTables
	bin string
}

// iptables returns the go-iptables handle for kind k and a family, made
// on first use, which runs the binary once (go-iptables asks its
// version).
func (m *Manager) iptables(k Kind, v6 bool) (*xtables, error) {
	proto := goipt.ProtocolIPv4
	if v6 {
		proto = goipt.ProtocolIPv6
	}
	bin := binaryOf(k, v6)
	m.xtMu.Lock()
	defer m.xtMu.Unlock()
	if x, ok := m.xts[bin]; ok {
		return x, nil
	}
	secs := max(int(m.cfg.Timeout.Seconds()), 1)
	ipt, err := goipt.New(goipt.Path(bin), goipt.IPFamily(proto), goipt.Timeout(secs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	x := &xtables{ipt: ipt, bin: bin}
	m.xts[bin] = x
	return x, nil
}

// acceptSpec is the accept in ChainName, and jumpSpec the jump into it.
func acceptSpec(mark uint32) []string {
	return []string{"-m", "connmark", "--mark", fmt.Sprintf("0x%x/0x%x", mark, mark),
		"-m", "comment", "--comment", Comment, "-j", "ACCEPT"}
}

func jumpSpec() []string { return []string{"-m", "comment", "--comment", Comment, "-j", ChainName} }

// list is `-S chain` of the filter table.
func (x *xtables) list(_ context.Context, chain string) ([]string, error) {
	lines, err := x.ipt.List("filter", chain)
	if err != nil {
		return nil, fmt.Errorf("%s -S %s: %w", x.bin, chain, err)
	}
	return lines, nil
}

// ensure makes ChainName in table hold the accept, and FORWARD jump to
// it from its top, adding only what is missing.
func (x *xtables) ensure(_ context.Context, table string, mark uint32) error {
	ok, err := x.ipt.ChainExists(table, ChainName)
	if err != nil {
		return fmt.Errorf("%s: %w", x.bin, err)
	}
	if !ok {
		if err := x.ipt.NewChain(table, ChainName); err != nil {
			return fmt.Errorf("%s -N %s: %w", x.bin, ChainName, err)
		}
	}
	if ok, err := x.ipt.Exists(table, ChainName, acceptSpec(mark)...); err != nil || !ok {
		if err := x.ipt.Insert(table, ChainName, 1, acceptSpec(mark)...); err != nil {
			return fmt.Errorf("%s -I %s: %w", x.bin, ChainName, err)
		}
	}
	if ok, err := x.ipt.Exists(table, "FORWARD", jumpSpec()...); err != nil || !ok {
		if err := x.ipt.Insert(table, "FORWARD", 1, jumpSpec()...); err != nil {
			return fmt.Errorf("%s -I FORWARD: %w", x.bin, err)
		}
	}
	return nil
}

// remove deletes every jump to ChainName from FORWARD (as pasvgate made
// them) and the chain, and reports how many rules and chains it deleted.
func (x *xtables) remove(_ context.Context, table string) (int, error) {
	n := 0
	// Bounded: two processes' jumps at most, in practice one.
	for range 16 {
		ok, err := x.ipt.Exists(table, "FORWARD", jumpSpec()...)
		if err != nil || !ok {
			break
		}
		if err := x.ipt.Delete(table, "FORWARD", jumpSpec()...); err != nil {
			return n, fmt.Errorf("%s -D FORWARD: %w", x.bin, err)
		}
		n++
	}
	ok, err := x.ipt.ChainExists(table, ChainName)
	if err != nil || !ok {
		return n, nil
	}
	if err := x.ipt.ClearAndDeleteChain(table, ChainName); err != nil {
		var e *goipt.Error
		if errors.As(err, &e) && e.IsNotExist() {
			return n, nil
		}
		return n, fmt.Errorf("%s -X %s: %w", x.bin, ChainName, err)
	}
	return n + 1, nil
}
