package nftables

import (
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Names of pasvgate's nftables objects. Installed systems and operators'
// firewalls know them by name, so once released they are never renamed.
const (
	// TableName is the name of pasvgate's two tables, one in family ip and
	// one in family ip6. pasvgate creates, changes and deletes nothing
	// outside them.
	TableName = "pasvgate"

	// ChainPrerouting (nat, hook prerouting, priority dstnat) marks and
	// DNATs a mapping's data connection when it comes in from outside.
	ChainPrerouting = "prerouting"
	// ChainOutput (nat, hook output, priority dstnat) does the same for
	// a client on the gateway itself.
	ChainOutput = "output"
	// ChainPostrouting (nat, hook postrouting, priority srcnat) uses up
	// a mapping with its data connection's first packet and SNATs the
	// connection when the mapping has SNAT.
	ChainPostrouting = "postrouting"
	// ChainInput (nat, hook input, priority srcnat) uses up a mapping
	// whose target is the gateway itself, whose data connection never
	// reaches postrouting.
	ChainInput = "input"

	// SetDNAT is the map (source . public address . public port) ->
	// (target address . target port). Its elements are the mappings:
	// List reads them. (Plain "dnat" and "snat" are nft keywords: nft
	// could neither list nor load maps named so.)
	SetDNAT = "dnat_map"
	// SetSNAT is the map (source . target address . target port .
	// public port) -> SNAT address, with an element for each mapping that
	// has SNAT.
	SetSNAT = "snat_map"
	// SetUnused is the set (source . public port) of the mappings whose
	// data connection has not come yet. A mapping DNATs only while its
	// element is there, and the kernel deletes the element itself when
	// the first connection leaves the gateway: a mapping admits one
	// connection. See consumeExprs.
	SetUnused = "unused_set"
)

// Comments on the static rules, shown by `nft list ruleset`.
const (
	commentMark    = "pasvgate: mark mapped data connections"
	commentDNAT    = "pasvgate: dnat mapped data connections"
	commentSNAT    = "pasvgate: snat mapped data connections"
	commentConsume = "pasvgate: one connection per mapping"
)

// family is one address family's table and the layout of its keys.
type family struct {
	name  string // "IPv4" or "IPv6", for logs and errors
	nft   string // "ip" or "ip6", as nft names the table family
	v6    bool
	tf    nftables.TableFamily
	proto uint32 // NFPROTO_IPV4 or NFPROTO_IPV6, for the nat expression
	alen  uint32 // address length in bytes
	saddr uint32 // offset of the source address in the network header
	daddr uint32 // offset of the destination address
	atype nftables.SetDatatype
}

var (
	fam4 = &family{name: "IPv4", nft: "ip", tf: nftables.TableFamilyIPv4, proto: unix.NFPROTO_IPV4,
		alen: 4, saddr: 12, daddr: 16, atype: nftables.TypeIPAddr}
	fam6 = &family{name: "IPv6", nft: "ip6", v6: true, tf: nftables.TableFamilyIPv6, proto: unix.NFPROTO_IPV6,
		alen: 16, saddr: 8, daddr: 24, atype: nftables.TypeIP6Addr}
)

// words is the number of 32-bit registers an address takes.
func (f *family) words() uint32 { return f.alen / 4 }

// objects are one family's table and maps, as values to add, delete or
// look up. The table is named TableName except in Available's throw-away
// check.
type objects struct {
	f                  *family
	table              *nftables.Table
	dnat, snat, unused *nftables.Set
}

// sets are o's sets in the order they are created.
func (o *objects) sets() []*nftables.Set { return []*nftables.Set{o.dnat, o.snat, o.unused} }

func newObjects(f *family, tableName string, timeout time.Duration) *objects {
	t := &nftables.Table{Name: tableName, Family: f.tf}
	// A set's ID names it within the batch that creates it, so it only
	// needs to be unique there. Left 0, google/nftables would draw one
	// from a package counter it does not guard, a data race between any
	// two Backends (or a Backend and Available) in one process.
	id := uint32(0)
	mk := func(name string, key, data nftables.SetDatatype, comment string) *nftables.Set {
		id++
		return &nftables.Set{
			ID: id, Table: t, Name: name, KeyType: key, IsMap: true, DataType: data,
			Concatenation: true, HasTimeout: true, Timeout: timeout,
			KeyByteOrder: binaryutil.BigEndian, Comment: comment,
		}
	}
	svc := nftables.TypeInetService
	id++
	unused := &nftables.Set{
		ID: id, Table: t, Name: SetUnused, KeyType: nftables.MustConcatSetType(f.atype, svc),
		Concatenation: true, HasTimeout: true, Timeout: timeout, KeyByteOrder: binaryutil.BigEndian,
		// Dynamic (NFT_SET_EVAL): the rules delete from it.
		Dynamic: true,
		Comment: "pasvgate: source . public port of mappings not used yet",
	}
	return &objects{
		unused: unused,
		f:      f,
		table:  t,
		dnat: mk(SetDNAT, nftables.MustConcatSetType(f.atype, f.atype, svc),
			nftables.MustConcatSetType(f.atype, svc),
			"pasvgate mappings: source . public address . public port : target address . target port"),
		snat: mk(SetSNAT, nftables.MustConcatSetType(f.atype, f.atype, svc, svc), f.atype,
			"pasvgate: source . target address . target port . public port : snat address"),
	}
}

// reg is the i-th 32-bit register. Keys are loaded into consecutive
// registers from reg(0) on, each field padded to a whole register, which
// is the layout of a concatenated set key.
func reg(i uint32) uint32 { return unix.NFT_REG32_00 + i }

// chains are the four base chains of a table.
func (o *objects) chains() []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	mk := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: o.table, Type: nftables.ChainTypeNAT, Hooknum: hook,
			Priority: prio, Policy: &accept}
	}
	return []*nftables.Chain{
		mk(ChainPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		mk(ChainOutput, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		mk(ChainPostrouting, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
		mk(ChainInput, nftables.ChainHookInput, nftables.ChainPriorityNATSource),
	}
}

// rules are the static rules in chain order. They never change while
// pasvgate runs: a mapping is only elements.
func (o *objects) rules(mark uint32) []*nftables.Rule {
	ch := o.chains()
	comment := func(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }
	var rs []*nftables.Rule
	for _, c := range ch[:2] {
		rs = append(rs,
			&nftables.Rule{Table: o.table, Chain: c, Exprs: o.markExprs(mark), UserData: comment(commentMark)},
			&nftables.Rule{Table: o.table, Chain: c, Exprs: o.dnatExprs(), UserData: comment(commentDNAT)})
	}
	return append(rs,
		&nftables.Rule{Table: o.table, Chain: ch[2], Exprs: o.consumeExprs(mark), UserData: comment(commentConsume)},
		&nftables.Rule{Table: o.table, Chain: ch[2], Exprs: o.snatExprs(mark), UserData: comment(commentSNAT)},
		&nftables.Rule{Table: o.table, Chain: ch[3], Exprs: o.consumeExprs(mark), UserData: comment(commentConsume)})
}

// ne is a 32-bit value as registers hold ct state and ct mark.
var ne = binaryutil.NativeEndian.PutUint32

// tcpOnly is `meta l4proto tcp`, which also guards the loads of the TCP
// header that follow.
func tcpOnly() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// loadPubKey loads `ip saddr . ip daddr . tcp dport` from reg(0) on.
func (o *objects) loadPubKey() []expr.Any {
	w := o.f.words()
	return []expr.Any{
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.saddr, Len: o.f.alen},
		&expr.Payload{DestRegister: reg(w), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.daddr, Len: o.f.alen},
		&expr.Payload{DestRegister: reg(2 * w), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// markExprs: meta l4proto tcp ip saddr . tcp dport @unused_set
// ip saddr . ip daddr . tcp dport @dnat_map ct mark set ct mark | MARK
//
// A nat chain sees only a connection's first packet, which is exactly
// when to mark it; the mark stays on the conntrack entry, for both
// directions, for the connection's whole life. The lookup uses the map as
// a set (its data ignored), so the mark goes on exactly the connections
// the next rule DNATs. It is a rule of its own because nat ends the rule
// it is in, and a mark set before the lookup in the same rule would read,
// in `nft list ruleset`, as if every packet were marked.
func (o *objects) markExprs(mark uint32) []expr.Any {
	e := tcpOnly()
	e = append(e, o.unusedLookup()...)
	e = append(e, o.loadPubKey()...)
	return append(e,
		&expr.Lookup{SourceRegister: reg(0), SetName: o.dnat.Name},
		&expr.Ct{Register: unix.NFT_REG_1, Key: expr.CtKeyMARK},
		// (mark & ^MARK) ^ MARK sets the bits, as nft encodes "|".
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4,
			Mask: ne(^mark), Xor: ne(mark)},
		&expr.Ct{Register: unix.NFT_REG_1, Key: expr.CtKeyMARK, SourceRegister: true},
	)
}

// dnatExprs: meta l4proto tcp ip saddr . tcp dport @unused_set
// dnat to ip saddr . ip daddr . tcp dport map @dnat_map
func (o *objects) dnatExprs() []expr.Any {
	w := o.f.words()
	e := tcpOnly()
	e = append(e, o.unusedLookup()...)
	e = append(e, o.loadPubKey()...)
	return append(e,
		&expr.Lookup{SourceRegister: reg(0), DestRegister: reg(0), IsDestRegSet: true, SetName: o.dnat.Name},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: o.f.proto, RegAddrMin: reg(0), RegProtoMin: reg(w), Specified: true},
	)
}

// snatExprs: meta l4proto tcp ct mark & MARK == MARK
// snat to ip saddr . ip daddr . tcp dport . ct original proto-dst map @snat_map fully-random
//
// fully-random: the kernel picks the source port at random among those
// free in conntrack instead of keeping the client's. Keeping it made the
// connection's tuple towards the target that of an earlier data
// connection whenever the client reused its source port and the server
// its passive port; when conntrack had forgotten the earlier one (a
// flush, an early drop) while the server still held it in TIME_WAIT, the
// server refused the new SYN and the transfer failed (issue 13; see
// rulestest.SNATPortReuse). A port in the same class (below 512, below
// 1024, or above) is kept for the few clients that check an active data
// connection's source port is privileged.
//
// The key is the client, where DNAT sent it, and the public port it
// dialled (from conntrack's original tuple); the mark says that a
// mapping's DNAT made the connection, so a connection made straight to
// the target is never SNATed. The key would also hold the public address,
// as the iptables backend's rule does, but google/nftables v0.3.0 cannot
// send `ct original ip daddr` (the kernel needs a direction it leaves out
// for that key) and nft 1.0.6 aborts listing the generic `ct original
// daddr` inside a concatenation. Install refuses instead the one case the
// address would tell apart: two mappings with the same source, target and
// public port. The public port comes last because nft can read back
// `ct original proto-dst` in a concatenation only after `tcp dport` has
// told it the protocol: in any other place a saved `nft list ruleset`
// would not load.
//
// A nat chain sees only a connection's first packet, so no state match is
// needed.
func (o *objects) snatExprs(mark uint32) []expr.Any {
	w := o.f.words()
	e := tcpOnly()
	return append(e,
		&expr.Ct{Register: unix.NFT_REG_1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4,
			Mask: ne(mark), Xor: ne(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: ne(mark)},
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.saddr, Len: o.f.alen},
		&expr.Payload{DestRegister: reg(w), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.daddr, Len: o.f.alen},
		&expr.Payload{DestRegister: reg(2 * w), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Ct{Register: reg(2*w + 1), Key: expr.CtKeyPROTODST, Direction: 0 /* IP_CT_DIR_ORIGINAL */},
		&expr.Lookup{SourceRegister: reg(0), DestRegister: reg(0), IsDestRegSet: true, SetName: o.snat.Name},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: o.f.proto, RegAddrMin: reg(0), FullyRandom: true},
	)
}

// unusedLookup is `ip saddr . tcp dport @unused_set`: the mapping the
// packet is for has not admitted a connection yet.
func (o *objects) unusedLookup() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.saddr, Len: o.f.alen},
		&expr.Payload{DestRegister: reg(o.f.words()), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg(0), SetName: o.unused.Name},
	}
}

