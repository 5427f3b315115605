package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// maxPending bounds the commands a client may have outstanding at the server.
// Real clients pipeline a handful at most; a client that sends thousands
// without reading replies is refused rather than allowed to grow the queue.
const maxPending = 64

// pending is one expected reply, in the order the server (or pasvgate) will
// give it.
type pending struct {
	verb ftp.Verb
	// mapping is the data mapping a transfer command is using; it is
	// released when the transfer's final reply has been forwarded.
	mapping *nat.Mapping
	// arg and sent are a transfer command's argument and time, for its
	// transfer log line.
	arg  string
	sent time.Time
	// local, if not nil, is a reply pasvgate made itself. It is queued
	// behind server replies still to come so that the client sees replies
	// in the order of its commands, and never inside a multi-line reply.
	local []byte
}

// session is one client's control connection and its connection to the
// server. Two goroutines run it: commands (client to server) and replies
// (server to client); mu guards the state they share and every write to
// the client, so that replies from both never interleave.
type session struct {
	srv    *Server
	id     string
	log    *slog.Logger
	client net.Conn
	server net.Conn
	peer   netip.Addr // the client's address: the only source a data mapping admits
	start  time.Time

	mu        sync.Mutex
	queue     []pending
	midReply  bool         // a multi-line reply is half forwarded
	current   *nat.Mapping // the data mapping from the latest PASV/EPSV
	epsvAll   bool         // RFC 2428 EPSV ALL was sent
	transfers int          // transfer commands whose final reply is still due
	ended     bool
	reason    string
	user      string // the last USER argument, for transfer logs
	loggedIn  bool   // a 230 reply has been forwarded
	draining  bool   // the server is shutting down: end after the transfer
}

// Reasons a session ends, for its log line.
const (
	endClientClosed = "client closed"
	endServerClosed = "server closed"
	endIdle         = "idle timeout"
	endShutdown     = "shutdown"
	endTooMany      = "too many pipelined commands"
	endLogin        = "login timeout"
)

func (s *session) maxLine() int {
	if m := s.srv.settings().MaxLine; m > 0 {
		return m
	}
	return ftp.DefaultMaxLine
}

// run relays until either side ends, then closes both, releases the
// session's mappings, and returns why it ended.
func (s *session) run(ctx context.Context) string {
	setOOBInline(s.client)
	setOOBInline(s.server)
	s.queue = append(make([]pending, 0, 8), pending{}) // the server's greeting
	stop := context.AfterFunc(ctx, func() {
		s.say421AndEnd("Service closing: pasvgate is shutting down.", endShutdown)
	})
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.end(s.replies(ctx))
	}()
	s.end(s.commands(ctx))
	<-done

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != nil {
		s.current.Release(nat.ReasonSessionEnd)
		s.current = nil
	}
	for _, p := range s.queue {
		if p.mapping != nil {
			p.mapping.Release(nat.ReasonSessionEnd)
		}
	}
	s.queue = nil
	s.srv.stats.endSession(s.reason)
	return s.reason
}

// say421AndEnd tells the client the service is closing (unless that would
// land inside a multi-line reply) and ends the session.
func (s *session) say421AndEnd(text, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.midReply && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, text))
	}
	s.endLocked(reason)
}

// drain ends the session now if no transfer is in progress, or else as
// soon as its final reply has been forwarded (see popLocked).
func (s *session) drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	if s.transfers == 0 && !s.midReply && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service closing: pasvgate is shutting down."))
		s.endLocked(endShutdown)
	}
}

// end records the first reason the session ends and closes both
// connections, which unblocks both relay goroutines.
func (s *session) end(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(reason)
}

func (s *session) endLocked(reason string) {
	if !s.ended {
		s.ended = true
		s.reason = reason
	}
	s.client.Close()
	s.server.Close()
}

