package pool

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Behaviours of a fakeServer towards each new connection.
const (
	greet   int32 = iota // "220 NAME ready", then 221 to QUIT
	multi                // a three-line 220 greeting
	stall                // accept, say nothing
	busy                 // "421 Too many users", close
	hangup               // accept and close at once
	flood                // bytes without end, no line end
	garbage              // a line that is not a reply
	mute                 // "220 NAME ready", then deaf to QUIT
)

// fakeServer is an FTP server as far as a pool sees one: it greets (or
// not) on 127.0.0.1 at an ephemeral port.
type fakeServer struct {
	addr     string
	name     string
	mode     atomic.Int32
	accepted atomic.Int64
	headers  chan *proxyproto.Header // with PROXY protocol: each connection's header (nil: none or broken)

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	done  chan struct{}
}

// newFake starts a fake server; with pp, it requires a PROXY header (as a
// server configured for it does) and records it.
func newFake(t *testing.T, name string, pp bool) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{addr: ln.Addr().String(), name: name, ln: ln, conns: map[net.Conn]bool{}, done: make(chan struct{})}
	if pp {
		f.headers = make(chan *proxyproto.Header, 100)
		f.ln = &proxyproto.Listener{Listener: ln, ReadHeaderTimeout: 5 * time.Second}
	}
	f.wg.Go(f.serve)
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.mu.Lock()
		f.conns[c] = true
		f.mu.Unlock()
		f.wg.Go(func() {
			defer func() {
				c.Close()
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
			}()
			f.handle(c)
		})
	}
}

func (f *fakeServer) handle(c net.Conn) {
	if pc, ok := c.(*proxyproto.Conn); ok {
		h := pc.ProxyHeader()
		select {
		case f.headers <- h:
		default:
		}
		if h == nil {
			return // a server requiring the header drops the connection
		}
	}
	switch f.mode.Load() {
	case greet:
		io.WriteString(c, "220 "+f.name+" ready\r\n")
	case multi:
		io.WriteString(c, "220-"+f.name+"\r\n220-welcome\r\n220 ready\r\n")
	case stall:
		io.Copy(io.Discard, c)
		return
	case busy:
		io.WriteString(c, "421 Too many users\r\n")
		return
	case hangup:
		return
	case flood:
		b := []byte(strings.Repeat("x", 1024))
		for {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	case garbage:
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		return
	case mute:
		io.WriteString(c, "220 "+f.name+" ready\r\n")
		io.Copy(io.Discard, c)
		return
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if strings.EqualFold(strings.TrimSpace(sc.Text()), "QUIT") {
			io.WriteString(c, "221 bye\r\n")
			return
		}
	}
}

// close stops the server and ends its connections.
func (f *fakeServer) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// open reports the connections the server holds open.
func (f *fakeServer) open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// refusedAddr is an address nothing listens on: connecting to it is
// refused.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// greeting reads the first line a Dial's connection got: which server it
// reached, from the server's own mouth.
func greeting(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading greeting: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return strings.TrimSpace(line)
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logRecord is one log line, flattened.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logRecorder is a slog.Handler that keeps what it is given.
type logRecorder struct {
	mu   sync.Mutex
	recs []logRecord
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, rec)
	l.mu.Unlock()
	return nil
}

// find returns the records with message msg about server.
func (l *logRecorder) find(msg, server string) []logRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logRecord
	for _, r := range l.recs {
		if r.msg == msg && r.attrs["server"] == server {
			out = append(out, r)
		}
	}
	return out
}

// newPool makes a pool logging into a recorder, with a short retry.
func newPool(cfg Config) (*Pool, *logRecorder) {
	rec := &logRecorder{}
	p := New(cfg, slog.New(rec))
	return p, rec
}

// members makes a member list of weight-1 servers.
func members(addrs ...string) []Member {
	ms := make([]Member, len(addrs))
	for i, a := range addrs {
		ms[i] = Member{Addr: a, Weight: 1}
	}
	return ms
}

// statusOf returns the status of addr.
func statusOf(t *testing.T, p *Pool, addr string) Status {
	t.Helper()
	for _, s := range p.Status() {
		if s.Addr == addr {
			return s
		}
	}
	t.Fatalf("no member %s in %+v", addr, p.Status())
	return Status{}
}

// dial dials with a short per-connect timeout, failing the test on error.
func dial(t *testing.T, p *Pool, k Key) *Conn {
	t.Helper()
	c, err := p.Dial(context.Background(), &net.Dialer{Timeout: 5 * time.Second}, k)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c
}

// markDown marks addr down as a failed connect would (for members that in
// fact answer: a Down member that is still reachable).
func markDown(p *Pool, addr, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.members {
		if m.addr == addr {
			p.markDownLocked(m, time.Now(), reason)
		}
	}
}
