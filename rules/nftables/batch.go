package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The element batches on a mapping's path, Install's and Remove's, are
// built and sent here rather than with google/nftables, for two reasons.
//
// First, google/nftables v0.3.0 cannot send NFT_MSG_DESTROYSETELEM, which
// makes a removal one transaction (below).
//
// Second, syscalls. google/nftables asks for an acknowledgement of every
// message and reads each with two recvmsg calls (a peek for the size,
// then the read): seven syscalls for an install of three messages. On a
// virtual machine where a syscall is dear, that was a good part of an
// install's time (issue 13). sendBatch asks for one acknowledgement, of
// the last message (the kernel reports a failed message whether asked or
// not), and reads every answer without waiting: the kernel handles a
// netfilter batch inside sendmsg, so all of them are queued by the time
// it returns. Two syscalls.

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
// removes a whole queue of them (RemoveBatch).
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
	var all elems
	for _, el := range els {
		all.dnat = append(all.dnat, el.dnat...)
		all.snat = append(all.snat, el.snat...)
		all.unused = append(all.unused, el.unused...)
	}
	msgs, err := elemMessages(o, all, unix.NFT_MSG_DELSETELEM, nftMsgDestroySetElem)
	if err != nil {
		return err
	}
	err = x.sendBatch(msgs)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		// An unknown message type gets EINVAL from nfnetlink. Nothing
		// else in this batch can be invalid: Install adds the very same
		// elements.
		return fmt.Errorf("%w: %w", errNoDestroy, err)
	}
	return err
}

// elemMessages makes the requests for el's elements of o's sets, in
// messages of at most maxMessageElements: mapsTyp for the dnat and snat
// maps, unusedTyp for SetUnused.
func elemMessages(o *objects, el elems, mapsTyp, unusedTyp uint16) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for _, y := range []struct {
		s   *nftables.Set
		typ uint16
		es  []nftables.SetElement
	}{{o.dnat, mapsTyp, el.dnat}, {o.snat, mapsTyp, el.snat}, {o.unused, unusedTyp, el.unused}} {
		for chunk := range slices.Chunk(y.es, maxMessageElements) {
			m, err := elemMessage(o.table, y.s, y.typ, chunk)
			if err != nil {
				return nil, err
			}
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}

// elemMessage is one NFT_MSG_*SETELEM request for es in s: keys only,
// for a delete; with data, timeout and comment, for NFT_MSG_NEWSETELEM,
// as google/nftables' SetAddElements would make it.
func elemMessage(t *nftables.Table, s *nftables.Set, typ uint16, es []nftables.SetElement) (netlink.Message, error) {
	items := make([]netlink.Attribute, 0, len(es))
	for i, e := range es {
		key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.Key}})
		if err != nil {
			return netlink.Message{}, err
		}
		attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}}
		if typ == unix.NFT_MSG_NEWSETELEM {
			if s.HasTimeout && e.Timeout != 0 {
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_TIMEOUT,
					Data: binary.BigEndian.AppendUint64(nil, uint64(e.Timeout/time.Millisecond))})
			}
			if len(e.Val) > 0 {
				val, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.Val}})
				if err != nil {
					return netlink.Message{}, err
				}
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED, Data: val})
			}
			if e.Comment != "" {
				attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_USERDATA,
					Data: userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, e.Comment)})
			}
		}
		item, err := netlink.MarshalAttributes(attrs)
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
	flags := netlink.Request
	if typ == unix.NFT_MSG_NEWSETELEM {
		// Without NLM_F_EXCL, as google/nftables: adding an element
		// that is there with the same data succeeds, so a retried batch
		// does no harm.
		flags |= netlink.Create
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}

// addBatchRaw sends one batch that adds el's elements to o's sets.
func addBatchRaw(x *conn, o *objects, el elems) error {
	msgs, err := elemMessages(o, el, unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_NEWSETELEM)
	if err != nil {
		return err
	}
	return x.sendBatch(msgs)
}

