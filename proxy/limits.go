package proxy

import (
	"context"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// maxPending bounds the replies a client may have outstanding: those the
// server owes for its commands and pasvgate's own queued behind them (its
// refusals). Real clients pipeline a handful at most; a client that sends
// thousands without reading replies is disconnected rather than allowed to
// grow the queue.
const maxPending = 64

// maxPassiveLines bounds the lines of a 227/229 reply, which pasvgate holds
// back whole until its last line (its bytes are bounded by one --max-line).
// Servers send one line; a few more is generous.
const maxPassiveLines = 8

// replyGrace bounds how long a session that pasvgate ends with its own
// 421 (idle or login timeout, an endless line) waits for the replies the
// server still owes, so that the 421 comes after them (closeWith). A
// server answers in milliseconds; one that has not in this long is not
// waited for.
const replyGrace = 5 * time.Second

// maxLine is the longest control line, in either direction, that the
// session reads (--max-line).
func (s *session) maxLine() int {
	if m := s.srv.settings().MaxLine; m > 0 {
		return m
	}
	return ftp.DefaultMaxLine
}

// lineTooLong answers a command line that has passed --max-line, as soon
// as it has: 500, before the rest of it arrives. The Reader drops the
// line, and the session goes on if it ends within another --max-line
// bytes: a client with a path too long for the limit has its write in
// flight already, and is owed a reply and its session, as servers give.
func (s *session) lineTooLong() {
	s.srv.stats.refuse("line-too-long")
	s.log.Warn("client line too long, dropped", "max", s.maxLine())
	s.reply(ftp.CodeSyntaxError, "Command line too long.")
}

// lineEndless ends the session of a client whose over-long line has gone
// on for more than twice --max-line: that is a flood, not a command, and
// reading it to its end would let the client hold its session without
// ever sending one. It returns the reason.
func (s *session) lineEndless() string {
	s.srv.stats.refuse("line-endless")
	s.log.Warn("session closed: client line goes on past twice the limit", "max", s.maxLine())
	return s.closeWith("Command line too long: closing control connection.", endLineEndless)
}

// passiveTooLong ends the session of a server whose 227/229 reply has
// passed maxPassiveLines lines or --max-line bytes: pasvgate holds such a
// reply whole, and a server that never ends it would grow the heap
// without bound. The client is told 421, since its session ends. It
// returns the reason.
func (s *session) passiveTooLong(lines, bytes int) string {
	s.srv.stats.refuse("passive-reply-too-long")
	s.log.Warn("session closed: the server's 227/229 reply is too long",
		"lines", lines, "bytes", bytes, "max_lines", maxPassiveLines, "max_bytes", s.maxLine())
	s.say421AndEnd("Passive reply from the server too long: closing control connection.", endReplyTooLong)
	return endReplyTooLong
}

// queueFullLocked ends the session of a client with maxPending replies
// outstanding (the server's and pasvgate's own) and one more to come: it
// has stopped reading its replies, or sends commands (refused or not)
// faster than the server answers. Either way the queue must not grow. The
// 421 goes out at once, out of turn, as the session's last word, unless it
// would land inside a multi-line reply.
func (s *session) queueFullLocked() {
	if s.ended {
		return
	}
	s.srv.stats.refuse("too-many-pending")
	s.log.Warn("session closed: too many commands without reading their replies", "max", maxPending)
	if !s.midReply {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Too many commands without reading replies."))
	}
	s.endLocked(endTooMany)
}

// readDeadline is when the client's next command must have arrived: the
// idle timeout after its last line, or the login deadline (loginBy) if the
// session has not logged in and that comes first. The login window runs
// from the session's start, or from the REIN that logged it out.
func (s *session) readDeadline(st *Settings, lastLine time.Time) (deadline, loginBy time.Time) {
	deadline = lastLine.Add(durationOr(st.IdleTimeout, 10*time.Minute))
	s.mu.Lock()
	loggedIn, loginFrom := s.loggedIn, s.loginFrom
	s.mu.Unlock()
	loginBy = loginFrom.Add(st.LoginTimeout)
	if !loggedIn && st.LoginTimeout > 0 && loginBy.Before(deadline) {
		deadline = loginBy
	}
	return deadline, loginBy
}

// timeout decides what a read deadline that passed means. It returns a
// reason to end the session (the client has been told 421), or "" to go on
// reading; busy says a transfer is in progress, which counts as activity.
func (s *session) timeout(st *Settings, lastLine, loginBy time.Time) (reason string, busy bool) {
	s.mu.Lock()
	busy, loggedIn := s.flowing > 0, s.loggedIn
	s.mu.Unlock()
	if !loggedIn && st.LoginTimeout > 0 && !time.Now().Before(loginBy) {
		s.srv.stats.refuse("login-timeout")
		s.log.Warn("session closed: no login in time", "login_timeout", st.LoginTimeout)
		return s.closeWith("Login timeout: closing control connection.", endLogin), false
	}
	if busy {
		// A long transfer keeps the control channel quiet; that is not
		// idleness. A transfer counts from its preliminary reply (150 or
		// 125), the one sign of its data connection the proxy has (the
		// kernel forwards the data): in passive mode the server sends it
		// once the client has connected, or as it waits for the client
		// to; in active mode as it connects. Before it, a transfer
		// command is only a command awaiting its reply, and a client that
		// sends one and never connects, or a server that never answers,
		// is idle.
		return "", true
	}
	if time.Since(lastLine) < durationOr(st.IdleTimeout, 10*time.Minute) {
		// The login deadline passed after the client logged in.
		return "", false
	}
	s.srv.stats.refuse("idle-timeout")
	return s.closeWith("Idle timeout: closing control connection.", endIdle), false
}

// enqueue records the reply a forwarded command is owed, or returns
// endTooMany (the client has been told 421) when the client has maxPending
// replies outstanding already.
func (s *session) enqueue(p pending) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) >= maxPending {
		s.queueFullLocked()
		return endTooMany
	}
	if p.verb.IsTransfer() {
		s.transfers++
	}
	s.queue = append(s.queue, p)
	return ""
}

