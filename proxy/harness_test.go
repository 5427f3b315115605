package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
	"github.com/pasvgate/pasvgate/test/ftpd"
)

// Loopback stands in for the lab's networks, so these tests need no root.
// Data ports (20000-20999 public, 21000-21999 on the server) stay below the
// kernel's ephemeral range, where the test relay's listeners could collide
// with other connections' local ports.
//
// the server's "private" address is 127.0.0.2, the client dials pasvgate on
// 127.0.0.1, and pasvgate advertises 127.0.0.3. A client that ignored the
// 227 address would dial 127.0.0.1:Q, where nothing listens, and fail.
var (
	clientDial = "127.0.0.1"
	serverAddr = "127.0.0.2"
	publicAddr = netip.MustParseAddr("127.0.0.3")
)

// relayBackend is the fake backend plus what the kernel would do with an
// installed mapping: it listens on Public, admits only Source, and forwards
// to Target. Established relays outlive Remove, as conntrack flows do.
type relayBackend struct {
	*fake.Backend
	mu   sync.Mutex
	lns  map[string]net.Listener
	wg   sync.WaitGroup
	seen []netip.AddrPort // data connections admitted, by public address
}

func (r *relayBackend) Install(ctx context.Context, m rules.Mapping) error {
	if err := r.Backend.Install(ctx, m); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", m.Public.String())
	if err != nil {
		_ = r.Backend.Remove(ctx, m)
		return err
	}
	r.mu.Lock()
	if r.lns == nil {
		r.lns = map[string]net.Listener{}
	}
	r.lns[m.ID] = ln
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			if src != m.Source {
				c.Close() // only the mapping's client is admitted
				continue
			}
			r.mu.Lock()
			r.seen = append(r.seen, m.Public)
			r.mu.Unlock()
			d := net.Dialer{Timeout: 5 * time.Second}
			if m.SNAT.IsValid() {
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.SNAT, 0))
			}
			u, err := d.Dial("tcp", m.Target.String())
			if err != nil {
				c.Close()
				continue
			}
			r.wg.Add(2)
			go func() { defer r.wg.Done(); _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
			go func() { defer r.wg.Done(); _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return nil
}

func (r *relayBackend) Remove(ctx context.Context, m rules.Mapping) error {
	if err := r.Backend.Remove(ctx, m); err != nil {
		return err
	}
	r.mu.Lock()
	ln := r.lns[m.ID]
	delete(r.lns, m.ID)
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	return nil
}

// RemoveBatch closes each mapping's listener too (the embedded fake's
// would not).
func (r *relayBackend) RemoveBatch(ctx context.Context, ms []rules.Mapping) []error {
	errs := make([]error, len(ms))
	for i, m := range ms {
		errs[i] = r.Remove(ctx, m)
	}
	return errs
}

func (r *relayBackend) admitted() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]netip.AddrPort(nil), r.seen...)
}

// tap sits between pasvgate and the server and records every byte pasvgate
// sends upstream, to prove what reached the server and what did not. It
// records before it forwards, so whatever the server has answered is
// already recorded.
type tap struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
	wg  sync.WaitGroup
}

func newTap(t testing.TB, upstream string) *tap {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln}
	tp.wg.Add(1)
	go func() {
		defer tp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// As FTP servers do: a Telnet Synch's DM, which pasvgate
			// sends as urgent data, stays in the recorded stream.
			setOOBInline(t, c)
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			tp.wg.Add(2)
			go func() {
				defer tp.wg.Done()
				_, _ = io.Copy(io.MultiWriter(tp, u), c)
				u.Close()
			}()
			go func() { defer tp.wg.Done(); _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); tp.wg.Wait() })
	return tp
}

func (tp *tap) Write(p []byte) (int, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.buf.Write(p)
}

func (tp *tap) sent() string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.buf.String()
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type options struct {
	advertise      string // the server's 227 address; default serverAddr
	connectTimeout time.Duration
	upstream       string // override: the upstream pasvgate connects to
	maxLine        int
	idle           time.Duration
	login          time.Duration
	maxSessions    int
	maxPerIP       int
	maxMappings    int // mappings per client address (nat.Config.MaxPerClient)
	// ftpdTLS, if set, makes the server offer AUTH TLS with it.
	ftpdTLS *tls.Config
	// settings, if set, edits pasvgate's settings before it starts.
	settings func(*proxy.Settings)
	// implicit serves the listener with ServeTLS.
	implicit bool
	// ports, if set, is the data range instead of 20000-20999.
	ports nat.PortRange
}

