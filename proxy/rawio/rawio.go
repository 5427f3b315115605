// Package rawio is how pasvgate reads and writes its control connections:
// with the socket's read and write system calls made raw, without telling
// Go's scheduler. test/bench's floor relay (column F) uses it too, so that
// the floor is what a relay with pasvgate's own I/O costs.
//
// Why. Go's net package wraps every read and write in entersyscall and
// exitsyscall. When a call lasts more than one tick of the runtime's
// monitor thread (sysmon, 20 µs), the monitor takes the thread's P away
// and hands it to another thread, which must be woken; the first thread
// then has to get a P back when its call returns. With GOMAXPROCS=1
// (cmd/pasvgate/procs.go) there is no idle P, so this happens on nearly
// every write of a reply: writing to a TCP socket runs the receiver's side of the kernel
// path too, and on a virtual machine that takes tens of µs. Under
// back-to-back transfers `perf trace` counted about seven wake-ups of the
// monitor and two thread hand-offs per transfer, and the monitor alone
// took a tenth of a CPU. A control connection's socket is non-blocking, so
// the raw call never sleeps in the kernel: it returns data, EAGAIN, or an
// error, and the wait for readiness stays in Go's poller (RawConn.Read and
// Write), deadlines included. What the P loses is only the call's own CPU
// time, during which it could not have run anything else either.
//
// Measured with `go run ./test/bench -baseline` (the same build without
// this, rounds interleaved): NOOP round trip 97 vs 103 µs, 1 KiB
// downloads 1021 vs 917/s (PASV) and 1103 vs 954/s (EPSV), together with
// the same change to the nftables install (rules/nftables/batch.go).
package rawio

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn is a socket's net.Conn whose Read and Write make raw system
// calls. Everything else (Close, deadlines, addresses) is the net.Conn's.
//
// The calls' arguments and results live in the struct, and the callbacks
// handed to RawConn are method values made once, so that relaying a line
// allocates nothing (package proxy's TestRelayedLinesDoNotAllocate): a
// closure per call would escape to the heap. rmu and wmu keep concurrent
// Reads, or Writes, from sharing them.
type rawConn struct {
	net.Conn
	rc syscall.RawConn

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wdone   int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// Wrap returns c with raw reads and writes, or c itself if it is not
// a socket (tests use in-memory connections).
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

// SyscallConn is the socket's, for the socket options and urgent data
// that the proxy reaches through it.
func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Read reads what the socket has, waiting in Go's poller while it has
// nothing. A read of 0 bytes at the end of the stream is io.EOF.
func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerrno = b, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// opError is a failed system call's error, as the net package reports
// one.
func (c *rawConn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
}

// read is Read's callback: one read(2), done unless the socket had
// nothing (EAGAIN), in which case RawConn waits for it in the poller.
func (c *rawConn) read(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		if e == syscall.EINTR {
			continue
		}
		c.rn, c.rerrno = int(r), e
		if e != 0 {
			c.rn = 0
		}
		return e != syscall.EAGAIN
	}
}

// Write writes all of b, waiting in Go's poller while the socket's send
// buffer is full, up to the write deadline.
func (c *rawConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wdone, c.werrno = b, 0, 0
	err := c.rc.Write(c.writeFn)
	done, errno := c.wdone, c.werrno
	c.wbuf = nil
	switch {
	case err != nil:
		return done, err
	case errno != 0:
		return done, c.opError("write", errno)
	}
	return done, nil
}

// write is Write's callback: write(2) until all of wbuf is sent, or the
// send buffer is full (EAGAIN: RawConn waits, then calls it again), or an
// error.
func (c *rawConn) write(fd uintptr) bool {
	for c.wdone < len(c.wbuf) {
		rest := c.wbuf[c.wdone:]
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			c.wdone += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werrno = e
			return true
		}
	}
	return true
}
