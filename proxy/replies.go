package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// reply sends the client a reply of pasvgate's own, in order: at once, or
// queued behind the replies still due from the server. A queue already
// maxPending long means a client that does not read its replies (or
// floods refusals faster than the server answers): the session ends (see
// queueFullLocked).
func (s *session) reply(code int, text string) {
	line := ftp.AppendReply(nil, code, text)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.midReply || len(s.queue) > 0 {
		if len(s.queue) >= maxPending {
			s.queueFullLocked()
			return
		}
		s.queue = append(s.queue, pending{local: line})
		return
	}
	s.writeClientLocked(line)
}

// closeWith ends the session with a 421 of pasvgate's own, in its turn:
// at once if nothing is owed to the client, or else after the replies
// still due from the server (and pasvgate's own queued behind them), and
// never inside a multi-line reply, so that the client reads every reply
// it is owed and then why the session ends. It blocks the caller (the
// commands goroutine, which reads no more commands) until then, but no
// longer than replyGrace: a server that does not answer in time does not
// hold the session, and the 421 then goes out of turn, as RFC 959 lets a
// 421 answer any command, unless a multi-line reply is half sent. It
// returns reason.
func (s *session) closeWith(text, reason string) string {
	line := ftp.AppendReply(nil, ftp.CodeServiceUnavailable, text)
	s.mu.Lock()
	switch {
	case s.ended:
		s.mu.Unlock()
		return reason
	case !s.midReply && len(s.queue) == 0:
		s.writeClientLocked(line)
		s.endLocked(reason)
		s.mu.Unlock()
		return reason
	}
	// Past maxPending: a bounded one more, and the last, since no command
	// is read after it.
	s.queue = append(s.queue, pending{local: line, end: reason})
	s.mu.Unlock()
	t := time.NewTimer(replyGrace)
	defer t.Stop()
	select {
	case <-s.over:
	case <-t.C:
		s.mu.Lock()
		if !s.ended {
			s.log.Warn("the server still owes replies: closing without them", "owed", len(s.queue)-1,
				"mid_reply", s.midReply, "reason", reason)
			if !s.midReply {
				s.writeClientLocked(line)
			}
			s.endLocked(reason)
		}
		s.mu.Unlock()
	}
	return reason
}

// replies relays the server's replies to the client until the server goes
// away, and returns why.
func (s *session) replies(ctx context.Context) string {
	r := ftp.NewReader(s.server, s.maxLine())
	var st ftp.ReplyState
	// A 227/229 reply is collected whole, as text to parse and as the raw
	// bytes to forward when it needs no change: up to maxPassiveLines
	// lines and one --max-line of bytes (see passiveTooLong).
	var held, heldRaw []byte
	heldLines := 0
	for {
		raw, text, err := r.ReadLine()
		switch {
		case err == nil:
		case errors.Is(err, ftp.ErrLineTooLong):
			s.log.Warn("server line too long, dropped", "max", s.maxLine())
			if len(heldRaw) > 0 {
				// Dropped lines count too, or a reply of them would
				// never end.
				if heldLines++; heldLines > maxPassiveLines {
					return s.passiveTooLong(heldLines, len(heldRaw))
				}
			}
			continue
		case errors.Is(err, ftp.ErrLineEndless):
			// Bounded all the same: the Reader keeps none of it.
			s.log.Warn("server line goes on past twice the limit, discarding it to its end", "max", s.maxLine())
			continue
		default:
			s.mu.Lock()
			if !s.midReply && !s.ended && !s.bye {
				s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service not available: the FTP server closed the connection."))
			}
			s.closeNotifyLocked()
			s.mu.Unlock()
			return endServerClosed
		}
		s.srv.stats.fromServer.Add(uint64(len(raw)))
		s.fromServer.Add(uint64(len(raw)))
		code, last, err := st.Feed(text)
		if err != nil {
			s.log.Warn("malformed reply line from server, dropped", "err", err)
			continue
		}
		if code == ftp.CodeEnteringPassive || code == ftp.CodeEnteringExtPassive {
			// The address is rewritten on the whole reply: hold every line
			// back until the last, so no line of it reaches the client
			// with the server's address in it.
			if heldLines++; heldLines > maxPassiveLines || len(heldRaw)+len(raw) > s.maxLine() {
				return s.passiveTooLong(heldLines, len(heldRaw)+len(raw))
			}
			held = append(held, text...)
			held = append(held, '\n')
			heldRaw = append(heldRaw, raw...)
			if !last {
				continue
			}
			s.passive(ctx, code, held, heldRaw)
			held, heldRaw, heldLines = held[:0], heldRaw[:0], 0
			continue
		}
		if code == ftp.CodeAuthOK && s.headVerb() == ftp.VerbAUTH {
			// pasvgate's own AUTH TLS (authUpstream): the server's leg is
			// upgraded here, and the client gets pasvgate's 234.
			if !last {
				continue
			}
			nr, reason := s.upgradeServer(ctx, r)
			if reason != "" {
				return reason
			}
			r = nr
			continue
		}
		feat := code == ftp.CodeSystemStatus && s.headVerb() == ftp.VerbFEAT
		if feat && !last && isTLSFeature(text) {
			// The server's TLS features speak of its own leg: the client
			// hears pasvgate's (below), or none when TLS is off.
			continue
		}
		var done *finished
		s.mu.Lock()
		if feat && last && s.srv.settings().TLS != TLSOff {
			if !s.midReply {
				// A one-line FEAT reply becomes a multi-line one.
				s.writeClientLocked(featHead)
			}
			s.writeClientLocked(tlsFeatures)
		}
		s.writeClientLocked(raw)
		if last {
			s.midReply = false
			switch code {
			case ftp.CodeLoggedIn:
				s.loggedIn = true
			case ftp.CodeClosingControl:
				// The server's goodbye: its close that follows needs no
				// 421 of pasvgate's.
				s.bye = true
			}
			switch {
			case len(s.queue) > 0 && s.queue[0].local != nil:
				// pasvgate's own replies lead the queue only when they
				// were queued during a multi-line reply that answered no
				// command (a server's notice): it has ended, so they go
				// now, and it retires no command.
				s.flushLocked()
			case code >= 200:
				done = s.popLocked(code)
			default:
				s.preliminaryLocked()
			}
		} else {
			s.midReply = true
		}
		s.mu.Unlock()
		s.logFinished(done)
	}
}

