// Package proxy is pasvgate's control-channel proxy: it accepts FTP control
// connections, connects each to its server, relays commands and replies line
// by line, and rewrites the few that carry a data address (227, 229, PORT,
// EPRT), asking package nat for a kernel mapping before any rewritten address
// leaves.
//
// cmd/pasvgate builds a Server from its configuration and calls Serve for
// each listener. Wire parsing lives in proxy/ftp; kernel state behind nat.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/pasvgate/pasvgate/proxy/pool"
	"github.com/pasvgate/pasvgate/proxy/rawio"
)

// Mapper opens data mappings. *nat.Table implements it; tests may wrap it.
type Mapper interface {
	Open(ctx context.Context, req nat.Request) (*nat.Mapping, error)
}

// Intercept methods of a transparent Server: how the listener receives the
// connections the kernel intercepted, and so how it finds where each was
// going.
const (
	// InterceptRedirect: nat REDIRECT; the original destination is read
	// with SO_ORIGINAL_DST.
	InterceptRedirect = "redirect"
	// InterceptTProxy: TPROXY to an IP_TRANSPARENT listener; the accepted
	// socket's local address is the original destination.
	InterceptTProxy = "tproxy"
)

// Settings are the parts of a Server's configuration that may change while
// it runs (Reload, on SIGHUP). Sessions read them when they need them, so a
// change applies to the next PASV, the next login and the next session,
// without dropping anything established.
type Settings struct {
	// Upstream is the FTP server's control address, "host:port": a pool
	// of that one server when Pool is nil. With neither, nor Routes, the
	// Server is in transparent mode (which Reload cannot switch).
	Upstream string
	// Upstream6, if set, is used instead of Upstream for IPv6 clients, so
	// that their data connections can be mapped within one family.
	Upstream6 string
	// Pool and Pool6, if set, are the default route's servers in place of
	// Upstream and Upstream6 (see Route). Each session's server is picked
	// from them by their policy when it starts.
	Pool, Pool6 *pool.Pool
	// Announce is the default route's addresses per client network (see
	// Route.Announce).
	Announce []Announce
	// Ports is the default route's data port range; zero means the NAT
	// table's own.
	Ports nat.PortRange
	// Routes are the named routes, each served by the listeners given to
	// ServeRoute with its name.
	Routes map[string]Route
	// PublicAddr is the address written into 227 replies. If invalid, the
	// local address the client connected to is used.
	PublicAddr netip.Addr
	// PublicAddrFunc, if set, overrides PublicAddr: it gives the address
	// to advertise now (an interface's, followed live). While it returns
	// an invalid address, PASV and EPSV get 425.
	PublicAddrFunc func() netip.Addr
	// SNAT gives data connections the proxy's own address towards the
	// server as their source, for servers that check the data connection
	// comes from the control connection's address. Default false here;
	// pasvgate run turns it on unless --snat=false.
	SNAT bool
	// DialTimeout bounds connecting to the upstream. Default 10 s.
	DialTimeout time.Duration
	// UpstreamSource, in reverse mode, are the addresses sessions dial
	// their server from, at most one per family; none means the kernel's
	// choice. A gateway pair gives its VRRP address on the servers' side,
	// so that what a server sees of pasvgate, and the SNAT source of data
	// connections, move with the master and stay valid across a failover.
	UpstreamSource []netip.Addr
	// IdleTimeout ends a session whose client sends nothing for this long,
	// unless a transfer is in progress (from its 150 or 125 reply to its
	// final one). Default 10 min.
	IdleTimeout time.Duration
	// LoginTimeout ends a session that has not logged in (no 230 reply)
	// this long after it started. Default 0: no limit.
	LoginTimeout time.Duration
	// WriteTimeout bounds a single write to either peer, so that a peer
	// that stops reading cannot pin a session. Default 30 s.
	WriteTimeout time.Duration
	// Keepalive is the TCP keepalive period on both legs of a session.
	// 0 keeps Go's default (15 s); negative turns keepalive off.
	Keepalive time.Duration
	// MaxLine bounds a control line in bytes. Default ftp.DefaultMaxLine.
	MaxLine int
	// MaxSessions bounds concurrent sessions; 0 means no limit.
	MaxSessions int
	// MaxSessionsPerIP bounds concurrent sessions from one client
	// address (an IPv6 client by its /64, as nat.ClientKey counts it); 0
	// means no limit.
	MaxSessionsPerIP int
	// DestPolicy, in transparent mode, is the servers a client may be
	// connected to; the zero value admits public addresses only.
	DestPolicy DestPolicy

	// TLS is whether clients may (TLSAllow) or must (TLSRequire) make
	// their control channel TLS with AUTH TLS; anything but TLSOff needs
	// Certificate. Clients of an implicit-TLS listener (ServeTLS) are TLS
	// from the start whatever it says.
	TLS TLSMode
	// Certificate is what clients are shown, chain included. A Reload
	// changes it for handshakes from then on.
	Certificate *tls.Certificate
	// UpstreamTLS is when the server's leg is TLS.
	UpstreamTLS UpstreamTLS
	// UpstreamRoots verifies the server's certificate; nil means the
	// system's roots.
	UpstreamRoots *x509.CertPool
	// UpstreamServerName is the name the server's certificate must carry;
	// empty means the host of the address dialed.
	UpstreamServerName string
	// UpstreamInsecure accepts any server certificate.
	UpstreamInsecure bool
	// RequireReuse refuses a client's protected data connection whose TLS
	// session does not resume its control connection's. Off by default:
	// the data port admits only the control client's address, once, and
	// many clients never resume (Python's ftplib.FTP_TLS).
	RequireReuse bool
	// HandshakeTimeout bounds a TLS handshake on either leg, and the
	// server's part of an upgrade (its replies to AUTH TLS, PBSZ, PROT).
	// Default 10 s.
	HandshakeTimeout time.Duration
}

