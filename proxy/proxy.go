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

// Server proxies FTP control sessions in reverse mode: every session goes to
// one fixed upstream server. The zero value is not usable: Upstream and NAT
// are required. Fields must not change after the first Serve.
type Server struct {
	// Upstream is the FTP server's control address, "host:port".
	Upstream string
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
	if s.NAT == nil || s.Upstream == "" {
		return errors.New("proxy: Server needs Upstream and NAT")
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
	d := net.Dialer{Timeout: durationOr(s.DialTimeout, 10*time.Second)}
	u, err := d.DialContext(ctx, "tcp", s.Upstream)
	if err != nil {
		log.Warn("session refused: upstream unreachable", "upstream", s.Upstream, "err", err)
		_ = c.SetWriteDeadline(time.Now().Add(durationOr(s.WriteTimeout, 30*time.Second)))
		_, _ = c.Write(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service not available: the FTP server cannot be reached."))
		c.Close()
		return
	}
	sess.server = u
	log.Info("session started", "backend", u.RemoteAddr().String(), "local", c.LocalAddr().String())
	reason := sess.run(ctx)
	log.Info("session ended", "backend", u.RemoteAddr().String(), "reason", reason)
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
