package proxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// setOOBInline keeps TCP urgent data in c's byte stream, as FTP servers
// set their control connections.
func setOOBInline(t testing.TB, c net.Conn) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Error(err)
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if err := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1); err != nil {
			t.Error(err)
		}
	})
}

// recvOOB reads the urgent byte waiting on c (which must not have
// SO_OOBINLINE), or returns why there is none.
func recvOOB(c net.Conn) (byte, error) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var b [1]byte
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		var n int
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_OOB)
		if rerr == nil && n != 1 {
			rerr = errors.New("no urgent byte")
		}
	}); err != nil {
		return 0, err
	}
	return b[0], rerr
}

// TestSynchSentUrgent: a client aborts as RFC 959 4.1.3 says, Telnet IP,
// then the Synch (IAC DM, the DM sent as TCP urgent data), then ABOR; the
// server must get the DM as urgent data too, which is what a server that
// waits for the urgent signal during a transfer (vsftpd
// async_abor_enable) acts on (issue 12, low items; test/interop
// TestAsyncAbort shows it against vsftpd). Before the fix pasvgate sent
// the DM as a plain byte, and the server saw no urgent data at all.
func TestSynchSentUrgent(t *testing.T) {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type got struct {
		stream string
		oob    byte
		err    error
	}
	res := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- got{err: err}
			return
		}
		defer c.Close()
		// No SO_OOBINLINE here: the urgent byte is kept apart, where
		// recv(MSG_OOB) finds it, and the plain stream lacks it.
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("220 fake\r\n"))
		// The urgent byte can be read only until the stream is read past
		// it, and reads stop at it: read IAC IP IAC, then wait (bounded)
		// for the urgent byte, then the rest.
		head := make([]byte, 3)
		if _, err := io.ReadFull(c, head); err != nil {
			res <- got{stream: string(head), err: err}
			return
		}
		var oob byte
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if oob, err = recvOOB(c); err == nil || time.Now().After(deadline) {
				break
			}
		}
		line, rerr := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			err = rerr
		}
		_, _ = c.Write([]byte("226 ABOR done\r\n"))
		res <- got{stream: string(head) + line, oob: oob, err: err}
	}()
	h := newHarness(t, options{upstream: ln.Addr().String()})
	c := h.dial(t)
	// IP and IAC as plain bytes, then the DM as urgent data, as lftp does.
	if _, err := c.c.Write([]byte("\xff\xf4\xff")); err != nil {
		t.Fatal(err)
	}
	rc, err := c.c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		_, serr = syscall.SendmsgN(int(fd), []byte{0xf2}, nil, nil, syscall.MSG_OOB)
		return serr != syscall.EAGAIN
	}); err != nil || serr != nil {
		t.Fatalf("sending the DM urgent: %v, %v", err, serr)
	}
	c.send("ABOR")
	if r := c.reply(); !strings.HasPrefix(r, "226 ") {
		t.Fatalf("ABOR: %q", r)
	}
	g := <-res
	if g.err != nil || g.oob != 0xf2 {
		t.Fatalf("the server got the line %q and urgent byte %#x (%v), want the DM 0xf2 as urgent data", g.stream, g.oob, g.err)
	}
	if g.stream != "\xff\xf4\xffABOR\r\n" {
		t.Fatalf("the server's plain stream: %q, want IAC IP IAC ABOR (the DM is urgent)", g.stream)
	}
}
