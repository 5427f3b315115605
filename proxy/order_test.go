package proxy_test

import (
	"bufio"
	"io"
	"strings"
	"testing"
	"time"
)

// scripted is a fake server's answers for the tests here: USER, PASS and
// REIN as a server that implements REIN answers them; SLOW after a while
// (longer than the tests' timeouts); HANG never; NOTICE with its reply and
// then a multi-line notice that answers no command, which ends a while
// later; anything else 200.
func scripted(cmd string, w *bufio.Writer) {
	switch {
	case strings.HasPrefix(cmd, "USER"):
		w.WriteString("331 password\r\n")
	case strings.HasPrefix(cmd, "PASS"):
		w.WriteString("230 in\r\n")
	case strings.HasPrefix(cmd, "REIN"):
		w.WriteString("220 ready for a new user\r\n")
	case strings.HasPrefix(cmd, "SLOW"):
		time.Sleep(600 * time.Millisecond)
		w.WriteString("200 slow\r\n")
	case strings.HasPrefix(cmd, "HANG"):
	case strings.HasPrefix(cmd, "NOTICE"):
		w.WriteString("200 ok\r\n211-a notice that answers no command\r\n")
		w.Flush()
		time.Sleep(300 * time.Millisecond)
		w.WriteString("211 end of notice\r\n")
	default:
		w.WriteString("200 ok\r\n")
	}
}

// expectEnd asserts the session is over: the client reads end of file.
func (c *conn) expectEnd() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := c.r.ReadString('\n'); err != io.EOF && !isReset(err) {
		c.t.Fatalf("session still open after its 421: read %q, %v", line, err)
	}
}

// TestREINAfterLoginWindow: REIN logs a session out, and the login
// timeout ends sessions not logged in (issue 12, low items). A REIN sent
// after the session's own login window has passed gets its reply, and
// opens a new window from the REIN, which ends with 421 if the client
// does not log in again; one that does keeps its session. A REIN the
// server refuses (vsftpd answers 502) leaves the login as it was. Before
// the fix each of these sessions ended at the REIN with no reply at all.
func TestREINAfterLoginWindow(t *testing.T) {
	const window = 300 * time.Millisecond
	h := newHarness(t, options{upstream: fakeUpstream(t, scripted), login: window})

	t.Run("no new login", func(t *testing.T) {
		c := h.dial(t)
		c.login()
		time.Sleep(window + 100*time.Millisecond)
		if got := c.cmd("REIN"); !strings.HasPrefix(got, "220 ") {
			t.Fatalf("REIN after the login window: %q, want the server's 220", got)
		}
		if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200 ") {
			t.Fatalf("NOOP in the new login window: %q", got)
		}
		if got := c.reply(); !strings.HasPrefix(got, "421 ") || !strings.Contains(got, "Login timeout") {
			t.Fatalf("no login after REIN: %q, want 421 Login timeout", got)
		}
		c.expectEnd()
	})
	t.Run("logs in again", func(t *testing.T) {
		c := h.dial(t)
		c.login()
		time.Sleep(window + 100*time.Millisecond)
		if got := c.cmd("REIN"); !strings.HasPrefix(got, "220 ") {
			t.Fatalf("REIN after the login window: %q, want the server's 220", got)
		}
		c.login()
		time.Sleep(window + 100*time.Millisecond)
		if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200 ") {
			t.Fatalf("NOOP logged in again, after the new window: %q", got)
		}
	})
	t.Run("REIN refused", func(t *testing.T) {
		h := newHarness(t, options{login: window}) // the built-in server answers REIN 502
		c := h.dial(t)
		c.login()
		time.Sleep(window + 100*time.Millisecond)
		if got := c.cmd("REIN"); !strings.HasPrefix(got, "502 ") {
			t.Fatalf("REIN to a server without it: %q, want its 502", got)
		}
		time.Sleep(window + 100*time.Millisecond)
		if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200 ") {
			t.Fatalf("NOOP still logged in after a refused REIN: %q", got)
		}
	})
}

// TestOwnReplyAfterUnsolicitedMultiline: a reply of pasvgate's own that
// falls due while the server sends a multi-line reply that answers no
// command waits for its end, and then reaches the client, before the
// replies to later commands (issue 12, low items). Before the fix it was
// taken for that reply's command and lost.
func TestOwnReplyAfterUnsolicitedMultiline(t *testing.T) {
	h := newHarness(t, options{upstream: fakeUpstream(t, scripted)})
	c := h.dial(t)
	c.login()
	if got := c.cmd("NOTICE"); !strings.HasPrefix(got, "200 ") {
		t.Fatalf("NOTICE: %q", got)
	}
	if line, err := c.r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "211-") {
		t.Fatalf("the notice's first line: %q, %v", line, err)
	}
	// Mid-notice: LPSV is pasvgate's to refuse, NOOP the server's.
	c.send("LPSV")
	c.send("NOOP")
	_ = c.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var got []string
	for len(got) < 3 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("after the notice's first line the client got %q, then %v", got, err)
		}
		got = append(got, strings.TrimRight(line, "\r\n"))
	}
	if !strings.HasPrefix(got[0], "211 ") || !strings.HasPrefix(got[1], "502 ") || !strings.HasPrefix(got[2], "200 ") {
		t.Fatalf("after the notice's first line the client got %q, want the notice's end, 502 for LPSV, 200 for NOOP", got)
	}
}

// TestClosing421InTurn: when the idle or login timeout ends a session
// while the server still owes a reply, the client gets that reply first
// and then the 421; when the server never answers, the 421 still comes,
// a few seconds later (issue 12, low items). Before the fix the 421 was
// queued behind the owed reply and lost when the session ended: the
// client read end of file with no reply.
func TestClosing421InTurn(t *testing.T) {
	up := fakeUpstream(t, scripted)
	for _, tc := range []struct {
		name  string
		o     options
		login bool
		cmd   string
		owed  string // the owed reply's prefix, "" for none
		want  string
	}{
		{"idle, slow server", options{upstream: up, idle: 300 * time.Millisecond}, true, "SLOW", "200 slow", "Idle timeout"},
		{"login, slow server", options{upstream: up, login: 300 * time.Millisecond}, false, "SLOW", "200 slow", "Login timeout"},
		{"idle, server never answers", options{upstream: up, idle: 300 * time.Millisecond}, true, "HANG", "", "Idle timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.o)
			c := h.dial(t)
			if tc.login {
				c.login()
			}
			c.send(tc.cmd)
			if tc.owed != "" {
				if got := c.reply(); !strings.HasPrefix(got, tc.owed) {
					t.Fatalf("%s: %q, want %q", tc.cmd, got, tc.owed)
				}
			}
			if got := c.reply(); !strings.HasPrefix(got, "421 ") || !strings.Contains(got, tc.want) {
				t.Fatalf("then %q, want 421 %s", got, tc.want)
			}
			c.expectEnd()
		})
	}
}
