package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// commands relays the client's commands to the server until the client
// goes away, and returns why.
func (s *session) commands(ctx context.Context) string {
	conn := s.client
	r := s.cr
	if r == nil {
		r = ftp.NewReader(conn, s.maxLine())
	}
	lastLine := time.Now()
	s.mu.Lock()
	s.loginFrom = s.start
	s.mu.Unlock()
	if s.first != nil {
		// The USER that picked the server (the user policy, preLogin):
		// the server's first command.
		s.unread = r.Buffered()
		if reason := s.command(ctx, ftp.ParseLine(s.first, s.firstText)); reason != "" {
			return reason
		}
	}
	for {
		raw, text, reason := s.readCommand(conn, r, &lastLine)
		if reason != "" {
			return reason
		}
		if reason := s.command(ctx, ftp.ParseLine(raw, text)); reason != "" {
			return reason
		}
		if s.client != conn {
			// AUTH made the channel TLS: from here on the client's
			// commands are read through it. auth checked that nothing
			// was left unread in clear.
			conn = s.client
			r = ftp.NewReader(conn, s.maxLine())
		}
		if reason := s.endedWith(); reason != "" {
			// Ended by a reply that could not be queued: the lines still
			// buffered are not read.
			return reason
		}
	}
}

// readCommand reads the client's next line through r (which reads conn)
// within the idle and login deadlines, and returns it, or a reason to end
// the session. A line over --max-line is refused and skipped. lastLine is
// when the client last sent a line; a transfer in progress moves it too.
func (s *session) readCommand(conn net.Conn, r *ftp.Reader, lastLine *time.Time) (raw, text []byte, reason string) {
	for {
		st := s.srv.settings()
		deadline, loginBy := s.readDeadline(st, *lastLine)
		_ = conn.SetReadDeadline(deadline)
		raw, text, err := r.ReadLine()
		switch {
		case err == nil:
			*lastLine = time.Now()
			s.srv.stats.fromClient.Add(uint64(len(raw)))
			s.fromClient.Add(uint64(len(raw)))
			s.unread = r.Buffered()
			return raw, text, ""
		case errors.Is(err, ftp.ErrLineTooLong):
			s.lineTooLong()
		case errors.Is(err, ftp.ErrLineEndless):
			return nil, nil, s.lineEndless()
		case errors.Is(err, os.ErrDeadlineExceeded):
			reason, busy := s.timeout(st, *lastLine, loginBy)
			if reason != "" {
				return nil, nil, reason
			}
			if busy {
				*lastLine = time.Now()
			}
		default:
			return nil, nil, endClientClosed
		}
	}
}

