package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/nat"
)

// Protected data connections (PROT P). pasvgate holds both legs' control
// TLS sessions, so it must terminate each data connection's TLS too:
// servers insist that a data connection resume the control connection's
// session (vsftpd's require_ssl_reuse, ProFTPD's default), and the client
// resumes the session it has, which is pasvgate's. So a protected
// transfer is relayed: pasvgate listens on a port of the data range
// (nat.Request.Relay: drawn and counted like a mapping's), admits one
// connection from the one address that may make it, makes the TLS
// handshake with each side (the client's may resume only this control
// session, the server's resumes pasvgate's own control session with the
// server), and copies the bytes with bounded buffers, half-close and
// deadlines. Clear data (PROT C) never comes here: it stays in the
// kernel.

// relayBuf is each direction's copy buffer: a TLS record is at most 16
// KiB, and two of them in flight keep a bulk transfer at line rate.
const relayBuf = 32 << 10

// relayLinger bounds how long a relay waits for one direction to end
// after the other has: enough for a server to read the tail of an upload
// and answer with its close_notify, and not so long that a peer that
// never closes pins the relay.
const relayLinger = 30 * time.Second

// Reasons for Stats.TLSFailures on data connections.
const (
	tlsFailDataClient = "data-client-handshake"
	tlsFailDataServer = "data-server-handshake"
	tlsFailDataReuse  = "data-no-reuse"
)

// errNoReuse refuses a client's data handshake that does not resume its
// control session, under Settings.RequireReuse.
var errNoReuse = errors.New("the data connection's TLS session does not resume the control connection's")

// sessionTLS makes the TLS configurations of a session whose client has
// upgraded: control is the client's control connection's, data its data
// connections'. Both carry this session's own ticket keys, so that a
// ticket this session issued resumes only on this session's data
// connections, and no other session's ticket resumes here: a client that
// presents one gets a full handshake, which RequireReuse refuses.
func (s *session) sessionTLS() (control *tls.Config) {
	if s.ctlTLS != nil {
		return s.ctlTLS
	}
	var key [32]byte
	_, _ = rand.Read(key[:])
	c := s.srv.clientTLS().Clone()
	c.SetSessionTicketKeys([][32]byte{key})
	d := c.Clone() // shares the keys just set
	if s.srv.settings().RequireReuse {
		d.VerifyConnection = func(cs tls.ConnectionState) error {
			if !cs.DidResume {
				return errNoReuse
			}
			return nil
		}
	}
	s.ctlTLS, s.dataTLS = c, d
	return c
}

// relay is one protected data connection.
type relay struct {
	s *session
	m *nat.Mapping
	// ln listens on m's port. It admits one connection from src, made to
	// one of locals (any local address if locals is empty).
	ln     net.Listener
	src    netip.Addr
	locals []netip.Addr
	// active: the server connects in (PORT/EPRT) and pasvgate dials the
	// client at target; otherwise the client connects in and pasvgate
	// dials the server's data port at target.
	active bool
	target netip.AddrPort
	// from is the local address pasvgate dials target from: towards the
	// server, the control connection's own, so that the server's
	// same-address check passes; towards the client, the gateway's public
	// side.
	from netip.Addr
	// clientTLS and serverTLS are whether each side of the data
	// connection is TLS: the client's side when the client said PROT P,
	// the server's when the server took a PROT P from pasvgate. At least
	// one is, or the data would take the kernel path.
	clientTLS, serverTLS bool
}

// relayListenTries bounds the ports openRelay tries. A port of the data
// range can be held by another socket: the range is usually inside the
// kernel's ephemeral ports (net.ipv4.ip_local_port_range), which every
// outgoing connection of the host draws from, pasvgate's own included.
// Each try draws a new port at random, so four that are all taken mean a
// host whose ephemeral ports are mostly in use.
const relayListenTries = 4

// errRelayListen: no port of the data range could be listened on.
var errRelayListen = errors.New("cannot listen for the protected data connection")