// Server proxies FTP control sessions. In reverse mode (Upstream set) every
// session goes to one fixed server; in transparent mode (Upstream empty,
// Intercept set) each goes to the server the intercepted connection was
// addressed to. NAT is required. The embedded Settings are the initial
// ones; change them with Reload. Other fields must not change after the
// first Serve.
type Server struct {
	Settings
	// Intercept is InterceptRedirect or InterceptTProxy in transparent
	// mode, and ignored in reverse mode.
	Intercept string
	// IsLocal reports whether an address is assigned to this host. When
	// the public address is not local (the gateway sits behind a 1:1 NAT),
	// data connections arrive at the address the client's control
	// connection arrived at, so that address is what the kernel entry
	// matches. nil means every address is local.
	IsLocal func(netip.Addr) bool
	// NAT opens the kernel mappings.
	NAT Mapper
	// Logger receives session and refusal events. Default: discard.
	Logger *slog.Logger

	ids   atomic.Uint64 // session ids
	cur   atomic.Pointer[Settings]
	once  sync.Once
	stats counters

	tlsOnce   sync.Once
	tlsConf   *tls.Config // clientTLS
	relayBufs bufPool     // relay.go

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	active   map[*session]struct{}
	perIP    map[netip.Prefix]int // sessions by nat.ClientKey
	draining bool
	idle     chan struct{} // closed when active becomes empty while draining
}

// settings returns the settings in force.
func (s *Server) settings() *Settings {
	s.once.Do(func() {
		st := s.Settings
		staticPools(&st)
		s.cur.CompareAndSwap(nil, &st)
	})
	return s.cur.Load()
}

// Reload replaces the settings for everything that reads them from now on.
// Established sessions keep their connections and mappings.
func (s *Server) Reload(st Settings) {
	s.once.Do(func() {}) // the initial settings must not overwrite these
	staticPools(&st)
	s.cur.Store(&st)
}

// transparent reports whether the Server runs in transparent mode. The mode
// is fixed by the initial settings.
func (s *Server) transparent() bool {
	return s.Settings.Upstream == "" && s.Settings.Pool == nil && len(s.Settings.Routes) == 0
}

// Serve accepts sessions on ln until ctx is cancelled, Shutdown is called,
// or ln is closed; then it ends its own sessions (at once if ctx was
// cancelled, after draining under Shutdown) and waits for them. Other
// accept errors are retried with a backoff. It returns an error only for a
// Server that is not usable.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, "", false)
}

// ServeRoute is Serve (or ServeTLS, if implicit) for a listener of a named
// route (Settings.Routes): its sessions go to that route's servers.
func (s *Server) ServeRoute(ctx context.Context, ln net.Listener, route string, implicit bool) error {
	if implicit && s.settings().Certificate == nil {
		return errors.New("proxy: ServeRoute with implicit TLS needs a Certificate")
	}
	if _, ok := s.settings().route(route); !ok {
		return fmt.Errorf("proxy: no route %q", route)
	}
	return s.serve(ctx, ln, route, implicit)
}