// command handles one client command: refuse it with a reply of pasvgate's
// own, or forward it with the bookkeeping its reply needs: unchanged, or
// for PORT/EPRT rewritten to a mapping's address. It returns a reason to
// end the session, or "".
func (s *session) command(ctx context.Context, c ftp.Command) string {
	if dataVerb(c.Verb) {
		// Whether it may open a data port depends on the login, which a
		// pipelined PASS may be about to settle.
		s.awaitLogin(ctx)
	}
	if r, ok := s.refusal(c); ok {
		s.refuse(c.Verb, r)
		return ""
	}
	out := c.Raw
	if canonical(c.Verb) || !c.Canonical() {
		// Sent as "VERB arg": what pasvgate acts on, and any line whose
		// verb ends at a TAB, VT or FF (which pure-ftpd would drop without
		// a reply), must mean the same to the server as to pasvgate.
		s.canon = c.AppendCanonical(s.canon[:0])
		out = s.canon
	}
	p := pending{verb: c.Verb}
	switch c.Verb {
	case ftp.VerbAUTH:
		return s.auth(ctx)
	case ftp.VerbPBSZ, ftp.VerbPROT:
		if out = s.protection(c); out == nil {
			return ""
		}
		p.protP = c.Verb == ftp.VerbPROT && protLevel(c.Arg) == 'P'
	case ftp.VerbPASV, ftp.VerbEPSV:
		if c.Verb == ftp.VerbEPSV && isEPSVAllArg(c.Arg) {
			s.mu.Lock()
			s.epsvAll = true
			s.mu.Unlock()
			break
		}
		s.replaceMapping(nil)
	case ftp.VerbPORT, ftp.VerbEPRT:
		client, r, ok := s.checkActive(c.Verb, c.Arg)
		if !ok {
			s.refuse(c.Verb, r)
			return ""
		}
		s.replaceMapping(nil)
		line, m, why := s.openActive(ctx, c.Verb, client)
		if m == nil {
			s.reply(ftp.CodeCantOpenData, why)
			return ""
		}
		s.replaceMapping(m)
		// The server is told the gateway's address: it may only connect to
		// the address the control connection comes from (vsftpd's
		// port_promiscuous=NO), and must never learn the client's.
		out = line
	case ftp.VerbREIN:
		// The login ends now, not at the server's reply: nothing is
		// mapped on its strength from here on. A transfer in progress
		// keeps its mapping (RFC 959: REIN lets it complete); a data port
		// no transfer has claimed yet goes with the login. The client
		// gets a new login window from now, as a new session would.
		s.mu.Lock()
		s.epsvAll = false
		p.loggedIn = s.loggedIn
		if s.loggedIn {
			// A logout opens a new login window, from now, as a new
			// connection would have: the session's own may be long
			// past, and ending it there would answer REIN with
			// nothing. A session that never logged in keeps its
			// window, or REIN would let it stay without ever logging in.
			s.loginFrom = time.Now()
		}
		s.loggedIn = false
		if s.current != nil {
			s.current.Release(nat.ReasonLoggedOut)
			s.current = nil
		}
		s.mu.Unlock()
	case ftp.VerbUSER:
		s.mu.Lock()
		s.user = string(ftp.TrimSpace(c.Arg))
		s.mu.Unlock()
	default:
		if c.Verb.IsTransfer() {
			s.mu.Lock()
			m := s.current
			s.current = nil
			s.mu.Unlock()
			if m != nil && !m.Claim() {
				s.refuse(c.Verb, refusal{ftp.CodeCantOpenData, "Data connection timed out: send PASV or EPSV again.", "data-connect-timeout"})
				return ""
			}
			p.mapping = m
			p.arg = string(c.Arg)
			p.sent = time.Now()
		}
	}
	if reason := s.enqueue(p); reason != "" {
		return reason
	}
	if err := s.writeServer(out); err != nil {
		return endServerClosed
	}
	return ""
}

// canonical reports whether commands with verb v go to the server as
// canonical lines (ftp.Command.AppendCanonical) even when the client's
// line is already canonical but for case and Telnet commands: the
// commands pasvgate acts on. PASV and EPSV (and EPSV ALL) make it
// expect and rewrite a 227/229; transfer commands claim a data mapping and
// are owed a final reply that releases it; REIN ends the login that
// mappings depend on. PORT and EPRT are always rewritten (openActive).
// Servers split a line differently (see proxy/ftp ParseCommand): a line
// sent as it came could be one of these to pasvgate and something else to
// the server, which would then answer what pasvgate does not expect.
//
// USER and PASS pass as they came: pasvgate decides nothing on them (the
// login that counts is the server's 230, read whatever the server made of
// them), and a password is best left untouched.
func canonical(v ftp.Verb) bool {
	switch v {
	case ftp.VerbPASV, ftp.VerbEPSV, ftp.VerbREIN:
		return true
	}
	return v.IsTransfer()
}

// refusal is a reply pasvgate gives in place of forwarding a command: the
// command never reaches the server.
type refusal struct {
	code int
	text string
	why  string // the reason logged, and counted in Stats.Refused
}