type harness struct {
	server  *ftpd.Server
	backend *relayBackend
	table   *nat.Table
	tap     *tap
	addr    string // pasvgate's listener
	log     *syncBuffer
	proxy   *proxy.Server
}

func newHarness(t testing.TB, o options) *harness {
	t.Helper()
	if o.advertise == "" {
		o.advertise = serverAddr
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := ftpd.Start(ctx, ftpd.Config{
		Listen:       serverAddr + ":0",
		PublicHost:   o.advertise,
		PassivePorts: [2]int{21000, 21999},
		TLS:          o.ftpdTLS,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{server: srv, backend: &relayBackend{Backend: &fake.Backend{}}, log: &syncBuffer{}}
	if err := h.backend.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	h.tap = newTap(t, srv.Addr().String())
	log := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.table, err = nat.New(h.backend, nat.Config{
		Ports:          o.portRange(),
		ConnectTimeout: o.connectTimeout,
		Logger:         log,
		MaxPerClient:   o.maxMappings,
	})
	if err != nil {
		t.Fatal(err)
	}
	upstream := h.tap.ln.Addr().String()
	if o.upstream != "" {
		upstream = o.upstream
	}
	p := &proxy.Server{
		Settings: proxy.Settings{
			Upstream:         upstream,
			PublicAddr:       publicAddr,
			SNAT:             true,
			MaxLine:          o.maxLine,
			IdleTimeout:      o.idle,
			LoginTimeout:     o.login,
			MaxSessions:      o.maxSessions,
			MaxSessionsPerIP: o.maxPerIP,
		},
		NAT:    h.table,
		Logger: log,
	}
	if o.settings != nil {
		o.settings(&p.Settings)
	}
	h.proxy = p
	ln, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	done := make(chan error, 1)
	serve := p.Serve
	if o.implicit {
		serve = p.ServeTLS
	}
	go func() { done <- serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := h.table.Close(context.Background()); err != nil {
			t.Errorf("closing the table: %v", err)
		}
		srv.Close()
		h.backend.wg.Wait()
		if n := h.backend.Len(); n != 0 {
			t.Errorf("%d mappings left installed after shutdown", n)
		}
		if t.Failed() {
			t.Logf("pasvgate log:\n%s", h.log.String())
		}
	})
	return h
}

func (o options) portRange() nat.PortRange {
	if o.ports.Low == 0 {
		return nat.PortRange{Low: 20000, High: 20999}
	}
	return o.ports
}

// waitInstalled waits until the backend holds n mappings.
func (h *harness) waitInstalled(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		ch := h.backend.Changed()
		if h.backend.Len() == n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("backend holds %d mappings, want %d", h.backend.Len(), n)
		}
	}
}

// waitLog waits (bounded) for the log to contain substr: a mapping's log
// line is written just after its removal, which is asynchronous.
func (h *harness) waitLog(t *testing.T, substr string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if strings.Contains(h.log.String(), substr) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("log never contained %q", substr)
}

// conn is a raw control connection for asserting exact reply text.
type conn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
	// tls, once the control channel is TLS (startTLS), is the client's
	// configuration, whose session cache lets data connections resume.
	tls *tls.Config
}

func (h *harness) dial(t testing.TB) *conn {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cc := &conn{t: t, c: c, r: bufio.NewReader(c)}
	cc.expect("220")
	return cc
}

// reply reads one whole reply and returns its last line.
func (c *conn) reply() string {
	c.t.Helper()
	var first string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if first == "" {
			first = line
			if len(line) < 4 || line[3] != '-' {
				return line
			}
			continue
		}
		if len(line) >= 4 && line[:3] == first[:3] && line[3] == ' ' {
			return line
		}
	}
}

func (c *conn) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, line+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

// cmd sends a command and returns its reply's last line.
func (c *conn) cmd(line string) string {
	c.t.Helper()
	c.send(line)
	return c.reply()
}

func (c *conn) expect(prefix string) string {
	c.t.Helper()
	got := c.reply()
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("reply %q, want %s", got, prefix)
	}
	return got
}

func (c *conn) login() {
	c.t.Helper()
	if r := c.cmd("USER anonymous"); !strings.HasPrefix(r, "331") && !strings.HasPrefix(r, "230") {
		c.t.Fatalf("USER: %q", r)
	}
	if r := c.cmd("PASS test@"); !strings.HasPrefix(r, "230") {
		c.t.Fatalf("PASS: %q", r)
	}
}