// commands relays the client's commands to the server until the client
// goes away, and returns why.
func (s *session) commands(ctx context.Context) string {
	r := ftp.NewReader(s.client, s.maxLine())
	lastLine := time.Now()
	for {
		st := s.srv.settings()
		idle := durationOr(st.IdleTimeout, 10*time.Minute)
		deadline := lastLine.Add(idle)
		s.mu.Lock()
		loggedIn := s.loggedIn
		s.mu.Unlock()
		loginBy := s.start.Add(st.LoginTimeout)
		if !loggedIn && st.LoginTimeout > 0 && loginBy.Before(deadline) {
			deadline = loginBy
		}
		_ = s.client.SetReadDeadline(deadline)
		raw, text, err := r.ReadLine()
		switch {
		case err == nil:
		case errors.Is(err, ftp.ErrLineTooLong):
			s.log.Warn("client line too long, dropped", "max", s.maxLine())
			s.reply(ftp.CodeSyntaxError, "Command line too long.")
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.mu.Lock()
			busy, loggedIn := s.transfers > 0, s.loggedIn
			s.mu.Unlock()
			if !loggedIn && st.LoginTimeout > 0 && !time.Now().Before(loginBy) {
				s.srv.stats.refuse("login-timeout")
				s.log.Warn("session closed: no login in time", "login_timeout", st.LoginTimeout)
				s.reply(ftp.CodeServiceUnavailable, "Login timeout: closing control connection.")
				return endLogin
			}
			if busy {
				// A long transfer keeps the control channel quiet; that is
				// not idleness: it counts as activity.
				lastLine = time.Now()
				continue
			}
			if time.Since(lastLine) < idle {
				// The login deadline passed after the client logged in.
				continue
			}
			s.srv.stats.refuse("idle-timeout")
			s.reply(ftp.CodeServiceUnavailable, "Idle timeout: closing control connection.")
			return endIdle
		default:
			return endClientClosed
		}
		lastLine = time.Now()
		s.srv.stats.fromClient.Add(uint64(len(raw)))
		if reason := s.command(ctx, raw, text); reason != "" {
			return reason
		}
	}
}

// command handles one client command: refuse it with a reply of pasvgate's
// own, or forward it with the bookkeeping its reply needs: unchanged, or
// for PORT/EPRT rewritten to a mapping's address. It returns a reason to
// end the session, or "".
func (s *session) command(ctx context.Context, raw, text []byte) string {
	verb, arg := ftp.ParseCommand(text)
	if bytes.IndexByte(raw, 0xFF) >= 0 && ftp.HasTelnetNegotiation(raw) {
		s.refuse(verb, ftp.CodeSyntaxError, "Telnet option negotiation is not supported.", "telnet-negotiation")
		return ""
	}
	if bytes.IndexByte(text, '\r') >= 0 || bytes.IndexByte(text, 0) >= 0 {
		// A server that ends lines at a bare CR would read a second
		// command here that pasvgate did not see.
		s.refuse(verb, ftp.CodeSyntaxError, "Command contains a bare CR or NUL.", "bare-cr-nul")
		return ""
	}
	p := pending{verb: verb}
	switch verb {
	case ftp.VerbPASV, ftp.VerbEPSV:
		if verb == ftp.VerbEPSV && bytes.EqualFold(bytes.TrimSpace(arg), []byte("ALL")) {
			s.mu.Lock()
			s.epsvAll = true
			s.mu.Unlock()
			break
		}
		if verb == ftp.VerbPASV {
			if s.isEPSVAll() {
				s.refuse(verb, ftp.CodeBadSequence, "EPSV ALL in effect: only EPSV may open a data connection.", "epsv-all")
				return ""
			}
			if !s.peer.Is4() {
				// RFC 2428: PASV cannot express an IPv6 address.
				s.refuse(verb, ftp.CodeNetProtoNotSupported, "Network protocol not supported, use EPSV.", "pasv-on-ipv6")
				return ""
			}
		}
		s.replaceMapping(nil)
	case ftp.VerbPORT, ftp.VerbEPRT:
		if s.isEPSVAll() {
			s.refuse(verb, ftp.CodeBadSequence, "EPSV ALL in effect: only EPSV may open a data connection.", "epsv-all")
			return ""
		}
		client, code, msg, why := s.checkActive(verb, arg)
		if code != 0 {
			s.refuse(verb, code, msg, why)
			return ""
		}
		s.replaceMapping(nil)
		line, m := s.openActive(ctx, verb, client)
		if m == nil {
			s.reply(ftp.CodeCantOpenData, "Can't open data connection.")
			return ""
		}
		s.replaceMapping(m)
		// The server is told the gateway's address: it may only connect to
		// the address the control connection comes from (vsftpd's
		// port_promiscuous=NO), and must never learn the client's.
		raw = line
	case ftp.VerbLPRT, ftp.VerbLPSV:
		s.refuse(verb, ftp.CodeNotImplemented, "Long address commands are not supported: use EPRT/EPSV.", "long-address")
		return ""
	case ftp.VerbAUTH:
		// Once the channel is encrypted pasvgate cannot see the 227 it must
		// rewrite, so TLS is refused rather than let through blind.
		s.refuse(verb, ftp.CodePolicyRefused, "AUTH is not supported through this gateway: FTPS is not available.", "auth-tls")
		return ""
	case ftp.VerbREIN:
		s.mu.Lock()
		s.epsvAll = false
		s.loggedIn = false
		s.mu.Unlock()
	case ftp.VerbUSER:
		s.mu.Lock()
		s.user = string(bytes.TrimSpace(arg))
		s.mu.Unlock()
	default:
		if verb.IsTransfer() {
			s.mu.Lock()
			m := s.current
			s.current = nil
			s.mu.Unlock()
			if m != nil && !m.Claim() {
				s.refuse(verb, ftp.CodeCantOpenData, "Data connection timed out: send PASV or EPSV again.", "data-connect-timeout")
				return ""
			}
			p.mapping = m
			p.arg = string(arg)
			p.sent = time.Now()
		}
	}
	s.mu.Lock()
	if len(s.queue) >= maxPending {
		s.mu.Unlock()
		s.log.Warn("session refused: too many pipelined commands", "max", maxPending)
		s.reply(ftp.CodeServiceUnavailable, "Too many commands without reading replies.")
		return endTooMany
	}
	if p.verb.IsTransfer() {
		s.transfers++
	}
	s.queue = append(s.queue, p)
	s.mu.Unlock()
	if err := s.writeServer(raw); err != nil {
		return endServerClosed
	}
	return ""
}

