package proxy

import (
	"bytes"
	"context"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// The user policy (pool.User) picks a session's server by its login name,
// which the client sends only after the server's greeting. So pasvgate
// greets the client itself, answers what a client may send before USER,
// and connects to the server only then (upstream.go), whose own greeting
// it reads and drops. USER is then the session's first command to the
// server, as if the client had sent it there.
//
// Before USER pasvgate answers:
//   - AUTH, PBSZ and PROT as it does once connected (auth.go): the
//     client's leg becomes TLS here, and the server's is upgraded as it is
//     connected, as for a client of an implicit-TLS listener;
//   - FEAT with the TLS features only, NOOP, SYST (UNIX Type: L8, what
//     nearly every server says), QUIT;
//   - PASS, 503 (USER first); anything else, 530, as servers answer
//     commands before a login.

// maxPreLogin bounds the commands a client may send before USER: the login
// timeout bounds the time, this the work, even with --login-timeout 0.
const maxPreLogin = 32

// Replies of the user policy's greeting phase.
var (
	linePreGreeting = ftp.AppendReply(nil, ftp.CodeServiceReady, "FTP service ready.")
	linePreSyst     = ftp.AppendReply(nil, 215, "UNIX Type: L8")
	linePreFeatNone = ftp.AppendReply(nil, ftp.CodeSystemStatus, "No features before login.")
	featHeadPre     = []byte("211-Features:\r\n")
	featEnd         = []byte("211 End.\r\n")
)

// preLogin greets the client and reads its commands until USER, which it
// returns (raw and text, copied, and the reader, which may hold what the
// client sent after it). ok is false when the session ends first; the
// client has then been told why, and reason says it.
func (s *session) preLogin(ctx context.Context) (raw, text []byte, r *ftp.Reader, reason string) {
	stop := context.AfterFunc(ctx, func() {
		s.say421AndEnd("Service closing: pasvgate is shutting down.", endShutdown)
	})
	defer stop()
	s.mu.Lock()
	s.loginFrom = s.start
	s.greeted = true // under mu: the live view reads it
	s.writeClientLocked(linePreGreeting)
	s.mu.Unlock()
	conn := s.client
	r = ftp.NewReader(conn, s.maxLine())
	lastLine := time.Now()
	for n := 0; ; n++ {
		if n == maxPreLogin {
			s.srv.stats.refuse("prelogin-commands")
			s.log.Warn("session closed: too many commands before USER", "max", maxPreLogin)
			return nil, nil, nil, s.closeWith("Too many commands before login: closing control connection.", endTooMany)
		}
		lraw, ltext, reason := s.readCommand(conn, r, &lastLine)
		if reason != "" {
			if ended := s.endedWith(); ended != "" {
				reason = ended // ended by pasvgate (a drain), not the client
			}
			return nil, nil, nil, reason
		}
		c := ftp.ParseLine(lraw, ltext)
		if rf, ok := s.refusal(c); ok {
			s.refuse(c.Verb, rf)
			continue
		}
		switch c.Verb {
		case ftp.VerbUSER:
			s.mu.Lock()
			s.user = string(ftp.TrimSpace(c.Arg))
			s.mu.Unlock()
			return bytes.Clone(lraw), bytes.Clone(ltext), r, ""
		case ftp.VerbAUTH:
			if s.unread > 0 {
				s.srv.stats.tlsFailed(tlsFailCleartextAfter)
				s.log.Warn("session closed: the client sent more after AUTH without waiting for the reply", "bytes", s.unread)
				return nil, nil, nil, s.closeWith("Data after AUTH before its reply: closing control connection.", endClientTLS)
			}
			if reason := s.upgradeClient(ctx); reason != "" {
				return nil, nil, nil, reason
			}
			conn = s.client
			r = ftp.NewReader(conn, s.maxLine())
		case ftp.VerbPBSZ, ftp.VerbPROT:
			s.protection(c) // the server's leg is not there yet: answered here
		case ftp.VerbQUIT:
			s.mu.Lock()
			s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeClosingControl, "Goodbye."))
			s.closeNotifyLocked()
			s.endLocked(endClientClosed)
			s.mu.Unlock()
			return nil, nil, nil, endClientClosed
		case ftp.VerbNOOP:
			s.reply(ftp.CodeOK, "NOOP ok.")
		case ftp.VerbFEAT:
			s.mu.Lock()
			if s.srv.settings().TLS != TLSOff {
				s.writeClientLocked(featHeadPre)
				s.writeClientLocked(tlsFeatures)
				s.writeClientLocked(featEnd)
			} else {
				s.writeClientLocked(linePreFeatNone)
			}
			s.mu.Unlock()
		case ftp.VerbPASS:
			s.reply(ftp.CodeBadSequence, "Login with USER first.")
		default:
			if bytes.EqualFold(c.Word, []byte("SYST")) {
				s.mu.Lock()
				s.writeClientLocked(linePreSyst)
				s.mu.Unlock()
				continue
			}
			s.reply(ftp.CodeNotLoggedIn, "Please login with USER and PASS.")
		}
	}
}
