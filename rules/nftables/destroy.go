package nftables

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftMsgDestroySetElem is NFT_MSG_DESTROYSETELEM (include/uapi/linux/
// netfilter/nf_tables.h, Linux 6.3): delete elements, and succeed for an
// element that is not there. golang.org/x/sys and google/nftables v0.3.0
// do not name it.
const nftMsgDestroySetElem = 30

// A used mapping's SetUnused element is gone: the kernel deleted it with
// the data connection's first packet. A removal that asked for it with
// NFT_MSG_DELSETELEM would fail (ENOENT) and undo its whole batch, so that
// used to take two transactions: the SetUnused element alone, failing,
// then the map elements. With NFT_MSG_DESTROYSETELEM for the SetUnused
// element, one transaction removes a mapping, used or not, and one
// removes a whole queue of them (RemoveBatch): the nf_tables commit is
// the removal's cost, and it is shared with the next install's when they
// meet.
//
// google/nftables cannot send the message, so delBatchDestroy builds the
// batch itself and sends it on the lasting connection's socket, which is
// ours while b.sem is held.

// errNoDestroy says that the kernel does not know NFT_MSG_DESTROYSETELEM
// (before 6.3): the caller goes back to the two-transaction removal.
var errNoDestroy = errors.New("the kernel has no NFT_MSG_DESTROYSETELEM")

// delBatchDestroy sends one batch that deletes every element of els from
// o's sets: the map elements with NFT_MSG_DELSETELEM, so that a missing
// one fails the batch (ENOENT) and the caller can tell what was missing,
// and the SetUnused elements with NFT_MSG_DESTROYSETELEM.
func delBatchDestroy(x *conn, o *objects, els []elems) error {
	var dnat, snat, unused []nftables.SetElement
	for _, el := range els {
		dnat = append(dnat, el.dnat...)
		snat = append(snat, el.snat...)
		unused = append(unused, el.unused...)
	}
	var msgs []netlink.Message
	for _, x := range []struct {
		s   *nftables.Set
		typ uint16
		es  []nftables.SetElement
	}{{o.dnat, unix.NFT_MSG_DELSETELEM, dnat}, {o.snat, unix.NFT_MSG_DELSETELEM, snat}, {o.unused, nftMsgDestroySetElem, unused}} {
		for chunk := range slices.Chunk(x.es, maxMessageElements) {
			m, err := elemMessage(o.table, x.s, x.typ, chunk)
			if err != nil {
				return err
			}
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return sendBatch(x.nl, msgs)
}

// elemMessage is one NFT_MSG_*SETELEM request for the keys of es in s.
func elemMessage(t *nftables.Table, s *nftables.Set, typ uint16, es []nftables.SetElement) (netlink.Message, error) {
	items := make([]netlink.Attribute, 0, len(es))
	for i, e := range es {
		key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.Key}})
		if err != nil {
			return netlink.Message{}, err
		}
		item, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}})
		if err != nil {
			return netlink.Message{}, err
		}
		items = append(items, netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: item})
	}
	list, err := netlink.MarshalAttributes(items)
	if err != nil {
		return netlink.Message{}, err
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(t.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(s.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: list},
	})
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}

// sendBatch sends msgs between a batch begin and end, one transaction,
// and reads one acknowledgement for each: the kernel answers every
// message that asked for one, with an error for those that failed, after
// it has committed or aborted the whole batch. The first error wins: a
// batch with a failed message was aborted whole. An error that is not
// the kernel's answer leaves the socket out of step; the caller (do)
// replaces it.
func sendBatch(nl *netlink.Conn, msgs []netlink.Message) error {
	batch := make([]netlink.Message, 0, len(msgs)+2)
	begin := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
	end := begin
	end.Header.Type = netlink.HeaderType(unix.NFNL_MSG_BATCH_END)
	batch = append(append(append(batch, begin), msgs...), end)
	if _, err := nl.SendMessages(batch); err != nil {
		return fmt.Errorf("SendMessages: %w", err)
	}
	var first error
	for acks := 0; acks < len(msgs); {
		// Receive returns the kernel's error answer as an error; each
		// message it does return is one acknowledgement.
		got, err := nl.Receive()
		if err != nil {
			if kernelErrno(err) == 0 {
				return err
			}
			if first == nil {
				first = err
			}
			acks++
			continue
		}
		acks += len(got)
	}
	if errors.Is(first, unix.EINVAL) || errors.Is(first, unix.EOPNOTSUPP) {
		// An unknown message type gets EINVAL from nfnetlink. Nothing
		// else in this batch can be invalid: the same elements are
		// deleted with NFT_MSG_DELSETELEM on older kernels.
		return fmt.Errorf("%w: %w", errNoDestroy, first)
	}
	return first
}