// openRelay draws a relay port for req (Request.Relay) and starts rl on
// it, trying another port when the one drawn is held by another socket.
// It returns the port's mapping, or the table's refusal, or an error
// matching errRelayListen.
func (s *session) openRelay(ctx context.Context, req nat.Request, rl relay) (*nat.Mapping, error) {
	req.Relay = true
	// The ports found taken are held until the end, so that each try
	// draws another.
	var taken []*nat.Mapping
	defer func() {
		for _, m := range taken {
			m.Release(nat.ReasonRelayListen)
		}
	}()
	var err error
	for try := 0; try < relayListenTries; try++ {
		m, oerr := s.srv.NAT.Open(ctx, req)
		if oerr != nil {
			if len(taken) > 0 {
				break // the range, or the client's share of it, is used up
			}
			return nil, oerr
		}
		r := rl
		r.m = m
		if err = s.startRelay(&r); err == nil {
			return m, nil
		}
		taken = append(taken, m)
		s.log.Debug("relay port taken, trying another", "port", m.Public.Port(), "err", err)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	s.srv.stats.refuse("relay-listen")
	return nil, fmt.Errorf("%w: %w", errRelayListen, err)
}

// startRelay listens on rl's port and relays in the background; the
// session waits for the relay when it ends.
func (s *session) startRelay(rl *relay) error {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{Port: int(rl.m.Public.Port())})
	if err != nil {
		return err
	}
	rl.ln, rl.s = ln, s
	s.relays.Add(1)
	go func() {
		defer s.relays.Done()
		rl.run()
	}()
	return nil
}

// run accepts the data connection, dials the other side, makes both
// handshakes and copies until both directions have ended.
func (rl *relay) run() {
	s := rl.s
	in, err := rl.accept()
	if err != nil {
		return
	}
	// The dial, the handshakes and the copy end with the session, as the
	// accept does; and when the port is released before any transfer
	// claimed it (its connect timeout, a new PASV, a logout): a client
	// that connects and never sends its transfer command must not keep a
	// relay of its own once its port no longer counts against it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.over:
		case <-rl.m.Done():
			if rl.m.Claimed() { // its transfer ran: the relay ends when the data does
				select {
				case <-s.over:
				case <-ctx.Done():
					return
				}
			}
		case <-ctx.Done():
			return
		}
		cancel()
	}()
	d := net.Dialer{Timeout: durationOr(s.srv.settings().DialTimeout, 10*time.Second)}
	if rl.from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(rl.from, 0))
	}
	var client, server net.Conn
	if rl.active {
		server = in
	} else {
		client = in
	}
	out, err := d.DialContext(ctx, "tcp", rl.target.String())
	if err != nil {
		s.log.Warn("protected data connection failed: cannot connect", "target", rl.target, "err", err)
		in.Close()
		return
	}
	if rl.active {
		client = out
	} else {
		server = out
	}
	// Both handshakes at once: some servers make theirs before the 150
	// the client waits for before its own.
	hs := s.srv.handshakeTimeout()
	var cc, sc net.Conn = client, server
	var serr error
	var wg sync.WaitGroup
	if rl.serverTLS {
		tc := tls.Client(server, s.upDataTLS)
		sc = tc
		wg.Add(1)
		go func() {
			defer wg.Done()
			serr = handshake(ctx, tc, hs+replyGrace)
			switch {
			case serr != nil:
				client.Close() // the client's handshake can only fail now
			case !tc.ConnectionState().DidResume:
				s.log.Debug("protected data connection: the server's TLS session was not resumed")
			}
		}()
	}
	var cerr error
	if rl.clientTLS {
		tc := tls.Server(client, s.dataTLS)
		cc = tc
		if cerr = handshake(ctx, tc, hs+replyGrace); cerr != nil {
			server.Close() // the server's handshake can only fail now
		}
	}
	wg.Wait()
	switch {
	case cerr != nil:
		why := tlsFailDataClient
		if errors.Is(cerr, errNoReuse) {
			why = tlsFailDataReuse
		}
		s.srv.stats.tlsFailed(why)
		s.log.Warn("protected data connection refused: TLS handshake with the client failed", "reason", why, "err", cerr)
	case serr != nil:
		s.srv.stats.tlsFailed(tlsFailDataServer)
		s.log.Warn("protected data connection failed: TLS handshake with the server failed", "err", serr)
	}
	if cerr != nil || serr != nil {
		client.Close()
		server.Close()
		return
	}
	rl.copy(ctx, cc, sc, client, server)
}

