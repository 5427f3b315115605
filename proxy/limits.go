package proxy

import (
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// maxPending bounds the commands a client may have outstanding at the server.
// Real clients pipeline a handful at most; a client that sends thousands
// without reading replies is refused rather than allowed to grow the queue.
const maxPending = 64

// maxLine is the longest control line, in either direction, that the
// session reads (--max-line).
func (s *session) maxLine() int {
	if m := s.srv.settings().MaxLine; m > 0 {
		return m
	}
	return ftp.DefaultMaxLine
}

// readDeadline is when the client's next command must have arrived: the
// idle timeout after its last line, or the login deadline (loginBy) if the
// session has not logged in and that comes first.
func (s *session) readDeadline(st *Settings, lastLine time.Time) (deadline, loginBy time.Time) {
	deadline = lastLine.Add(durationOr(st.IdleTimeout, 10*time.Minute))
	s.mu.Lock()
	loggedIn := s.loggedIn
	s.mu.Unlock()
	loginBy = s.start.Add(st.LoginTimeout)
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
	busy, loggedIn := s.transfers > 0, s.loggedIn
	s.mu.Unlock()
	if !loggedIn && st.LoginTimeout > 0 && !time.Now().Before(loginBy) {
		s.srv.stats.refuse("login-timeout")
		s.log.Warn("session closed: no login in time", "login_timeout", st.LoginTimeout)
		s.reply(ftp.CodeServiceUnavailable, "Login timeout: closing control connection.")
		return endLogin, false
	}
	if busy {
		// A long transfer keeps the control channel quiet; that is not
		// idleness.
		return "", true
	}
	if time.Since(lastLine) < durationOr(st.IdleTimeout, 10*time.Minute) {
		// The login deadline passed after the client logged in.
		return "", false
	}
	s.srv.stats.refuse("idle-timeout")
	s.reply(ftp.CodeServiceUnavailable, "Idle timeout: closing control connection.")
	return endIdle, false
}

// enqueue records the reply a forwarded command is owed, or returns
// endTooMany (the client has been told 421) when the client has maxPending
// commands outstanding already.
func (s *session) enqueue(p pending) string {
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
	return ""
}