// consumeExprs: meta l4proto tcp ct mark & MARK == MARK
// delete @unused_set { ip saddr . ct original proto-dst }
//
// This is what makes a mapping one-shot, like the kernel FTP helper's
// expectations: the first connection a mapping DNATs deletes the
// mapping's element of SetUnused, and the prerouting and output rules
// DNAT and mark nothing without it. So a second connection from the same
// client to the same public port (another source port: a new conntrack
// entry) is not DNATed: it is addressed to the gateway itself and refused
// there. The kernel does it from the datapath, with no round trip to
// pasvgate.
//
// It runs where NAT has been decided and the first packet has passed the
// forward hook: in the nat chains of postrouting (forwarded and local
// clients) and input (a mapping whose target is the gateway), which see a
// connection's first packet only, before the snat rule (snat ends the
// chain). There the packet's source is still the client, and conntrack's
// original tuple holds the public port it dialled. The connection's
// DNAT is in its conntrack entry already, and its SNAT is decided by the
// next rule: both stay for the connection's life. A first packet that
// the host firewall drops in forward does not use the mapping up, so its
// retransmission, once accepted, still gets through; one that gets
// through keeps its conntrack entry, so its retransmissions do not need
// the element.
//
// The key is the client and the public port because the public address
// is in the packet only before DNAT, and google/nftables v0.3.0 cannot
// send `ct original ip daddr` (see snatExprs). Install refuses two
// mappings with the same source and public port, so the key is a
// mapping's. The mark restricts the delete to connections a mapping
// made. dnat_map and snat_map elements are not deleted here: without
// the SetUnused element they admit nothing (snat needs the mark, which
// only a mapping's DNAT sets), and Remove or the timeout takes them out.
//
// Two first packets from one client that cross prerouting before either
// reaches postrouting (microseconds apart) both get through; the server
// accepts one of them on its passive port. What one-shot closes is the
// later connection, made after the server has given that port to someone
// else.
func (o *objects) consumeExprs(mark uint32) []expr.Any {
	w := o.f.words()
	e := tcpOnly()
	return append(e,
		&expr.Ct{Register: unix.NFT_REG_1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4,
			Mask: ne(mark), Xor: ne(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: ne(mark)},
		&expr.Payload{DestRegister: reg(0), Base: expr.PayloadBaseNetworkHeader, Offset: o.f.saddr, Len: o.f.alen},
		&expr.Ct{Register: reg(w), Key: expr.CtKeyPROTODST, Direction: 0 /* IP_CT_DIR_ORIGINAL */},
		&expr.Dynset{SrcRegKey: reg(0), SetName: o.unused.Name, Operation: dynsetOpDelete},
	)
}

// dynsetOpDelete is NFT_DYNSET_OP_DELETE, which
// golang.org/x/sys/unix does not name.
const dynsetOpDelete = 2