// ServeTLS is Serve for an implicit-FTPS listener (port 990 by
// convention): each client's control channel is TLS from its first byte.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener) error {
	if s.settings().Certificate == nil {
		return errors.New("proxy: ServeTLS needs a Certificate")
	}
	return s.serve(ctx, ln, "", true)
}

func (s *Server) serve(ctx context.Context, ln net.Listener, route string, implicit bool) error {
	if s.NAT == nil {
		return errors.New("proxy: Server needs NAT")
	}
	if s.transparent() && s.Intercept != InterceptRedirect && s.Intercept != InterceptTProxy {
		return errors.New("proxy: Server needs Upstream, or Intercept for transparent mode")
	}
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	if s.lns == nil {
		s.lns = map[net.Listener]struct{}{}
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()

	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var err error
	var backoff time.Duration
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				break
			}
			// Out of file descriptors, a connection reset before accept,
			// and the like pass: refusing to serve for good because of
			// one would turn a load spike into an outage.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logger().Warn("accept failed; retrying", "listener", ln.Addr().String(), "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c, route, implicit)
		}()
	}
	wg.Wait()
	return nil
}

// Shutdown stops accepting on every listener and drains: sessions without
// a transfer in progress are told 421 and closed at once, the others as
// soon as their transfer's final reply has been forwarded. When ctx ends
// first, the remaining sessions are told 421 and closed too. Shutdown
// returns when no session is left; Serve then returns.
//
// Every session is drained at once, each on a goroutine of its own: a
// client that has stopped reading holds its 421 up to the write timeout,
// and must not hold up the others'. Once ctx has ended and the last
// notices have had closeGrace, connections still open are closed without
// a word, which also ends any write still blocked on them.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.draining = true
	for ln := range s.lns {
		ln.Close()
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
		if len(s.active) == 0 {
			close(s.idle)
		}
	}
	idle := s.idle
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	each := func(f func(*session)) {
		for _, ss := range s.sessions() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(ss)
			}()
		}
	}
	each((*session).drain)
	select {
	case <-idle:
		return
	case <-ctx.Done():
	}
	each(func(ss *session) { ss.say421AndEnd("Service closing: drain timeout.", endShutdown) })
	select {
	case <-idle:
		return
	case <-time.After(closeGrace):
	}
	for _, ss := range s.sessions() {
		// Without the session's lock, which a write blocked on this
		// client may hold: closing the client ends that write and both
		// relay loops, and the session then closes its server leg.
		ss.rawClient.Close()
	}
	<-idle
}

// closeGrace is how long, after the drain timeout, the last 421s may take
// to reach their clients before the connections are closed regardless.
const closeGrace = time.Second

// sessions returns the sessions now open.
func (s *Server) sessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*session, 0, len(s.active))
	for ss := range s.active {
		list = append(list, ss)
	}
	return list
}

// admit registers a new session, or returns why it is refused.
func (s *Server) admit(ss *session) string {
	st := s.settings()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return "shutting down"
	case st.MaxSessions > 0 && len(s.active) >= st.MaxSessions:
		return "max-sessions"
	case st.MaxSessionsPerIP > 0 && s.perIP[nat.ClientKey(ss.peer)] >= st.MaxSessionsPerIP:
		return "max-sessions-per-ip"
	}
	if s.active == nil {
		s.active = map[*session]struct{}{}
		s.perIP = map[netip.Prefix]int{}
	}
	s.active[ss] = struct{}{}
	s.perIP[nat.ClientKey(ss.peer)]++
	return ""
}

