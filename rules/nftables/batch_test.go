package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// nftMsgGetGen and nftaGenID are NFT_MSG_GETGEN and NFTA_GEN_ID.
const (
	nftMsgGetGen = 16
	nftaGenID    = 1
)

// generation is the nf_tables ruleset generation of ns, which every
// committed transaction moves on by one.
func generation(t *testing.T, ns *netns.NS) uint32 {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns.Handle())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | nftMsgGetGen), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil || len(msgs) != 1 || len(msgs[0].Data) < 4 {
		t.Fatalf("NFT_MSG_GETGEN: %d messages, %v", len(msgs), err)
	}
	attrs, err := netlink.UnmarshalAttributes(msgs[0].Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attrs {
		if a.Type == nftaGenID && len(a.Data) == 4 {
			return binary.BigEndian.Uint32(a.Data)
		}
	}
	t.Fatal("NFT_MSG_NEWGEN without NFTA_GEN_ID")
	return 0
}

// use deletes m's SetUnused element by hand, as the kernel does with its
// data connection's first packet.
func use(t *testing.T, ns *netns.NS, m rules.Mapping) {
	t.Helper()
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetUnused,
		fmt.Sprintf("{ %s . %d }", m.Source, m.Public.Port()))
}

// installSamples installs n sample mappings on ports from port, and uses
// (as their data connection's first packet would) those whose index
// used says.
func installSamples(t *testing.T, ns *netns.NS, b *Backend, n int, port uint16, used func(i int) bool) []rules.Mapping {
	t.Helper()
	var ms []rules.Mapping
	for i := range n {
		m := rulestest.Sample(fmt.Sprintf("m-%d", port+uint16(i)), port+uint16(i))
		if err := b.Install(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		if used(i) {
			use(t, ns, m)
		}
		ms = append(ms, m)
	}
	return ms
}

// never and even are installSamples' choices of mappings to use.
func never(int) bool  { return false }
func even(i int) bool { return i%2 == 0 }

// TestRemoveOneTransaction: removing a mapping is one nf_tables
// transaction whether it was used or not, and removing a batch of them is
// one too (issue 13: before, a used mapping's removal was a failed
// transaction, for its spent SetUnused element, and then a second one).
// Nothing is left.
func TestRemoveOneTransaction(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)

	for _, m := range installSamples(t, ns, b, 2, 40001, func(i int) bool { return i == 0 }) {
		g := generation(t, ns)
		if err := b.Remove(ctx, m); err != nil {
			t.Fatalf("Remove %s: %v", m.ID, err)
		}
		if n := generation(t, ns) - g; n != 1 {
			t.Errorf("Remove of %s: %d transactions, want 1", m.ID, n)
		}
	}

	// Ten go out with a raw system call; two hundred are too big for
	// that and go through Go's scheduler (sendBatch). Either way, one
	// transaction.
	for _, c := range []struct {
		n    int
		port uint16
		raw  bool
	}{{10, 41000, true}, {200, 42000, false}} {
		batch := installSamples(t, ns, b, c.n, c.port, even)
		g := generation(t, ns)
		for i, err := range b.RemoveBatch(ctx, batch) {
			if err != nil {
				t.Errorf("RemoveBatch: %s: %v", batch[i].ID, err)
			}
		}
		if n := generation(t, ns) - g; n != 1 {
			t.Errorf("RemoveBatch of %d: %d transactions, want 1", c.n, n)
		}
		if raw := len(b.conn.out) <= rawBatchMax; raw != c.raw {
			t.Errorf("the removal of %d took %d bytes: sent raw %v, want %v (limit %d): the test misses a path",
				c.n, len(b.conn.out), raw, c.raw, rawBatchMax)
		}
	}
	if b.noDestroy {
		t.Error("this kernel refused NFT_MSG_DESTROYSETELEM")
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after the removals:\n%s\nwant:\n%s", got, base)
	}
}

// TestRemoveBatchMissing: when one mapping of a batch lost its elements
// (deleted from outside), the others are still removed, and that one
// reports rules.ErrNotInstalled, as Remove does.
func TestRemoveBatchMissing(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	base := stableRuleset(t, ns)
	batch := installSamples(t, ns, b, 4, 40001, never)
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetDNAT, "{ 203.0.113.10 . 203.0.113.2 . 40002 }")
	ns.MustRun(t, "nft", "delete", "element", "ip", TableName, SetSNAT, "{ 203.0.113.10 . 192.0.2.10 . 30000 . 40002 }")
	errs := b.RemoveBatch(ctx, batch)
	for i, err := range errs {
		if want := i == 1; want != (err != nil) || (want && !errors.Is(err, rules.ErrNotInstalled)) {
			t.Errorf("RemoveBatch: %s: %v", batch[i].ID, err)
		}
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after RemoveBatch:\n%s\nwant:\n%s", got, base)
	}
}

// TestRemoveWithoutDestroy: on a kernel without NFT_MSG_DESTROYSETELEM
// (forced here), used and unused mappings are still removed, singly and
// in a batch.
func TestRemoveWithoutDestroy(t *testing.T) {
	requireNFT(t)
	ctx := context.Background()
	ns, b := ready(t, Config{})
	b.noDestroy = true
	base := stableRuleset(t, ns)
	batch := installSamples(t, ns, b, 4, 40001, even)
	if err := b.Remove(ctx, batch[0]); err != nil {
		t.Errorf("Remove of a used mapping: %v", err)
	}
	if err := b.Remove(ctx, batch[1]); err != nil {
		t.Errorf("Remove of an unused mapping: %v", err)
	}
	for i, err := range b.RemoveBatch(ctx, batch[2:]) {
		if err != nil {
			t.Errorf("RemoveBatch: %s: %v", batch[2+i].ID, err)
		}
	}
	if got := stableRuleset(t, ns); got != base {
		t.Errorf("ruleset after the removals:\n%s\nwant:\n%s", got, base)
	}
}