// checkActive applies the no-bounce rule to PORT/EPRT: the address must be
// the client's own and the port unprivileged. It returns the client's data
// address, and code 0 when the command may pass.
func (s *session) checkActive(verb ftp.Verb, arg []byte) (ap netip.AddrPort, code int, msg, why string) {
	var err error
	if verb == ftp.VerbPORT {
		ap, err = ftp.ParsePORT(arg)
	} else {
		ap, err = ftp.ParseEPRT(arg)
	}
	switch {
	case err != nil:
		return ap, ftp.CodeArgSyntaxError, "Syntax error in " + verb.String() + " address.", "malformed"
	case ap.Addr().Is4() != s.peer.Is4():
		if s.peer.Is4() {
			return ap, ftp.CodeNetProtoNotSupported, "Network protocol not supported, use (1)", "wrong-family"
		}
		return ap, ftp.CodeNetProtoNotSupported, "Network protocol not supported, use (2)", "wrong-family"
	case ap.Addr() != s.peer:
		return ap, ftp.CodeSyntaxError, "Illegal " + verb.String() + " command: address is not yours.", "bounce-address"
	case ap.Port() < 1024:
		return ap, ftp.CodeSyntaxError, "Illegal " + verb.String() + " command: privileged port.", "bounce-port"
	}
	return ap, 0, "", ""
}

// openActive maps the server's data connection back to the client's
// PORT/EPRT address and returns the rewritten command: the gateway's
// address towards the server and a public port Q. A mapping admits only the
// server, to the client's address and port. It returns a nil mapping when
// nothing could be installed.
func (s *session) openActive(ctx context.Context, verb ftp.Verb, client netip.AddrPort) ([]byte, *nat.Mapping) {
	server := addrPortOf(s.server.RemoteAddr())
	gw := addrPortOf(s.server.LocalAddr()).Addr()
	if verb == ftp.VerbPORT && !gw.Is4() {
		s.log.Warn("PORT refused: the server is reached over IPv6", "server", server)
		return nil, nil
	}
	req := nat.Request{Session: s.id, Source: server.Addr(), Public: gw, Target: client}
	if !s.srv.transparent() {
		// Reverse mode: the client sees the data connection come from the
		// gateway's public side, the address it dialed.
		req.SNAT = s.clientSideAddr()
	}
	m, err := s.srv.NAT.Open(ctx, req)
	if err != nil {
		s.srv.stats.refuse("mapping-failed")
		return nil, nil
	}
	s.srv.stats.rewrite(verb.String())
	ap := netip.AddrPortFrom(gw, m.Public.Port())
	if verb == ftp.VerbPORT {
		return ftp.AppendPORT(nil, ap), m
	}
	return ftp.AppendEPRT(nil, ap), m
}