// rawBatchMax is the largest batch, in bytes, that sendBatch sends with a
// raw system call: an install is about 600 bytes, a removal about 75 per
// mapping. The removal worker's batches stay under it at about a thousand
// transfers a second (ten mappings per RemoveDelay); bigger ones, under
// heavier load, take long enough in the kernel to be worth handing the P
// on.
const rawBatchMax = 4 << 10

// batchHeader is the body of a batch begin or end message: nfgenmsg for
// the nftables subsystem.
var batchHeader = []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}

// appendMessage appends one netlink message, header and data padded to
// four bytes, to b, with the socket's next sequence number.
func (x *conn) appendMessage(b []byte, typ uint16, flags netlink.HeaderFlags, data []byte) []byte {
	x.seq++
	size := unix.NLMSG_HDRLEN + len(data)
	b = binary.NativeEndian.AppendUint32(b, uint32(size))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, uint16(flags))
	b = binary.NativeEndian.AppendUint32(b, x.seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // to the kernel
	b = append(b, data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// recvBuffer is enough for any answer to a batch: acknowledgements, and
// errors without the failed message (NETLINK_CAP_ACK, tuneSocket).
const recvBuffer = 64 << 10

// sendBatch sends msgs between a batch begin and end, one transaction,
// with an acknowledgement asked for the last message only, and reads
// every answer the kernel queued while it handled the batch: the
// acknowledgement, an error for each message that failed, and an error
// for the batch when its commit failed. The first error wins (the batch
// was aborted whole). An error that is not the kernel's answer leaves the
// socket out of step; the caller (do) replaces it.
//
// The kernel handles the whole batch inside the sendmsg, so one system
// call does the work and the answers are already queued when it returns.
// A small batch (an install, a few removals) is sent with a raw system
// call, as package proxy/rawio explains: its tens of µs in the kernel would
// otherwise make Go's scheduler hand the thread's P to another thread and
// back, on the path of every 227. A bigger batch may take milliseconds,
// and goes through the scheduler so that other sessions run meanwhile.
func (x *conn) sendBatch(msgs []netlink.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	msgs[len(msgs)-1].Header.Flags |= netlink.Acknowledge
	out := x.out[:0]
	out = x.appendMessage(out, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, batchHeader)
	for _, m := range msgs {
		out = x.appendMessage(out, uint16(m.Header.Type), m.Header.Flags, m.Data)
	}
	out = x.appendMessage(out, unix.NFNL_MSG_BATCH_END, netlink.Request, batchHeader)
	x.out = out
	rc, err := x.nl.SyscallConn()
	if err != nil {
		return err
	}
	send := unix.Syscall6
	if len(out) <= rawBatchMax {
		send = unix.RawSyscall6
	}
	var errno unix.Errno
	if err := rc.Write(func(fd uintptr) bool {
		for {
			_, _, errno = send(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)), 0, 0, 0)
			if errno != unix.EINTR {
				return errno != unix.EAGAIN
			}
		}
	}); err != nil {
		return fmt.Errorf("sending the batch: %w", err)
	}
	if errno != 0 {
		return fmt.Errorf("sending the batch: %w", errno)
	}
	if x.answers == nil {
		x.answers = make([]byte, recvBuffer)
	}
	buf := x.answers
	answers := 0
	var first error
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			// Raw, as the send: the answers are queued, so this only
			// copies them, or finds none (EAGAIN).
			r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_DONTWAIT, 0, 0)
			n, rerr = int(r), nil
			if errno != 0 {
				n, rerr = 0, errno
			}
			return true
		}); err != nil {
			return err
		}
		if errors.Is(rerr, unix.EINTR) {
			continue
		}
		if errors.Is(rerr, unix.EAGAIN) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("receiving the batch's answers: %w", rerr)
		}
		parsed, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parsing the batch's answers: %w", err)
		}
		for _, m := range parsed {
			answers++
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if no := -int32(binary.NativeEndian.Uint32(m.Data)); no != 0 && first == nil {
				first = &netlink.OpError{Op: "receive", Err: syscall.Errno(no)}
			}
		}
	}
	if answers == 0 {
		// Every batch is answered inside sendmsg; nothing means the
		// answers were lost (a full receive buffer).
		return fmt.Errorf("receiving the batch's answers: %w", unix.ENOBUFS)
	}
	return first
}
