package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
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
	x.beginBatch()
	x.appendRemoval(o, els)
	err := x.sendBatch()
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		// An unknown message type gets EINVAL from nfnetlink. Nothing
		// else in this batch can be invalid: Install adds the very same
		// elements.
		return fmt.Errorf("%w: %w", errNoDestroy, err)
	}
	return err
}

// addBatchRaw sends one batch that adds el's elements to o's sets.
func addBatchRaw(x *conn, o *objects, el elems) error {
	x.beginBatch()
	x.appendInstall(o, el)
	return x.sendBatch()
}

// appendInstall appends the requests that add el's elements to o's sets.
func (x *conn) appendInstall(o *objects, el elems) {
	x.appendElems(o.table, o.dnat, unix.NFT_MSG_NEWSETELEM, el.dnat)
	x.appendElems(o.table, o.snat, unix.NFT_MSG_NEWSETELEM, el.snat)
	x.appendElems(o.table, o.unused, unix.NFT_MSG_NEWSETELEM, el.unused)
}

// appendRemoval appends the requests that delete els' elements from o's
// sets (see delBatchDestroy), each set's together in as few messages as
// fit.
func (x *conn) appendRemoval(o *objects, els []elems) {
	for _, y := range [...]struct {
		s   *nftables.Set
		typ uint16
		es  func(elems) []nftables.SetElement
	}{
		{o.dnat, unix.NFT_MSG_DELSETELEM, func(e elems) []nftables.SetElement { return e.dnat }},
		{o.snat, unix.NFT_MSG_DELSETELEM, func(e elems) []nftables.SetElement { return e.snat }},
		{o.unused, nftMsgDestroySetElem, func(e elems) []nftables.SetElement { return e.unused }},
	} {
		all := x.scratch[:0]
		for _, el := range els {
			all = append(all, y.es(el)...)
		}
		x.appendElems(o.table, y.s, y.typ, all)
		clear(all)
		x.scratch = all
	}
}

// The messages are encoded straight into x.out, the socket's kept send
// buffer, rather than built as netlink.Messages of marshalled attributes:
// that took about a hundred allocations per install and removal, on the
// path of every 227 (issue 13). Each element is encoded as google/nftables'
// SetAddElements encodes it, and every message byte for byte as
// mdlayher/netlink marshalled the same attributes before
// (TestElemMessagesEncoding).

// beginBatch starts a batch in x.out.
func (x *conn) beginBatch() {
	x.out = x.appendMessage(x.out[:0], unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, batchHeader)
	x.last = -1
}

// appendElems appends the NFT_MSG_*SETELEM requests (typ) for es in s, in
// messages of at most maxMessageElements: keys only, for a delete; with
// data, timeout and comment, for NFT_MSG_NEWSETELEM.
func (x *conn) appendElems(t *nftables.Table, s *nftables.Set, typ uint16, es []nftables.SetElement) {
	for len(es) > 0 {
		n := min(len(es), maxMessageElements)
		x.appendElemMessage(t, s, typ, es[:n])
		es = es[n:]
	}
}