// clientSideAddr is the gateway's address as the client sees it: the
// public address if it is set, local and of the client's family, otherwise
// the address the client's control connection arrived at.
func (s *session) clientSideAddr() netip.Addr {
	local := addrPortOf(s.client.LocalAddr()).Addr()
	pub := s.srv.publicAddr()
	if pub.IsValid() && pub.Is4() == local.Is4() && (s.srv.IsLocal == nil || s.srv.IsLocal(pub)) {
		return pub
	}
	return local
}

// refuse answers a command with pasvgate's own reply and logs why. The
// command never reaches the server.
func (s *session) refuse(verb ftp.Verb, code int, msg, why string) {
	s.srv.stats.refuse(why)
	s.log.Warn("command refused", "command", verb.String(), "code", code, "reason", why)
	s.reply(code, msg)
}

func (s *session) isEPSVAll() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epsvAll
}

// replaceMapping makes m the session's current data mapping and releases
// the one it replaces: a client that asks for a new data port is done with
// the old one.
func (s *session) replaceMapping(m *nat.Mapping) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaceMappingLocked(m)
}

func (s *session) replaceMappingLocked(m *nat.Mapping) {
	if s.current != nil {
		s.current.Release(nat.ReasonReplaced)
	}
	s.current = m
}

// reply sends the client a reply of pasvgate's own, in order.
func (s *session) reply(code int, text string) {
	line := ftp.AppendReply(nil, code, text)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.midReply || len(s.queue) > 0 {
		s.queue = append(s.queue, pending{local: line})
		return
	}
	s.writeClientLocked(line)
}

// replies relays the server's replies to the client until the server goes
// away, and returns why.
func (s *session) replies(ctx context.Context) string {
	r := ftp.NewReader(s.server, s.maxLine())
	var st ftp.ReplyState
	// A 227/229 reply is collected whole, as text to parse and as the raw
	// bytes to forward when it needs no change.
	var held, heldRaw []byte
	for {
		raw, text, err := r.ReadLine()
		switch {
		case err == nil:
		case errors.Is(err, ftp.ErrLineTooLong):
			s.log.Warn("server line too long, dropped", "max", s.maxLine())
			continue
		default:
			s.mu.Lock()
			if !s.midReply && !s.ended {
				s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service not available: the FTP server closed the connection."))
			}
			s.mu.Unlock()
			return endServerClosed
		}
		s.srv.stats.fromServer.Add(uint64(len(raw)))
		code, last, err := st.Feed(text)
		if err != nil {
			s.log.Warn("malformed reply line from server, dropped", "err", err)
			continue
		}
		if code == ftp.CodeEnteringPassive || code == ftp.CodeEnteringExtPassive {
			// The address is rewritten on the whole reply: hold every line
			// back until the last, so no line of it reaches the client
			// with the server's address in it.
			held = append(held, text...)
			held = append(held, '\n')
			heldRaw = append(heldRaw, raw...)
			if !last {
				continue
			}
			s.passive(ctx, code, held, heldRaw)
			held, heldRaw = held[:0], heldRaw[:0]
			continue
		}
		if code == ftp.CodeSystemStatus && !last && s.headVerb() == ftp.VerbFEAT && isTLSFeature(text) {
			// Hide TLS from clients that would try it and fail: pasvgate
			// refuses AUTH.
			continue
		}
		s.mu.Lock()
		s.writeClientLocked(raw)
		if last {
			s.midReply = false
			if code == ftp.CodeLoggedIn {
				s.loggedIn = true
			}
			if code >= 200 {
				s.popLocked(code)
			}
		} else {
			s.midReply = true
		}
		s.mu.Unlock()
	}
}

