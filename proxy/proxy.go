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

// Server proxies FTP control sessions. In reverse mode (Upstream set) every
// session goes to one fixed server; in transparent mode (Upstream empty,
// Intercept set) each goes to the server the intercepted connection was
// addressed to. NAT is required. Fields must not change after the first
// Serve.
type Server struct {
	// Upstream is the FTP server's control address, "host:port". Empty
	// means transparent mode.
	Upstream string
	// Upstream6, if set, is used instead of Upstream for IPv6 clients, so
	// that their data connections can be mapped within one family.
	Upstream6 string
	// Intercept is InterceptRedirect or InterceptTProxy in transparent
	// mode, and ignored in reverse mode.
	Intercept string
	// PublicAddr is the address written into 227 replies. If invalid, the
	// local address the client connected to is used.
	PublicAddr netip.Addr
	// IsLocal reports whether an address is assigned to this host. When
	// PublicAddr is not local (the gateway sits behind a 1:1 NAT), data
	// connections arrive at the address the client's control connection
	// arrived at, so that address is what the kernel entry matches. nil
	// means every address is local.
	IsLocal func(netip.Addr) bool
	// NAT opens the kernel mappings.
	NAT Mapper
	// SNAT gives data connections the proxy's own address towards the
	// server as their source, for servers that check the data connection
	// comes from the control connection's address. Default false here;
	// pasvgate run turns it on unless --snat=false.
	SNAT bool
	// DialTimeout bounds connecting to the upstream. Default 10 s.
	DialTimeout time.Duration
	// IdleTimeout ends a session whose client sends nothing for this long,
	// unless a transfer is in progress. Default 10 min.
	IdleTimeout time.Duration
	// WriteTimeout bounds a single write to either peer, so that a peer
	// that stops reading cannot pin a session. Default 30 s.
	WriteTimeout time.Duration
	// MaxLine bounds a control line in bytes. Default ftp.DefaultMaxLine.
	MaxLine int
	// Logger receives session and refusal events. Default: discard.
	Logger *slog.Logger

	sessions atomic.Uint64 // session ids
}

// Serve accepts sessions on ln until ctx is cancelled or ln fails, then
// closes ln, ends its own sessions and waits for them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.NAT == nil {
		return errors.New("proxy: Server needs NAT")
	}
	if s.Upstream == "" && s.Intercept != InterceptRedirect && s.Intercept != InterceptTProxy {
		return errors.New("proxy: Server needs Upstream, or Intercept for transparent mode")
	}
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var err error
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("proxy: accepting on %s: %w", ln.Addr(), err)
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

// serveConn runs one session to its end.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	id := fmt.Sprintf("s%d", s.sessions.Add(1))
	log := s.logger().With("session", id, "client", c.RemoteAddr().String())
	client := addrPortOf(c.RemoteAddr())
	sess := &session{
		srv:    s,
		id:     id,
		log:    log,
		client: c,
		peer:   client.Addr(),
	}
	upstream, err := s.upstreamFor(c, client)
	if err != nil {
		log.Warn("session refused", "reason", err.Error())
		s.sayAndClose(c, "Service not available: "+err.Error()+".")
		return
	}
	d := net.Dialer{Timeout: durationOr(s.DialTimeout, 10*time.Second)}
	u, err := d.DialContext(ctx, "tcp", upstream)
	if err != nil {
		log.Warn("session refused: upstream unreachable", "upstream", upstream, "err", err)
		s.sayAndClose(c, "Service not available: the FTP server cannot be reached.")
		return
	}
	sess.server = u
	log.Info("session started", "backend", u.RemoteAddr().String(), "local", c.LocalAddr().String())
	reason := sess.run(ctx)
	log.Info("session ended", "backend", u.RemoteAddr().String(), "reason", reason)
}

// sayAndClose sends a 421 with text and closes c.
func (s *Server) sayAndClose(c net.Conn, text string) {
	_ = c.SetWriteDeadline(time.Now().Add(durationOr(s.WriteTimeout, 30*time.Second)))
	_, _ = c.Write(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, text))
	c.Close()
}

func (s *Server) transparent() bool { return s.Upstream == "" }

// upstreamFor returns the server a new session goes to: the fixed upstream
// of the client's family in reverse mode, or the intercepted connection's
// original destination in transparent mode. A destination that is this
// host itself is refused: it would loop back into pasvgate.
func (s *Server) upstreamFor(c net.Conn, client netip.AddrPort) (string, error) {
	if !s.transparent() {
		if client.Addr().Is6() && s.Upstream6 != "" {
			return s.Upstream6, nil
		}
		return s.Upstream, nil
	}
	local := addrPortOf(c.LocalAddr())
	dst := local
	if s.Intercept == InterceptRedirect {
		var err error
		if dst, err = originalDst(c); err != nil {
			return "", fmt.Errorf("no original destination (%v)", err)
		}
	}
	if dst == local || (s.IsLocal != nil && s.IsLocal(dst.Addr())) || dst.Addr().IsLoopback() || dst.Addr().IsUnspecified() {
		return "", fmt.Errorf("original destination %s is this gateway", dst)
	}
	return dst.String(), nil
}

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
