package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// rawPair is a connected pair of loopback TCP sockets, the first with raw
// I/O.
func rawPair(t *testing.T) (raw net.Conn, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	r := Wrap(c)
	if _, ok := r.(*rawConn); !ok {
		t.Fatalf("Wrap(%T) = %T, want *rawConn", c, r)
	}
	return r, p
}

// TestRawConnStream: what is written either way arrives whole, a write
// far larger than the socket buffers waits for the reader rather than
// failing or stopping short, and the peer's close reads as io.EOF.
func TestRawConnStream(t *testing.T) {
	raw, peer := rawPair(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := raw.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}

	if _, err := peer.Write([]byte("220 hello\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := raw.Read(buf)
	if err != nil || string(buf[:n]) != "220 hello\r\n" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	peer.Close()
	if n, err := raw.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
}

// TestRawConnDeadlines: a read with nothing to read and a write into a
// full send buffer end at their deadlines with os.ErrDeadlineExceeded,
// which the command loop tells apart (an idle client), and a Close from
// another goroutine ends a waiting Read.
func TestRawConnDeadlines(t *testing.T) {
	raw, _ := rawPair(t)
	if err := raw.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := raw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := raw.Write(make([]byte, 64<<20)) // the peer never reads
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("Write into a full buffer = %d, %v; want part of it and os.ErrDeadlineExceeded", n, err)
	}

	_ = raw.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := raw.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	raw.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read ended by Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
}

// TestRawConnErrors: a write to a connection the peer reset fails with
// the socket's error rather than reporting success, and reads and writes
// of nothing do nothing.
func TestRawConnErrors(t *testing.T) {
	raw, peer := rawPair(t)
	if n, err := raw.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v", n, err)
	}
	if n, err := raw.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	// SO_LINGER 0: the close sends a reset.
	if err := peer.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = raw.Write([]byte("NOOP\r\n"))
		time.Sleep(time.Millisecond)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("Write after a reset: %v, want a write *net.OpError", err)
	}
}