// refusals are the commands pasvgate answers itself, whatever their
// argument, in the order they are checked: the first that applies answers.
// PORT and EPRT are further checked by their address (checkActive). Read
// only.
var refusals = [...]struct {
	applies func(*session, ftp.Command) bool
	refusal
}{{
	// Peers skip option bytes in different ways, so such a line could be
	// one command to pasvgate and another to the server.
	func(_ *session, c ftp.Command) bool {
		return bytes.IndexByte(c.Raw, 0xFF) >= 0 && ftp.HasTelnetNegotiation(c.Raw)
	},
	refusal{ftp.CodeSyntaxError, "Telnet option negotiation is not supported.", "telnet-negotiation"},
}, {
	// A server that ends lines at a bare CR would read a second command
	// here that pasvgate did not see.
	func(_ *session, c ftp.Command) bool {
		return bytes.IndexByte(c.Text, '\r') >= 0 || bytes.IndexByte(c.Text, 0) >= 0
	},
	refusal{ftp.CodeSyntaxError, "Command contains a bare CR or NUL.", "bare-cr-nul"},
}, {
	// ProFTPD drops an empty line, or one that starts with whitespace,
	// without a reply, where vsftpd and pure-ftpd answer 500: forwarded,
	// it would leave pasvgate waiting for a reply that may never come.
	func(_ *session, c ftp.Command) bool { return c.NoVerb() },
	refusal{ftp.CodeSyntaxError, "Command has no verb.", "no-verb"},
}, {
	// No command has one, and pure-ftpd drops such a line without a reply.
	func(_ *session, c ftp.Command) bool { return c.BadVerb() },
	refusal{ftp.CodeSyntaxError, "Command not understood.", "bad-verb"},
}, {
	// RFC 1639 addresses: pasvgate neither checks nor rewrites them.
	func(_ *session, c ftp.Command) bool { return c.Verb == ftp.VerbLPRT || c.Verb == ftp.VerbLPSV },
	refusal{ftp.CodeNotImplemented, "Long address commands are not supported: use EPRT/EPSV.", "long-address"},
}, {
	// No mapping before the server has accepted a login (a 230 forwarded
	// to the client): a client that has not logged in must not be able to
	// hold data ports. Servers answer these so before login themselves,
	// EPSV ALL included.
	func(s *session, c ftp.Command) bool { return dataVerb(c.Verb) && !s.isLoggedIn() },
	refusal{ftp.CodeNotLoggedIn, "Please login with USER and PASS.", "login-required"},
}, {
	// RFC 2428: after EPSV ALL only EPSV may open a data connection.
	func(s *session, c ftp.Command) bool {
		switch c.Verb {
		case ftp.VerbPASV, ftp.VerbPORT, ftp.VerbEPRT:
			return s.isEPSVAll()
		}
		return false
	},
	refusal{ftp.CodeBadSequence, "EPSV ALL in effect: only EPSV may open a data connection.", "epsv-all"},
}, {
	// RFC 2428: a 227 cannot carry an IPv6 address.
	func(s *session, c ftp.Command) bool { return c.Verb == ftp.VerbPASV && !s.peer.Is4() },
	refusal{ftp.CodeNetProtoNotSupported, "Network protocol not supported, use EPSV.", "pasv-on-ipv6"},
}, {
	// At most one live mapping per session: a transfer still holds one
	// until its final reply. Pipelined PORT+RETR pairs would otherwise
	// pin one port each. The command is refused rather than held back
	// until the transfer ends: the command loop must keep reading, so
	// that ABOR and STAT reach the server during a transfer.
	func(s *session, c ftp.Command) bool { return opensData(c) && s.transferHoldsMapping() },
	refusal{ftp.CodeCantOpenData, "Can't open data connection: a transfer is still in progress.", "transfer-in-progress"},
}}

// dataVerb reports whether v asks for a data port: PASV, EPSV (EPSV ALL
// included), PORT, EPRT.
func dataVerb(v ftp.Verb) bool {
	switch v {
	case ftp.VerbPASV, ftp.VerbEPSV, ftp.VerbPORT, ftp.VerbEPRT:
		return true
	}
	return false
}

// opensData reports whether c opens a data mapping: a data verb other
// than EPSV ALL.
func opensData(c ftp.Command) bool {
	return dataVerb(c.Verb) && !(c.Verb == ftp.VerbEPSV && isEPSVAllArg(c.Arg))
}

func isEPSVAllArg(arg []byte) bool { return bytes.EqualFold(ftp.TrimSpace(arg), []byte("ALL")) }

// refusal returns the first entry of refusals, then of tlsRefusals (the
// FTPS commands, auth.go), that applies to c.
func (s *session) refusal(c ftp.Command) (refusal, bool) {
	for _, r := range refusals {
		if r.applies(s, c) {
			return r.refusal, true
		}
	}
	for _, r := range tlsRefusals {
		if r.applies(s, c) {
			return r.refusal, true
		}
	}
	return refusal{}, false
}

// refuse answers a command with pasvgate's own reply and logs why. The
// command never reaches the server.
func (s *session) refuse(verb ftp.Verb, r refusal) {
	s.srv.stats.refuse(r.why)
	s.log.Warn("command refused", "command", verb.String(), "code", r.code, "reason", r.why)
	s.reply(r.code, r.text)
}

func (s *session) isEPSVAll() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epsvAll
}
