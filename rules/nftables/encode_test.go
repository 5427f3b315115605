package nftables

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
)

// marshalElems is the element request as mdlayher/netlink marshals it,
// attribute by attribute: what appendElemMessage encoded before it wrote
// straight into the send buffer, and the reference it must match.
func marshalElems(t *testing.T, tb *nftables.Table, s *nftables.Set, typ uint16, es []nftables.SetElement) []byte {
	t.Helper()
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var items []netlink.Attribute
	for i, e := range es {
		attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED,
			Data: must(netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.Key}}))}}
		if typ == unix.NFT_MSG_NEWSETELEM {
			if s.HasTimeout && e.Timeout != 0 {
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_TIMEOUT,
					Data: binary.BigEndian.AppendUint64(nil, uint64(e.Timeout/time.Millisecond))})
			}
			if len(e.Val) > 0 {
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED,
					Data: must(netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.Val}}))})
			}
			if e.Comment != "" {
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_USERDATA,
					Data: userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, e.Comment)})
			}
		}
		items = append(items, netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: must(netlink.MarshalAttributes(attrs))})
	}
	data := must(netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(tb.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(s.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: must(netlink.MarshalAttributes(items))},
	}))
	return append([]byte{byte(tb.Family), unix.NFNETLINK_V0, 0, 0}, data...)
}

// TestElemMessagesEncoding checks the hand encoding of the element
// requests against mdlayher/netlink's, for installs and removals of both
// families: batch framing, sequence numbers, flags (the last request asks
// for the acknowledgement), and each request's body byte for byte.
func TestElemMessagesEncoding(t *testing.T) {
	created := time.Unix(1_780_000_000, 0)
	m4 := rules.Mapping{ID: "m4", Created: created,
		Source: netip.MustParseAddr("203.0.113.10"),
		Public: netip.MustParseAddrPort("203.0.113.1:40001"),
		Dialed: netip.MustParseAddr("203.0.113.2"),
		Target: netip.MustParseAddrPort("192.0.2.10:21001"),
		SNAT:   netip.MustParseAddr("192.0.2.1")}
	m6 := rules.Mapping{ID: "m6", Created: created,
		Source: netip.MustParseAddr("2001:db8::10"),
		Public: netip.MustParseAddrPort("[2001:db8::1]:40002"),
		Target: netip.MustParseAddrPort("[2001:db8:1::10]:21002")}
	var many []elems
	for i := range 2*maxMessageElements + 3 { // three messages or more per set
		m := m4
		m.ID = "m" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		m.Public = netip.AddrPortFrom(m.Public.Addr(), uint16(41000+i))
		many = append(many, elementsOf(m, time.Minute))
	}
	for _, tc := range []struct {
		name  string
		o     *objects
		els   []elems
		add   bool
		wantN int // requests
	}{
		{"install v4 with SNAT and Dialed", newObjects(fam4, TableName, time.Hour), []elems{elementsOf(m4, time.Minute)}, true, 3},
		{"install v6", newObjects(fam6, TableName, time.Hour), []elems{elementsOf(m6, 90*time.Second)}, true, 2},
		{"remove one", newObjects(fam4, TableName, time.Hour), []elems{elementsOf(m4, time.Minute)}, false, 3},
		{"remove many", newObjects(fam4, TableName, time.Hour), many, false, 11}, // dnat 2 per mapping
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &conn{seq: 41}
			var want [][]byte
			var types []uint16
			for _, y := range []struct {
				s   *nftables.Set
				typ uint16
				es  func(elems) []nftables.SetElement
			}{
				{tc.o.dnat, unix.NFT_MSG_DELSETELEM, func(e elems) []nftables.SetElement { return e.dnat }},
				{tc.o.snat, unix.NFT_MSG_DELSETELEM, func(e elems) []nftables.SetElement { return e.snat }},
				{tc.o.unused, nftMsgDestroySetElem, func(e elems) []nftables.SetElement { return e.unused }},
			} {
				typ := y.typ
				if tc.add {
					typ = unix.NFT_MSG_NEWSETELEM
				}
				var all []nftables.SetElement
				for _, el := range tc.els {
					all = append(all, y.es(el)...)
				}
				for len(all) > 0 {
					n := min(len(all), maxMessageElements)
					want = append(want, marshalElems(t, tc.o.table, y.s, typ, all[:n]))
					types = append(types, typ)
					all = all[n:]
				}
			}
			x.beginBatch()
			if tc.add {
				x.appendInstall(tc.o, tc.els[0])
			} else {
				x.appendRemoval(tc.o, tc.els)
			}
			// What sendBatch adds before sending: the acknowledgement flag
			// on the last request, and the batch end.
			flags := binary.NativeEndian.Uint16(x.out[x.last+6:])
			binary.NativeEndian.PutUint16(x.out[x.last+6:], flags|uint16(netlink.Acknowledge))
			x.out = x.appendMessage(x.out, unix.NFNL_MSG_BATCH_END, netlink.Request, batchHeader)

			msgs, err := netlinkMessages(x.out)
			if err != nil {
				t.Fatal(err)
			}
			if len(want) != tc.wantN || len(msgs) != tc.wantN+2 {
				t.Fatalf("%d messages (%d reference requests), want %d requests between a batch begin and end", len(msgs), len(want), tc.wantN)
			}
			for i, m := range msgs {
				if m.Header.Sequence != uint32(42+i) {
					t.Errorf("message %d: sequence %d, want %d", i, m.Header.Sequence, 42+i)
				}
				switch i {
				case 0, len(msgs) - 1:
					typ := unix.NFNL_MSG_BATCH_BEGIN
					if i > 0 {
						typ = unix.NFNL_MSG_BATCH_END
					}
					if int(m.Header.Type) != typ || m.Header.Flags != netlink.Request || !bytes.Equal(m.Data, batchHeader) {
						t.Errorf("message %d: %+v %x, want batch framing", i, m.Header, m.Data)
					}
					continue
				}
				wantFlags := netlink.Request
				if types[i-1] == unix.NFT_MSG_NEWSETELEM {
					wantFlags |= netlink.Create
				}
				if i == len(msgs)-2 {
					wantFlags |= netlink.Acknowledge
				}
				if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|types[i-1]) || m.Header.Flags != wantFlags {
					t.Errorf("request %d: type %#x flags %v, want %#x %v", i, m.Header.Type, m.Header.Flags,
						unix.NFNL_SUBSYS_NFTABLES<<8|types[i-1], wantFlags)
				}
				if !bytes.Equal(m.Data, want[i-1]) {
					t.Errorf("request %d:\n got %x\nwant %x", i, m.Data, want[i-1])
				}
			}
		})
	}
}

// netlinkMessages splits a buffer of netlink messages, checking each
// length and alignment.
func netlinkMessages(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN {
			return nil, fmt.Errorf("%d bytes left, less than a header", len(b))
		}
		n := int(binary.NativeEndian.Uint32(b))
		if n%unix.NLMSG_ALIGNTO != 0 || n < unix.NLMSG_HDRLEN || n > len(b) {
			return nil, fmt.Errorf("message of %d bytes, %d left", n, len(b))
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:n]); err != nil {
			return nil, err
		}
		out = append(out, m)
		b = b[n:]
	}
	return out, nil
}