// closeNotifyLocked ends a TLS client's channel with a close_notify
// when the server has ended the session, so that the client sees an end
// and not a truncation, which TLS clients report (or must treat) as an
// attack. A client that does not read holds it a second at most.
func (s *session) closeNotifyLocked() {
	if tc, ok := s.client.(*tls.Conn); ok && !s.ended {
		_ = s.rawClient.SetWriteDeadline(time.Now().Add(time.Second))
		_ = tc.CloseWrite()
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
// For a transfer it returns what the caller logs once s.mu is released
// (logFinished): the client may already be sending its next command.
func (s *session) popLocked(code int) *finished {
	if len(s.queue) == 0 {
		return nil // an unsolicited reply, such as a server's 421
	}
	p := s.queue[0]
	s.queue = s.queue[:copy(s.queue, s.queue[1:])]
	s.signalLocked()
	var f *finished
	if p.verb.IsTransfer() {
		s.transfers--
		if p.flowing {
			s.flowing--
		}
		if p.mapping != nil {
			p.mapping.Release(nat.ReasonTransferDone)
			if p.mapping.Relay() {
				s.srv.stats.transfer("relay")
			} else {
				s.srv.stats.transfer("kernel")
			}
		}
		f = &finished{user: s.user, verb: p.verb, arg: p.arg, mapping: p.mapping, took: time.Since(p.sent), code: code}
	}
	if p.verb == ftp.VerbPROT && code/100 == 2 {
		s.serverProt = p.protP
	}
	if p.verb == ftp.VerbREIN && code >= 300 {
		// Refused (vsftpd answers 502): the server kept the
		// login, so pasvgate does too.
		s.loggedIn = p.loggedIn
	}
	s.flushLocked()
	if s.draining && s.transfers == 0 && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service closing: pasvgate is shutting down."))
		s.endLocked(endShutdown)
	}
	return f
}

// finished is a transfer whose final reply has been forwarded.
type finished struct {
	user, arg string
	verb      ftp.Verb
	mapping   *nat.Mapping // nil when none was made (transparent mode, a refusal)
	took      time.Duration
	code      int
}

// logFinished writes the one line per data transfer, which names its
// mapping: the pinhole (public address and port) and where it led. It
// takes nil.
func (s *session) logFinished(f *finished) {
	if f == nil {
		return
	}
	ctx := context.Background()
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	result := "ok"
	if f.code >= 400 {
		result = "failed"
	}
	// Typed attributes, addresses as strings: a netip.AddrPort as an any
	// goes through its MarshalText, and the JSON handler through
	// encoding/json, on every transfer.
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs, slog.String("user", f.user), slog.String("command", f.verb.String()), slog.String("file", f.arg))
	if m := f.mapping; m != nil {
		attrs = append(attrs, slog.String("mapping", m.ID), slog.String("public", m.Public.String()), slog.String("target", m.Target.String()))
	} else {
		attrs = append(attrs, slog.String("mapping", ""))
	}
	attrs = append(attrs, slog.Int64("duration_ms", f.took.Milliseconds()), slog.Int("code", f.code), slog.String("result", result))
	s.log.LogAttrs(ctx, slog.LevelInfo, "transfer", attrs...)
}

// preliminaryLocked records a 1xx reply to the command at the head: for a
// transfer, its data connection is open or being opened (see timeout).
func (s *session) preliminaryLocked() {
	if len(s.queue) == 0 || !s.queue[0].verb.IsTransfer() || s.queue[0].flowing {
		return
	}
	s.queue[0].flowing = true
	s.flowing++
}

// flushLocked sends the replies of pasvgate's own at the head of the
// queue, which wait for nothing but the end of the reply before them. A
// closing 421 among them (closeWith) is the last: it ends the session.
func (s *session) flushLocked() {
	for len(s.queue) > 0 && s.queue[0].local != nil && !s.ended {
		p := s.queue[0]
		s.queue = s.queue[:copy(s.queue, s.queue[1:])]
		s.writeClientLocked(p.local)
		if p.end != "" {
			s.endLocked(p.end)
		}
	}
}

// featHead opens a FEAT reply that the server gave on one line, when
// pasvgate adds its TLS features to it.
var featHead = []byte("211-Features:\r\n")

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