// appendElemMessage appends one NFT_MSG_*SETELEM request for es in s.
func (x *conn) appendElemMessage(t *nftables.Table, s *nftables.Set, typ uint16, es []nftables.SetElement) {
	flags := netlink.Request
	if typ == unix.NFT_MSG_NEWSETELEM {
		// Without NLM_F_EXCL, as google/nftables: adding an element
		// that is there with the same data succeeds, so a retried batch
		// does no harm.
		flags |= netlink.Create
	}
	b := x.out
	x.last = len(b)
	x.seq++
	b = binary.NativeEndian.AppendUint32(b, 0) // length, below
	b = binary.NativeEndian.AppendUint16(b, unix.NFNL_SUBSYS_NFTABLES<<8|typ)
	b = binary.NativeEndian.AppendUint16(b, uint16(flags))
	b = binary.NativeEndian.AppendUint32(b, x.seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // to the kernel
	b = append(b, byte(t.Family), unix.NFNETLINK_V0, 0, 0)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, t.Name)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_SET, s.Name)
	list := len(b)
	b = beginNested(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	for i, e := range es {
		item := len(b)
		b = beginNested(b, uint16(i+1))
		key := len(b)
		b = beginNested(b, unix.NFTA_SET_ELEM_KEY)
		b = appendAttr(b, unix.NFTA_DATA_VALUE, e.Key)
		b = endNested(b, key)
		if typ == unix.NFT_MSG_NEWSETELEM {
			if s.HasTimeout && e.Timeout != 0 {
				b = appendAttrHeader(b, unix.NFTA_SET_ELEM_TIMEOUT, 8)
				b = binary.BigEndian.AppendUint64(b, uint64(e.Timeout/time.Millisecond))
			}
			if len(e.Val) > 0 {
				val := len(b)
				b = beginNested(b, unix.NFTA_SET_ELEM_DATA)
				b = appendAttr(b, unix.NFTA_DATA_VALUE, e.Val)
				b = endNested(b, val)
			}
			if e.Comment != "" {
				// userdata: a type byte, a length byte, the string and
				// its NUL (google/nftables' userdata.AppendString).
				n := min(len(e.Comment), 254)
				b = appendAttrHeader(b, unix.NFTA_SET_ELEM_USERDATA, 2+n+1)
				b = append(b, byte(userdata.NFTNL_UDATA_SET_ELEM_COMMENT), byte(n+1))
				b = append(b, e.Comment[:n]...)
				b = pad(append(b, 0))
			}
		}
		b = endNested(b, item)
	}
	b = endNested(b, list)
	binary.NativeEndian.PutUint32(b[x.last:], uint32(len(b)-x.last))
	x.out = b
}

// appendAttrHeader appends a netlink attribute's header for n bytes of
// data, which the caller appends, then pads.
func appendAttrHeader(b []byte, typ uint16, n int) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+n))
	return binary.NativeEndian.AppendUint16(b, typ)
}

// appendAttr appends one netlink attribute, padded to four bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	return pad(append(appendAttrHeader(b, typ, len(data)), data...))
}

// appendStringAttr appends a NUL-terminated string attribute.
func appendStringAttr(b []byte, typ uint16, s string) []byte {
	b = appendAttrHeader(b, typ, len(s)+1)
	return pad(append(append(b, s...), 0))
}

// beginNested appends the header of a nested attribute whose length
// endNested sets, once its contents follow.
func beginNested(b []byte, typ uint16) []byte {
	return appendAttrHeader(b, typ|unix.NLA_F_NESTED, 0)
}

// endNested sets the length of the nested attribute that starts at start.
func endNested(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

// pad pads b to netlink's four-byte alignment.
func pad(b []byte) []byte {
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
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

// sendBatch ends the batch begun in x.out (beginBatch, appendElems) and
// sends it, one transaction, with an acknowledgement asked for the last
// request only, and reads every answer the kernel queued while it
// handled the batch: the acknowledgement, an error for each message that
// failed, and an error for the batch when its commit failed. The first
// error wins (the batch was aborted whole). An error that is not the kernel's answer leaves the
// socket out of step; the caller (do) replaces it.
//
// The kernel handles the whole batch inside the sendmsg, so one system
// call does the work and the answers are already queued when it returns.
// A small batch (an install, a few removals) is sent with a raw system
// call, as package proxy/rawio explains: its tens of µs in the kernel would
// otherwise make Go's scheduler hand the thread's P to another thread and
// back, on the path of every 227. A bigger batch may take milliseconds,
// and goes through the scheduler so that other sessions run meanwhile.
func (x *conn) sendBatch() error {
	if x.last < 0 {
		return nil
	}
	flags := binary.NativeEndian.Uint16(x.out[x.last+6:])
	binary.NativeEndian.PutUint16(x.out[x.last+6:], flags|uint16(netlink.Acknowledge))
	x.out = x.appendMessage(x.out, unix.NFNL_MSG_BATCH_END, netlink.Request, batchHeader)
	out := x.out
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