// isLoggedIn reports whether the server has accepted a login (a 230 was
// forwarded) since the session began or since the last REIN.
func (s *session) isLoggedIn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loggedIn
}

// awaitLogin lets the replies to login commands still in flight (USER,
// PASS, ACCT) arrive before a data command is judged on the login, so that
// a client that pipelines PASV behind its PASS is not refused for being
// quick; and the reply to a PROT, which settles the server's side of the
// data connections (a PORT pipelined behind PROT P must be relayed with
// the server's side protected). It waits at most the write timeout; a
// server that takes longer to answer a login leaves the session not
// logged in.
func (s *session) awaitLogin(ctx context.Context) {
	var deadline <-chan time.Time
	for {
		s.mu.Lock()
		waiting := !s.ended && ((!s.loggedIn && s.loginPendingLocked()) || s.protPendingLocked())
		s.mu.Unlock()
		if !waiting {
			return
		}
		if deadline == nil {
			t := time.NewTimer(durationOr(s.srv.settings().WriteTimeout, 30*time.Second))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-s.popped:
		case <-deadline:
			return
		case <-ctx.Done():
			return
		}
	}
}

// loginPendingLocked reports whether a login command awaits its reply.
func (s *session) loginPendingLocked() bool {
	for _, p := range s.queue {
		switch p.verb {
		case ftp.VerbUSER, ftp.VerbPASS, ftp.VerbACCT:
			return true
		}
	}
	return false
}

// protPendingLocked reports whether a PROT passed on to the server awaits
// its reply.
func (s *session) protPendingLocked() bool {
	for _, p := range s.queue {
		if p.verb == ftp.VerbPROT {
			return true
		}
	}
	return false
}

// transferHoldsMapping reports whether a transfer command holds a data
// mapping until its final reply.
func (s *session) transferHoldsMapping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.queue {
		if p.mapping != nil {
			return true
		}
	}
	return false
}