// headVerb is the command whose reply is due next.
func (s *session) headVerb() ftp.Verb {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return ftp.VerbOther
	}
	return s.queue[0].verb
}

// popLocked retires the command a final reply answered, releases its
// transfer's mapping (after the reply is on its way: removal is not on the
// critical path), and sends any replies of pasvgate's own queued behind it.
func (s *session) popLocked(code int) {
	if len(s.queue) == 0 {
		return // an unsolicited reply, such as a server's 421
	}
	p := s.queue[0]
	s.queue = s.queue[:copy(s.queue, s.queue[1:])]
	if p.verb.IsTransfer() {
		s.transfers--
		id := ""
		if p.mapping != nil {
			p.mapping.Release(nat.ReasonTransferDone)
			id = p.mapping.ID
		}
		result := "ok"
		if code >= 400 {
			result = "failed"
		}
		s.log.Info("transfer", "user", s.user, "command", p.verb.String(), "file", p.arg,
			"mapping", id, "duration_ms", time.Since(p.sent).Milliseconds(), "code", code, "result", result)
	}
	for len(s.queue) > 0 && s.queue[0].local != nil {
		s.writeClientLocked(s.queue[0].local)
		s.queue = s.queue[:copy(s.queue, s.queue[1:])]
	}
	if s.draining && s.transfers == 0 && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service closing: pasvgate is shutting down."))
		s.endLocked(endShutdown)
	}
}