// accept waits for the one connection the relay admits: from src, to one
// of locals. Others are closed and logged. It gives up when the port is
// released (its transfer ended, its connect timeout, the session's end).
func (rl *relay) accept() (net.Conn, error) {
	s := rl.s
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(stop)
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-rl.m.Done():
		case <-s.over:
		case <-stop:
		}
		rl.ln.Close()
	}()
	for {
		c, err := rl.ln.Accept()
		if err != nil {
			return nil, err
		}
		remote, local := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()).Addr()
		if remote.Addr() == rl.src && rl.localOK(local) {
			return c, nil
		}
		s.srv.stats.refuse("relay-foreign-source")
		s.log.Warn("protected data connection refused: not from the address it is for",
			"from", remote, "to", local, "want", rl.src)
		c.Close()
	}
}

func (rl *relay) localOK(a netip.Addr) bool {
	if len(rl.locals) == 0 {
		return true
	}
	for _, l := range rl.locals {
		if a == l {
			return true
		}
	}
	return false
}

// copy relays both directions until each has ended, passing each end on
// as a half-close: a TLS close_notify and a TCP FIN. The side that ends
// second has relayLinger to do so. Only then are the sockets closed: a
// socket closed with bytes unread makes the kernel send an RST, which
// could cost a server the tail of an upload (with TLS 1.3 the server's
// session tickets arrive after the handshake and may still be unread).
func (rl *relay) copy(ctx context.Context, cc, sc, client, server net.Conn) {
	s := rl.s
	idle := durationOr(s.srv.settings().IdleTimeout, 10*time.Minute)
	var lingering atomic.Bool
	linger := func() {
		if lingering.CompareAndSwap(false, true) {
			t := time.Now().Add(relayLinger)
			_ = client.SetReadDeadline(t)
			_ = server.SetReadDeadline(t)
		}
	}
	var wg sync.WaitGroup
	direction := func(dst, src, dstTCP, srcTCP net.Conn) {
		defer wg.Done()
		n := relayCopy(&s.srv.relayBufs, dst, src, dstTCP, srcTCP, idle, &lingering, &s.relayed)
		s.srv.stats.relayed.Add(uint64(n))
		closeWrite(dst, dstTCP)
		linger()
	}
	wg.Add(2)
	go direction(sc, cc, server, client)
	go direction(cc, sc, client, server)
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		client.Close()
		server.Close()
		<-done
	}
	client.Close()
	server.Close()
}

// relayCopy copies from src to dst until src ends, moving the idle
// deadline of the TCP connection under src before each read (until the
// linger deadline replaces it), and under dst before each write, so that
// a peer that stops reading cannot pin the relay. It returns the bytes
// copied, and adds them to live as they go, so that the live view shows
// a long transfer moving (or not) while it runs.
func relayCopy(pool *bufPool, dst, src, dstTCP, srcTCP net.Conn, idle time.Duration, lingering *atomic.Bool, live *atomic.Uint64) int64 {
	bp := pool.get()
	defer pool.put(bp)
	buf := bp[:]
	var n int64
	for {
		if !lingering.Load() {
			_ = srcTCP.SetReadDeadline(time.Now().Add(idle))
			if lingering.Load() {
				// linger set its deadline meanwhile: put it back.
				_ = srcTCP.SetReadDeadline(time.Now().Add(relayLinger))
			}
		}
		r, err := src.Read(buf)
		if r > 0 {
			_ = dstTCP.SetWriteDeadline(time.Now().Add(idle))
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			live.Add(uint64(w))
			if werr != nil {
				return n
			}
		}
		if err != nil {
			return n
		}
	}
}

// closeWrite ends c's writing side: for TLS a close_notify, then a TCP
// FIN on the connection under it.
func closeWrite(c, tcp net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
	}
	if cw, ok := tcp.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// bufPool keeps relay copy buffers between relays: a small transfer would
// otherwise allocate two of them, which the garbage collector then sweeps
// at every transfer's pace. The zero value is ready.
type bufPool struct{ p sync.Pool }

func (b *bufPool) get() *[relayBuf]byte {
	if buf, ok := b.p.Get().(*[relayBuf]byte); ok {
		return buf
	}
	return new([relayBuf]byte)
}

func (b *bufPool) put(buf *[relayBuf]byte) { b.p.Put(buf) }
