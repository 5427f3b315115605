package nftables

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socketBuffer is the receive and send buffer of the netlink socket. A
// batch's acknowledgements all arrive before they are read, and an
// overflow loses them (ENOBUFS) with the batch's outcome; big element
// batches (a rebuild) need the send side. 4 MiB holds far more than any
// batch this package sends.
const socketBuffer = 4 << 20

// maxMessageElements bounds the elements in one netlink message.
// google/nftables puts all the elements it is given in one nested
// attribute, whose length is 16 bits: past 64 KiB it wraps, and the
// kernel reads garbage. An element takes at most about 170 bytes.
const maxMessageElements = 256

// maxBatchMappings bounds the mappings in one batch (one sendmsg), so that
// a batch fits even a socket whose buffer could not be forced past the
// usual wmem_max of 208 KiB.
const maxBatchMappings = 512

// maxAttempts bounds the attempts of one operation when the socket
// reports EINTR or ENOBUFS.
const maxAttempts = 3

// conn is the one lasting netlink connection. The nftables.Conn does not
// expose its socket, so the socket is caught while it is dialled, to set
// buffers, acknowledgement options and deadlines on it.
type conn struct {
	c  *nftables.Conn
	nl *netlink.Conn
	// answers is sendBatch's receive buffer, kept with the socket: made
	// for every batch, its 64 KiB were most of what an install and a
	// removal allocated, and the garbage collections they caused cost
	// about a sixth of pasvgate's CPU time under back-to-back transfers.
	// The Backend's lock serializes its users.
	answers []byte
	// out is sendBatch's send buffer, kept for the same reason, seq
	// the sequence number of its last message, and last the offset in
	// out of the last request (-1: none), which asks for the
	// acknowledgement.
	out  []byte
	seq  uint32
	last int
	// scratch gathers a removal batch's elements of one set
	// (delBatchDestroy), kept for the same reason.
	scratch []nftables.SetElement
}

// dial opens a lasting connection in the network namespace nsfd.
func dial(nsfd int) (*conn, error) {
	x := &conn{}
	c, err := nftables.New(
		nftables.AsLasting(),
		nftables.WithNetNSFd(nsfd),
		nftables.WithSockOptions(func(nl *netlink.Conn) error {
			x.nl = nl
			return tuneSocket(nl)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink socket: %w", err)
	}
	if x.nl == nil {
		_ = c.CloseLasting()
		return nil, errors.New("opening nftables netlink socket: no socket")
	}
	x.c = c
	return x, nil
}

// tuneSocket sizes the buffers (forcing past rmem_max and wmem_max, which
// CAP_NET_ADMIN allows, else as far as they allow) and asks for short
// error acknowledgements: without NETLINK_CAP_ACK an error echoes the
// whole failed message, which for a big element batch is what overflows
// the receive buffer.
func tuneSocket(nl *netlink.Conn) error {
	rc, err := nl.SyscallConn()
	if err != nil {
		return err
	}
	var forced bool
	if err := rc.Control(func(fd uintptr) {
		e1 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
		e2 := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		forced = e1 == nil && e2 == nil
	}); err != nil {
		return err
	}
	if !forced {
		_ = nl.SetReadBuffer(socketBuffer)
		_ = nl.SetWriteBuffer(socketBuffer)
	}
	return nl.SetOption(netlink.CapAcknowledge, true)
}

func (x *conn) close() {
	if x != nil && x.c != nil {
		_ = x.c.CloseLasting()
	}
}

// kernelErrno returns the errno of err when err is the kernel's answer to
// a request (the socket is then still in step with the kernel), or 0. A
// timeout, a closed socket or a reply the library could not make sense of
// is 0: after those the socket may hold answers nobody will read, so it is
// replaced.
func kernelErrno(err error) syscall.Errno {
	var op *netlink.OpError
	if !errors.As(err, &op) {
		return 0
	}
	var no syscall.Errno
	if errors.As(op.Err, &no) {
		return no
	}
	return 0
}

// IsNotExist reports whether err says that something pasvgate refers to
// (its table, a set, an element) is not in the kernel.
func IsNotExist(err error) bool { return kernelErrno(err) == unix.ENOENT }

// isClash reports whether the kernel refused to add an element because
// one with the same key and other data is there (another process's).
func isClash(err error) bool {
	no := kernelErrno(err)
	return no == unix.EEXIST || no == unix.EBUSY
}

// transient reports the socket errors that are worth one more attempt:
// an interrupted call, or acknowledgements lost to a full receive buffer.
func transient(err error) bool {
	return errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS)
}

// do runs f on the lasting connection, with the socket's deadline set to
// ctx's or Config.OpTimeout from now, whichever is sooner. It dials when
// there is no connection, replaces the connection after any error that is
// not a clean kernel answer, and tries again, up to maxAttempts in all,
// after EINTR and ENOBUFS. Retrying is safe because every batch this
// package sends can be sent twice: adding an element that is already
// there with the same data succeeds, and a delete that finds nothing is
// handled by the caller. Must be called with b.sem held.
func (b *Backend) do(ctx context.Context, f func(c *nftables.Conn) error) error {
	var err error
	for attempt := 1; ; attempt++ {
		if cerr := ctx.Err(); cerr != nil {
			if err != nil {
				return fmt.Errorf("%w (after %w)", cerr, err)
			}
			return cerr
		}
		if b.conn == nil {
			if b.conn, err = dial(b.nsfd); err != nil {
				return err
			}
		}
		deadline := time.Now().Add(b.cfg.OpTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err = b.conn.nl.SetDeadline(deadline); err != nil {
			b.resetConn()
			return fmt.Errorf("setting the netlink deadline: %w", err)
		}
		err = f(b.conn.c)
		if err == nil {
			return nil
		}
		if kernelErrno(err) == 0 || transient(err) {
			b.resetConn()
		}
		if !transient(err) || attempt >= maxAttempts {
			return err
		}
		b.log.Debug("retrying a netlink operation", "attempt", attempt, "err", err)
	}
}

func (b *Backend) resetConn() {
	b.conn.close()
	b.conn = nil
}
