package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// TestShutdownDrainsInParallel: a client that has stopped reading makes
// pasvgate's write of its 421 block until the write timeout. Shutdown must
// not meet such clients one after the other: with 4 of them and a 2s write
// timeout, a serial drain takes 8s; a parallel one about 2s.
func TestShutdownDrainsInParallel(t *testing.T) {
	up, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	var upWG sync.WaitGroup
	defer upWG.Wait()
	defer up.Close()
	upWG.Add(1)
	go func() {
		defer upWG.Done()
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			upWG.Add(1)
			go func() {
				defer upWG.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				c.Write([]byte("220 hi\r\n"))
				for sc := bufio.NewScanner(c); sc.Scan(); {
					c.Write([]byte("200 ok\r\n"))
				}
			}()
		}
	}()

	table, err := nat.New(&fake.Backend{}, nat.Config{Ports: nat.PortRange{Low: 20000, High: 20999}})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close(context.Background())
	p := &proxy.Server{Settings: proxy.Settings{Upstream: up.Addr().String(), PublicAddr: publicAddr, WriteTimeout: 2 * time.Second}, NAT: table}
	inner, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &stallListener{Listener: inner}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()

	const stuck = 4
	for i := 0; i < stuck; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		if l, err := r.ReadString('\n'); err != nil || l[:3] != "220" {
			t.Fatalf("greeting %q %v", l, err)
		}
	}
	ln.stall.Store(true) // from now on no client takes a byte

	drain, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer stop()
	t0 := time.Now()
	done := make(chan struct{})
	go func() { p.Shutdown(drain); close(done) }()
	select {
	case <-done:
		t.Logf("Shutdown with %d clients that take no byte: %v", stuck, time.Since(t0).Round(time.Millisecond))
	case <-time.After(stuck * 2 * time.Second):
		t.Fatalf("Shutdown still blocked after %v: the sessions are drained one at a time", stuck*2*time.Second)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// stallListener hands out connections whose writes, once stall is set,
// take no byte and wait for their write deadline (or Close), as writes to
// a client with a full receive window do.
type stallListener struct {
	net.Listener
	stall atomic.Bool
}

func (l *stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, l: l, closed: make(chan struct{})}, nil
}

type stallConn struct {
	net.Conn
	l        *stallListener
	mu       sync.Mutex
	deadline time.Time
	once     sync.Once
	closed   chan struct{}
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) Write(b []byte) (int, error) {
	if !c.l.stall.Load() {
		return c.Conn.Write(b)
	}
	c.mu.Lock()
	d := time.Until(c.deadline)
	c.mu.Unlock()
	if c.deadline.IsZero() {
		d = time.Hour
	}
	select {
	case <-time.After(d):
		return 0, context.DeadlineExceeded
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestShutdownWhileDialing stops pasvgate while a session is still dialing
// its server (an upstream whose accept queue is full, so the handshake
// hangs): the client gets its 421 at once, and nothing panics on the
// server leg the session does not have yet (before, the drain closed a nil
// connection).
func TestShutdownWhileDialing(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skip(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 2}}); err != nil {
		t.Skip(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Skip(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("127.0.0.2:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue: further handshakes get no answer.
	for i := 0; i < 4; i++ {
		if c, err := net.DialTimeout("tcp", upstream, 200*time.Millisecond); err == nil {
			defer c.Close()
		}
	}

	table, err := nat.New(&fake.Backend{}, nat.Config{Ports: nat.PortRange{Low: 20000, High: 20999}})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close(context.Background())
	p := &proxy.Server{Settings: proxy.Settings{Upstream: upstream, PublicAddr: publicAddr, DialTimeout: 3 * time.Second}, NAT: table}
	ln, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background(), ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for deadline := time.Now().Add(2 * time.Second); p.Stats().SessionsActive == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the session was never admitted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the dial is under way

	drain, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer stop()
	p.Shutdown(drain)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "421 ") {
		t.Errorf("a client whose server was still being dialed got %q at shutdown, want 421", line)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
