package proxy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// commands relays the client's commands to the server until the client
// goes away, and returns why.
func (s *session) commands(ctx context.Context) string {
	r := ftp.NewReader(s.client, s.maxLine())
	lastLine := time.Now()
	for {
		st := s.srv.settings()
		deadline, loginBy := s.readDeadline(st, lastLine)
		_ = s.client.SetReadDeadline(deadline)
		raw, text, err := r.ReadLine()
		switch {
		case err == nil:
		case errors.Is(err, ftp.ErrLineTooLong):
			s.lineTooLong()
			continue
		case errors.Is(err, ftp.ErrLineEndless):
			return s.lineEndless()
		case errors.Is(err, os.ErrDeadlineExceeded):
			reason, busy := s.timeout(st, lastLine, loginBy)
			if reason != "" {
				return reason
			}
			if busy {
				lastLine = time.Now()
			}
			continue
		default:
			return endClientClosed
		}
		lastLine = time.Now()
		s.srv.stats.fromClient.Add(uint64(len(raw)))
		if reason := s.command(ctx, ftp.ParseLine(raw, text)); reason != "" {
			return reason
		}
		if reason := s.endedWith(); reason != "" {
			// Ended by a reply that could not be queued: the lines still
			// buffered are not read.
			return reason
		}
	}
}

// command handles one client command: refuse it with a reply of pasvgate's
// own, or forward it with the bookkeeping its reply needs: unchanged, or
// for PORT/EPRT rewritten to a mapping's address. It returns a reason to
// end the session, or "".
func (s *session) command(ctx context.Context, c ftp.Command) string {
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
	case ftp.VerbPASV, ftp.VerbEPSV:
		if c.Verb == ftp.VerbEPSV && bytes.EqualFold(ftp.TrimSpace(c.Arg), []byte("ALL")) {
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
		line, m := s.openActive(ctx, c.Verb, client)
		if m == nil {
			s.reply(ftp.CodeCantOpenData, "Can't open data connection.")
			return ""
		}
		s.replaceMapping(m)
		// The server is told the gateway's address: it may only connect to
		// the address the control connection comes from (vsftpd's
		// port_promiscuous=NO), and must never learn the client's.
		out = line
	case ftp.VerbREIN:
		s.mu.Lock()
		s.epsvAll = false
		s.loggedIn = false
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
	// Once the channel is encrypted pasvgate cannot see the 227 it must
	// rewrite, so TLS is refused rather than let through blind.
	func(_ *session, c ftp.Command) bool { return c.Verb == ftp.VerbAUTH },
	refusal{ftp.CodePolicyRefused, "AUTH is not supported through this gateway: FTPS is not available.", "auth-tls"},
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
}}

// refusal returns the first entry of refusals that applies to c.
func (s *session) refusal(c ftp.Command) (refusal, bool) {
	for _, r := range refusals {
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
