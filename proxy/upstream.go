package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/pasvgate/pasvgate/proxy/pool"
	"github.com/pasvgate/pasvgate/proxy/rawio"
)

// connect finds the session's server and connects to it: in transparent
// mode where the intercepted connection was going, in reverse mode a
// server of its route's pool, picked by the pool's policy (for the user
// policy, after the client's USER: preLogin). Then, if the server's leg is
// to be TLS from the start, it upgrades it (startServerTLS). It leaves the
// session ready to run, and returns false when the session is refused or
// has ended: the client has been told why, and the refusal logged and
// counted.
func (s *Server) connect(ctx context.Context, sess *session, st *Settings, c net.Conn, client netip.AddrPort) (ok bool) {
	log := sess.log
	defer func() {
		if !ok && sess.poolConn != nil {
			sess.poolConn.Close() // ends the server's count in its pool
		}
	}()
	d := net.Dialer{Timeout: durationOr(st.DialTimeout, 10*time.Second), KeepAlive: st.Keepalive}
	var u net.Conn
	var err error
	if s.transparent() {
		upstream, uerr := s.upstreamFor(st, c, client)
		if errors.Is(uerr, errDestNotAllowed) {
			s.stats.refuseSession("dest-policy")
			log.Warn("session refused", "reason", uerr.Error())
			s.sayAndClose(c, "Service not available: that server is not allowed through this gateway.")
			return false
		}
		if uerr != nil {
			s.stats.refuseSession("loop")
			log.Warn("session refused", "reason", uerr.Error())
			s.sayAndClose(c, "Service not available: "+uerr.Error()+".")
			return false
		}
		sess.upstream = upstream
		u, err = d.DialContext(ctx, "tcp", upstream)
	} else {
		p := sess.rt.poolFor(client.Addr())
		if p == nil {
			s.stats.refuseSession("no-server")
			log.Warn("session refused: its route has no servers", "route", sess.routeName)
			s.sayAndClose(c, "Service not available: no FTP server is configured for this address.")
			return false
		}
		cfg := p.Config()
		sess.poolName = cfg.Name
		key := pool.Key{Client: client, Local: addrPortOf(c.LocalAddr())}
		if cfg.Policy == pool.User {
			raw, text, r, reason := sess.preLogin(ctx)
			if reason != "" {
				sess.end(reason) // closes the client's connection, if preLogin did not
				s.stats.endSession(reason)
				log.Info("session ended before login", "reason", reason, "duration_ms", time.Since(sess.start).Milliseconds())
				return false
			}
			sess.first, sess.firstText, sess.cr = raw, text, r
			key.User = sess.user
			c = sess.client // the refusals below go through TLS if the client made it
		}
		if src, ok := sourceFor(st.UpstreamSource, cfg); ok {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		var pc *pool.Conn
		pc, err = p.Dial(ctx, &d, key)
		if err == nil {
			u = pc.Conn
			sess.poolConn, sess.member, sess.upstream = pc, pc.Member, pc.Member
		}
		if errors.Is(err, pool.ErrNoServer) {
			s.stats.refuseSession("no-server")
			log.Warn("session refused: every server of the pool is drained", "pool", cfg.Name)
			s.sayAndClose(c, "Service not available: no FTP server is available.")
			return false
		}
	}
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		// pasvgate's own limit, not the server's fault: say so, to the
		// client and in the metrics.
		s.stats.refuseSession("fd-limit")
		log.Warn("session refused: out of file descriptors (raise LimitNOFILE, or lower --max-sessions)",
			"upstream", sess.upstream, "err", err)
		s.sayAndClose(c, "Too many connections; try again later.")
		return false
	}
	if err != nil {
		s.stats.refuseSession("upstream-unreachable")
		log.Warn("session refused: upstream unreachable", "pool", sess.poolName, "upstream", sess.upstream, "err", err)
		s.sayAndClose(c, "Service not available: the FTP server cannot be reached.")
		return false
	}
	var server net.Conn = rawio.Wrap(u)
	if st.UpstreamTLS == UpstreamTLSAlways || (st.UpstreamTLS == UpstreamTLSAuto && sess.clientTLS) {
		sess.upTLS = upstreamTLS(st, sess.upstream)
		greeting, tc, protected, why, err := startServerTLS(ctx, server, st, sess.upTLS, sess.maxLine())
		if err != nil {
			s.stats.tlsFailed(why)
			s.stats.refuseSession("upstream-tls")
			log.Warn("session refused: TLS to the server failed", "upstream", sess.upstream, "reason", why, "err", err)
			u.Close()
			s.sayAndClose(c, "Service not available: TLS to the FTP server failed.")
			return false
		}
		s.stats.tlsHandshake("server")
		if !sess.greeted {
			sess.greeting = greeting
		}
		sess.serverTLS, sess.serverProt = true, protected
		sess.upDataTLS = upstreamDataTLS(sess.upTLS, tc.ConnectionState())
		sess.mu.Lock()
		sess.server = tc
		sess.mu.Unlock()
	} else if sess.greeted {
		if !s.dropGreeting(sess, server, st, c) {
			u.Close()
			return false
		}
	}
	sess.mu.Lock()
	if sess.server == nil {
		sess.server = server
	}
	sess.rawServer = server
	ended := sess.ended
	sess.mu.Unlock()
	if ended { // Shutdown came while the server was being dialed
		u.Close()
		return false
	}
	return true
}

