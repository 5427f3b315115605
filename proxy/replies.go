package proxy

import (
	"bytes"
	"context"
	"errors"
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