// release unregisters a session.
func (s *Server) release(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.active, ss)
	k := nat.ClientKey(ss.peer)
	if s.perIP[k]--; s.perIP[k] <= 0 {
		delete(s.perIP, k)
	}
	if s.draining && len(s.active) == 0 && s.idle != nil {
		select {
		case <-s.idle:
		default:
			close(s.idle)
		}
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func durationOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// serveConn runs one session of route to its end. implicit says c is TLS
// from its first byte (ServeTLS).
func (s *Server) serveConn(ctx context.Context, c net.Conn, route string, implicit bool) {
	id := fmt.Sprintf("s%d", s.ids.Add(1))
	log := s.logger().With("session", id, "client", c.RemoteAddr().String())
	client := addrPortOf(c.RemoteAddr())
	tcp := c
	raw := rawio.Wrap(c)
	sess := &session{
		srv:       s,
		id:        id,
		log:       log,
		client:    raw,
		rawClient: raw,
		peer:      client.Addr(),
		routeName: route,
		start:     time.Now(),
		over:      make(chan struct{}),
	}
	if why := s.admit(sess); why != "" {
		s.stats.refuseSession(why)
		log.Warn("session refused", "reason", why)
		if implicit {
			c.Close() // a clear 421 would be garbage to a TLS client
			return
		}
		s.sayAndClose(c, "Too many connections ("+why+"), try again later.")
		return
	}
	defer s.release(sess)
	s.stats.sessionStarted()
	defer s.stats.sessionEnded()
	if implicit {
		// Counted as a session first, so that --max-sessions bounds the
		// handshakes in progress too.
		tc := tls.Server(raw, sess.sessionTLS())
		if err := handshake(ctx, tc, s.handshakeTimeout()); err != nil {
			s.stats.tlsFailed(tlsFailClientHandshake)
			s.stats.refuseSession("tls-handshake")
			log.Warn("session refused: TLS handshake failed", "err", err)
			c.Close()
			return
		}
		s.stats.tlsHandshake("client")
		sess.client, sess.clientTLS = tc, true
		c = tc // the refusals below are written through it
	}

	st := s.settings()
	sess.rt, _ = st.route(route)
	if !s.connect(ctx, sess, st, c, client) {
		return
	}
	setKeepalive(tcp, st.Keepalive)
	log.Info("session started", "route", route, "pool", sess.poolName, "backend", sess.rawServer.RemoteAddr().String(),
		"local", c.LocalAddr().String())
	reason := sess.run(ctx)
	log.Info("session ended", "backend", sess.rawServer.RemoteAddr().String(), "reason", reason,
		"duration_ms", time.Since(sess.start).Milliseconds())
}

// setKeepalive applies the keepalive setting to an accepted connection
// (the upstream leg gets it from its Dialer).
func setKeepalive(c net.Conn, period time.Duration) {
	tc, ok := c.(*net.TCPConn)
	if !ok || period == 0 {
		return
	}
	if period < 0 {
		_ = tc.SetKeepAlive(false)
		return
	}
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: period, Interval: period})
}

// sayAndClose sends a 421 with text and closes c.
func (s *Server) sayAndClose(c net.Conn, text string) {
	_ = c.SetWriteDeadline(time.Now().Add(durationOr(s.settings().WriteTimeout, 30*time.Second)))
	_, _ = c.Write(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, text))
	c.Close()
}

// upstreamFor returns the server a new session goes to: the fixed upstream
// of the client's family in reverse mode, or the intercepted connection's
// original destination in transparent mode. A destination that is this
// host itself is refused: it would loop back into pasvgate.
func (s *Server) upstreamFor(st *Settings, c net.Conn, client netip.AddrPort) (string, error) {
	if !s.transparent() {
		if client.Addr().Is6() && st.Upstream6 != "" {
			return st.Upstream6, nil
		}
		return st.Upstream, nil
	}
	local := addrPortOf(c.LocalAddr())
	dst := local
	if s.Intercept == InterceptRedirect {
		var err error
		if dst, err = originalDst(c); err != nil {
			return "", fmt.Errorf("no original destination (%v)", err)
		}
	}
	// Under REDIRECT a connection that was not redirected reads back its
	// own local address. Under TPROXY the local address is the original
	// destination by design, so only IsLocal can tell a loop there.
	redirectedToSelf := s.Intercept == InterceptRedirect && dst == local
	if redirectedToSelf || (s.IsLocal != nil && s.IsLocal(dst.Addr())) || dst.Addr().IsLoopback() || dst.Addr().IsUnspecified() {
		return "", fmt.Errorf("original destination %s is this gateway", dst)
	}
	if !st.DestPolicy.Allows(dst.Addr()) {
		return "", fmt.Errorf("%w: %s (allowed: %s)", errDestNotAllowed, dst.Addr(), st.DestPolicy)
	}
	return dst.String(), nil
}

// errDestNotAllowed: transparent mode's DestPolicy does not admit the
// intercepted connection's destination.
var errDestNotAllowed = errors.New("destination not allowed by --allow-dest")

// addrPortOf turns a TCP net.Addr into a netip.AddrPort with any
// IPv4-in-IPv6 mapping removed, so that a dual-stack listener still gives
// IPv4 clients IPv4 rules.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