// dropGreeting reads the greeting of a server connected after pasvgate
// greeted the client itself (the user policy). A 220 is dropped: the
// client has had pasvgate's. Anything else (421: too many users) goes to
// the client, as its answer to USER, and the session ends.
func (s *Server) dropGreeting(sess *session, server net.Conn, st *Settings, c net.Conn) bool {
	_ = server.SetReadDeadline(time.Now().Add(durationOr(st.HandshakeTimeout, defaultHandshakeTimeout)))
	defer server.SetReadDeadline(time.Time{})
	r := ftp.NewReader(server, sess.maxLine())
	for range 3 { // 120 "ready in n minutes" comes before the 220
		reply, code, err := readReply(r)
		switch {
		case err != nil:
			s.stats.refuseSession("upstream-greeting")
			sess.log.Warn("session refused: no greeting from the server", "upstream", sess.upstream, "err", err)
			s.sayAndClose(c, "Service not available: the FTP server did not greet.")
			return false
		case code == ftp.CodeServiceReady:
			if r.Buffered() > 0 {
				// Replies to commands never sent: the session could not
				// tell them from the answer to USER.
				s.stats.refuseSession("upstream-greeting")
				sess.log.Warn("session refused: the server sent more after its greeting", "upstream", sess.upstream)
				s.sayAndClose(c, "Service not available: the FTP server misbehaved.")
				return false
			}
			return true
		case code/100 == 1:
			continue
		default:
			s.stats.refuseSession("upstream-greeting")
			sess.log.Warn("session refused by the server", "upstream", sess.upstream, "code", code)
			_ = c.SetWriteDeadline(time.Now().Add(durationOr(st.WriteTimeout, 30*time.Second)))
			_, _ = c.Write(reply)
			c.Close()
			return false
		}
	}
	s.stats.refuseSession("upstream-greeting")
	s.sayAndClose(c, "Service not available: the FTP server did not greet.")
	return false
}

// sourceFor picks the UpstreamSource of a pool's family: that of its first
// server given as an address, or IPv4 for a pool of host names (a dial
// from an IPv4 source reaches only IPv4 addresses).
func sourceFor(sources []netip.Addr, cfg pool.Config) (netip.Addr, bool) {
	v4 := true
	for _, m := range cfg.Members {
		if ap, err := netip.ParseAddrPort(m.Addr); err == nil {
			v4 = ap.Addr().Unmap().Is4()
			break
		}
	}
	for _, a := range sources {
		if a.Is4() == v4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}