// passive handles a complete 227 or 229 reply: check the address, open the
// mapping, and only then send the client the rewritten reply. Any failure
// gives the client 425 and leaves nothing installed.
func (s *session) passive(ctx context.Context, code int, text, raw []byte) {
	want := ftp.VerbPASV
	if code == ftp.CodeEnteringExtPassive {
		want = ftp.VerbEPSV
	}
	var line []byte
	var m *nat.Mapping
	if s.srv.transparent() {
		line = s.fixPassive(code, text, raw)
	} else {
		line, m = s.openPassive(ctx, code, want, text)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m != nil {
		if s.ended {
			m.Release(nat.ReasonSessionEnd)
		} else {
			s.replaceMappingLocked(m)
		}
	}
	s.writeClientLocked(line)
	s.midReply = false
	s.popLocked(code)
}

// openPassive returns the line to send the client for a 227/229 reply, and
// the mapping it opened, if any.
func (s *session) openPassive(ctx context.Context, code int, want ftp.Verb, text []byte) ([]byte, *nat.Mapping) {
	cant := func() []byte {
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	if got := s.headVerb(); got != want {
		s.log.Warn("passive reply refused: no matching command", "code", code, "pending", got.String())
		return cant(), nil
	}
	server := addrPortOf(s.server.RemoteAddr())
	local := addrPortOf(s.client.LocalAddr())
	var backend netip.AddrPort
	if code == ftp.CodeEnteringPassive {
		ap, err := ftp.ParsePASV(text)
		if err != nil {
			s.log.Warn("passive reply refused: unparseable 227", "server", server, "err", err)
			return cant(), nil
		}
		switch a := ap.Addr(); {
		case a.IsUnspecified():
			// RFC 1123 and common practice: 0.0.0.0 means "the address of
			// this control connection".
			backend = netip.AddrPortFrom(server.Addr(), ap.Port())
		case a != server.Addr():
			// A backend must never make the gateway forward to another host.
			s.log.Warn("passive reply refused: server advertised another host",
				"server", server.Addr(), "advertised", a, "port", ap.Port())
			return cant(), nil
		default:
			backend = ap
		}
	} else {
		port, err := ftp.ParseEPSV(text)
		if err != nil {
			s.log.Warn("passive reply refused: unparseable 229", "server", server, "err", err)
			return cant(), nil
		}
		backend = netip.AddrPortFrom(server.Addr(), port)
	}

	// What the client is told, and what the kernel entry matches. EPSV
	// clients connect back to the address they dialed; PASV clients to the
	// public address, which arrives as the local address when the gateway
	// is itself behind a 1:1 NAT.
	st := s.srv.settings()
	if st.PublicAddrFunc != nil && !st.PublicAddrFunc().IsValid() {
		// Following an interface that has no usable address right now:
		// nothing to advertise until it has one.
		s.srv.stats.refuse("no-public-address")
		s.log.Warn("passive reply refused: the public interface has no usable address")
		return cant(), nil
	}
	public := local.Addr()
	match := local.Addr()
	if pub := s.srv.publicAddr(); code == ftp.CodeEnteringPassive && pub.IsValid() {
		public = pub
		if s.srv.IsLocal == nil || s.srv.IsLocal(public) {
			match = public
		}
	}
	if code == ftp.CodeEnteringPassive && !public.Is4() {
		s.log.Warn("passive reply refused: no IPv4 public address for 227", "public", public)
		return cant(), nil
	}
	req := nat.Request{Session: s.id, Source: s.peer, Public: match, Target: backend}
	if st.SNAT {
		req.SNAT = addrPortOf(s.server.LocalAddr()).Addr()
	}
	m, err := s.srv.NAT.Open(ctx, req)
	if err != nil {
		s.srv.stats.refuse("mapping-failed")
		return cant(), nil
	}
	s.srv.stats.rewrite(strconv.Itoa(code))
	var line []byte
	if code == ftp.CodeEnteringPassive {
		line = ftp.AppendPASV(nil, netip.AddrPortFrom(public, m.Public.Port()))
	} else {
		line = ftp.AppendEPSV(nil, m.Public.Port())
	}
	s.log.Debug("passive reply rewritten", "server_reply", string(bytes.TrimSpace(text)),
		"client_reply", string(bytes.TrimSpace(line)), "mapping", m.ID)
	return line, m
}

// fixPassive handles a 227/229 in transparent mode, where the client
// connects out to the server itself through the router's masquerade. A
// 229, and a 227 that names the server's own address, pass unchanged. A 227
// that names anything else (a private or loopback address, another host) is
// rewritten to the server's address the client dialed: the fix for a
// server that advertises the wrong passive address.
func (s *session) fixPassive(code int, text, raw []byte) []byte {
	if code != ftp.CodeEnteringPassive {
		return raw
	}
	server := addrPortOf(s.server.RemoteAddr())
	ap, err := ftp.ParsePASV(text)
	if err != nil {
		s.log.Warn("passive reply refused: unparseable 227", "server", server, "err", err)
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	if ap.Addr() == server.Addr() {
		return raw
	}
	if !server.Addr().Is4() {
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	fixed := netip.AddrPortFrom(server.Addr(), ap.Port())
	s.srv.stats.rewrite("227-fixed")
	s.log.Info("227 rewritten: server advertised an address its clients cannot use",
		"server", server.Addr(), "advertised", ap.Addr(), "port", ap.Port(), "rewritten", fixed)
	return ftp.AppendPASV(nil, fixed)
}

// isTLSFeature reports whether a FEAT continuation line advertises a TLS
// feature (RFC 4217): AUTH, PBSZ, PROT or CCC.
func isTLSFeature(text []byte) bool {
	t := bytes.TrimSpace(text)
	for _, f := range []string{"AUTH", "PBSZ", "PROT", "CCC"} {
		if len(t) >= len(f) && bytes.EqualFold(t[:len(f)], []byte(f)) && (len(t) == len(f) || t[len(f)] == ' ') {
			return true
		}
	}
	return false
}

// writeClientLocked writes to the client under s.mu. A failed write ends
// the session through the read side, which then sees the closed socket.
func (s *session) writeClientLocked(b []byte) {
	_ = s.client.SetWriteDeadline(time.Now().Add(durationOr(s.srv.settings().WriteTimeout, 30*time.Second)))
	if _, err := s.client.Write(b); err != nil {
		// Closing both sockets ends both relay loops; the command loop
		// then reports the client as gone.
		s.client.Close()
		s.server.Close()
	}
}

func (s *session) writeServer(b []byte) error {
	_ = s.server.SetWriteDeadline(time.Now().Add(durationOr(s.srv.settings().WriteTimeout, 30*time.Second)))
	_, err := s.server.Write(b)
	return err
}

// setOOBInline keeps TCP urgent data in the byte stream. A client's Telnet
// Synch before ABOR sends the DM byte as urgent data; without this the
// kernel would take it out of band and pasvgate would forward a broken
// sequence.
func setOOBInline(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1)
	})
}
