package hostile

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Hostile inputs from the server side: the hostile server's scripts,
// each chosen by the selector line its client sends first.

func serverEntries() []entry {
	return []entry{
		{id: "S01", side: "server", input: "never greets, never answers", want: "421 at login-timeout, closed",
			script: func(s *sconn) { s.until("\x00never") },
			run:    closedWith("421")},
		{id: "S02", side: "server", input: "closes mid-line: \"220 Wel\" then EOF", want: "421, closed",
			script: func(s *sconn) { _ = s.send("220 Wel") },
			run:    closedWith("421")},
		{id: "S03", side: "server", input: "closes mid-reply: \"220-first\\r\\n\" then EOF", want: "closed",
			script: func(s *sconn) { _ = s.send("220-first\r\n") },
			run:    closedWith("")},
		{id: "S04", side: "server", input: "closes mid-227: \"227-first\\r\\n\" then EOF", want: "421, closed",
			script: afterPASV(func(s *sconn) { _ = s.send("227-first\r\n") }),
			run:    pasvThen(closedAfter("421"))},
		{id: "S05", side: "server", input: "endless multi-line 227 (32 MB)", want: "4xx, closed",
			inv: "RSS", script: afterPASV(endless("227-")), run: pasvThen(closedAfter("4"))},
		{id: "S06", side: "server", input: "endless multi-line 229 (32 MB)", want: "4xx, closed",
			inv: "RSS", script: afterVerb("EPSV", endless("229-")), run: cmdThen("EPSV", closedAfter("4"))},
		{id: "S07", side: "server", input: "16 MB reply line without a newline, then 200", want: "200",
			inv: "RSS", script: afterVerb("NOOP", func(s *sconn) {
				chunk := strings.Repeat("x", 64<<10)
				_ = s.send("200 ")
				for i := 0; i < 256; i++ {
					if s.send(chunk) != nil {
						return
					}
				}
				_ = s.send("\r\n200 OK.\r\n")
				s.serve()
			}), run: cmdThen("NOOP", wantReply("200 OK"))},
		{id: "S08", side: "server", input: "8 KB reply line, then 200", want: "200 (long line dropped)",
			script: afterVerb("NOOP", func(s *sconn) {
				_ = s.send("200 " + strings.Repeat("y", 8192) + "\r\n200 OK.\r\n")
				s.serve()
			}), run: cmdThen("NOOP", wantReply("200 OK"))},
		{id: "S09", side: "server", input: "227 split in 3 segments, 100ms apart", want: "227 public, data flows",
			script: afterPASV(func(s *sconn) {
				ln, port, err := s.passiveListener("split")
				if err != nil {
					return
				}
				defer ln.Close()
				r := pasv227(port)
				for _, part := range []string{r[:12], r[12:33], r[33:]} {
					_ = s.send(part)
					time.Sleep(100 * time.Millisecond)
				}
				s.serve()
			}), run: pasvData("split")},
		{id: "S10", side: "server", input: "227 sent twice for one PASV", want: "227 public, then 425",
			inv: "at most 1 mapping", script: afterPASV(func(s *sconn) {
				ln, port, err := s.passiveListener("dup")
				if err != nil {
					return
				}
				defer ln.Close()
				_ = s.send(pasv227(port) + pasv227(port+1))
				s.serve()
			}), run: duplicated227},
		{id: "S11", side: "server", input: "227 after the client has gone", want: "(client closed)",
			script: afterPASV(func(s *sconn) {
				time.Sleep(500 * time.Millisecond)
				_ = s.send(pasv227(31999))
				s.serve()
			}), run: late227},
		{id: "S12", side: "server", input: "227 with no command (unsolicited), then PASV", want: "425 or nothing; then 227 public",
			inv: "no mapping for the unsolicited", script: func(s *sconn) {
				if !s.login() {
					return
				}
				_ = s.send(pasv227(31998))
				if s.until("PASV") {
					_ = s.send(pasv227(31997))
				}
				s.serve()
			}, run: unsolicited227},
		{id: "S13", side: "server", input: "200 with no command, then PASV", want: "200, then 227 public",
			script: func(s *sconn) {
				if !s.login() {
					return
				}
				_ = s.send("200 Surprise.\r\n")
				if s.until("PASV") {
					_ = s.send(pasv227(31996))
				}
				s.serve()
			}, run: unsolicited200},
		{id: "S14", side: "server", input: "227 naming another host (192.0.2.11)", want: "425",
			inv: "no mapping", script: afterPASV(sendThenServe("227 Entering Passive Mode (192,0,2,11,0,22).\r\n")),
			run: pasvWants("425")},
		{id: "S15", side: "server", input: "227 with an octet of 300", want: "425",
			inv: "no mapping", script: afterPASV(sendThenServe("227 Entering Passive Mode (300,0,2,10,117,48).\r\n")),
			run: pasvWants("425")},
		{id: "S16", side: "server", input: "227 with a NUL in the address", want: "425",
			inv: "no mapping", script: afterPASV(sendThenServe("227 Entering Passive Mode (192,0,2,10,\x00117,48).\r\n")),
			run: pasvWants("425")},
		{id: "S17", side: "server", input: "227 with a bare CR before a second address", want: "227 public or 425",
			inv: "no mapping to 192.0.2.11", script: afterPASV(sendThenServe("227 Entering Passive Mode (192,0,2,11,0,22).\r227 Entering Passive Mode (192,0,2,10,117,48).\r\n")),
			run: bareCR227},
		{id: "S18", side: "server", input: "229 with port 70000", want: "425",
			inv: "no mapping", script: afterVerb("EPSV", sendThenServe("229 Entering Extended Passive Mode (|||70000|)\r\n")),
			run: cmdThen("EPSV", wantReply("425"))},
		{id: "S19", side: "server", input: "ABOR after Telnet Synch", want: "226",
			ref:    "the DM as urgent data at the server: TestSynchSentUrgent (proxy), TestAsyncAbort (test/interop, vsftpd async_abor_enable=YES)",
			script: aborScript, run: aborSynch},
		{id: "S20", side: "server", input: "server stalls: PASV never answered", want: "421 at idle-timeout, closed",
			script: afterPASV(func(s *sconn) { s.until("\x00never") }), run: pasvThen(closedAfter("421"))},
		{id: "S21", side: "server", input: "one-shot pinhole: second connection to the same public port", want: "refused",
			inv: "server accepted 1", script: afterPASV(func(s *sconn) {
				ln, port, err := s.passiveListener("oneshot")
				if err != nil {
					return
				}
				defer ln.Close()
				_ = s.send(pasv227(port))
				s.serve()
			}), run: oneShot},
		{id: "S22", side: "server", input: "one-shot pinhole, iptables backend (iptables-nft)", want: "refused",
			inv: "server accepted 1", fault: true, script: afterPASV(func(s *sconn) {
				ln, port, err := s.passiveListener("oneshot")
				if err != nil {
					return
				}
				defer ln.Close()
				_ = s.send(pasv227(port))
				s.serve()
			}), run: func(h *harness, e *env) (string, error) {
				h.startPasvgate(nil, withArgs(h.baseArgs(), "--backend", "iptables", "--iptables-path", "iptables-nft")...)
				return oneShot(h, e)
			}},
		{id: "S23", side: "server", input: "unsolicited multi-line 211 while pasvgate refuses LPSV", want: "211, then 502, then 200",
			script: func(s *sconn) {
				if !s.login() {
					return
				}
				_ = s.send("211-Unsolicited news.\r\n")
				if s.until("NOOP") {
					_ = s.send("211 End.\r\n200 OK.\r\n")
				}
				s.serve()
			}, run: ownReplyDuringUnsolicited},
	}
}

// ownReplyDuringUnsolicited sends LPSV (which pasvgate answers itself)
// and NOOP while the server is in the middle of a multi-line reply nobody
// asked for: pasvgate's 502 must not be lost.
func ownReplyDuringUnsolicited(h *harness, e *env) (string, error) {
	c, err := h.scriptLogin(e)
	if err != nil {
		return "", err
	}
	defer c.close()
	if l, err := c.line(); err != nil || !strings.HasPrefix(l, "211-") {
		return l, fmt.Errorf("the unsolicited reply's first line: %q, %v", l, err)
	}
	if err := c.send("LPSV\r\nNOOP\r\n"); err != nil {
		return "", err
	}
	var got []string
	for i := 0; i < 3; i++ {
		r, err := c.replyWithin(3 * time.Second)
		if err != nil {
			break
		}
		got = append(got, r[:3])
	}
	g := strings.Join(got, ", ")
	if g != "211, 502, 200" {
		return g, fmt.Errorf("replies %s, want 211, 502, 200", g)
	}
	return g, nil
}

// dialScript dials from the entry's address and sends the selector of its
// script, before any greeting.
func (h *harness) dialScript(e *env) (*ctl, error) {
	c, err := h.dialFrom(e.from)
	if err != nil {
		return nil, err
	}
	if err := c.send(selectorPrefix + e.name + "\r\n"); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// scriptLogin dials the entry's script and logs in through it.
func (h *harness) scriptLogin(e *env) (*ctl, error) {
	c, err := h.dialScript(e)
	if err != nil {
		return nil, err
	}
	for _, want := range []string{"220", "331"} {
		if r, err := c.reply(); err != nil || !strings.HasPrefix(r, want) {
			c.close()
			return nil, fmt.Errorf("login through the script: %q, %v; want %s", r, err, want)
		}
	}
	if _, err := c.expect("PASS x", "230"); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// afterVerb logs in, answers ordinary commands until verb, then runs f.
func afterVerb(verb string, f func(s *sconn)) script {
	return func(s *sconn) {
		if s.login() && s.until(verb) {
			f(s)
		}
	}
}

func afterPASV(f func(s *sconn)) script { return afterVerb("PASV", f) }

// sendThenServe sends a reply, then answers ordinary commands.
func sendThenServe(reply string) func(s *sconn) {
	return func(s *sconn) {
		_ = s.send(reply)
		s.serve()
	}
}

// endless sends lines of a multi-line reply that never ends, 32 MB at
// most, until pasvgate stops reading.
func endless(prefix string) func(s *sconn) {
	return func(s *sconn) {
		line := prefix + strings.Repeat("z", 1000) + "\r\n"
		var b strings.Builder
		for b.Len() < 64<<10 {
			b.WriteString(line)
		}
		chunk := b.String()
		for sent := 0; sent < 32<<20; sent += len(chunk) {
			if s.send(chunk) != nil {
				return
			}
		}
		s.serve()
	}
}

// closedWith dials the script without logging in and wants the
// connection closed, with a last reply starting with code ("" for any).
func closedWith(code string) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		c, err := h.dialScript(e)
		if err != nil {
			return "", err
		}
		defer c.close()
		return closedAfter(code)(c)
	}
}

// closedAfter wants the connection closed within the idle timeout and a
// margin, its last reply starting with code.
func closedAfter(code string) func(c *ctl) (string, error) {
	return func(c *ctl) (string, error) {
		t0 := time.Now()
		last, err := c.untilClosed(idleTimeout + replyGrace + 3*time.Second)
		if err != nil {
			return last, err
		}
		got := "closed"
		if last != "" {
			got = fmt.Sprintf("%s, closed after %.1fs", last[:3], time.Since(t0).Seconds())
		}
		if !strings.HasPrefix(last, code) {
			return got, fmt.Errorf("closed with last reply %q, want %s", last, code)
		}
		return got, nil
	}
}

// cmdThen logs in through the script, sends cmd, and hands over.
func cmdThen(cmd string, then func(c *ctl) (string, error)) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		c, err := h.scriptLogin(e)
		if err != nil {
			return "", err
		}
		defer c.close()
		if err := c.send(cmd + "\r\n"); err != nil {
			return "", err
		}
		return then(c)
	}
}

func pasvThen(then func(c *ctl) (string, error)) func(*harness, *env) (string, error) {
	return cmdThen("PASV", then)
}

// wantReply wants the next reply to start with want.
func wantReply(want string) func(c *ctl) (string, error) {
	return func(c *ctl) (string, error) {
		r, err := c.replyWithin(10 * time.Second)
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(r, want) {
			return r, fmt.Errorf("got %q, want %s", r, want)
		}
		return r, nil
	}
}

// pasvWants asks for PASV and wants code, with no mapping for the
// client at any time.
func pasvWants(code string) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		w := h.watchRules(e.from)
		r, err := pasvThen(wantReply(code))(h, e)
		if peak := w.end(); peak > 0 && err == nil {
			err = fmt.Errorf("%d mapping(s) installed", peak)
		}
		return r, err
	}
}

// pasvData asks for PASV, wants a public 227, and checks the data
// connection reaches the script's listener.
func pasvData(key string) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		c, err := h.scriptLogin(e)
		if err != nil {
			return "", err
		}
		defer c.close()
		r, err := c.expect("PASV", "227")
		if err != nil {
			return r, err
		}
		if err := isPublic227(r); err != nil {
			return r, err
		}
		ap, _ := parse227(r)
		if err := h.dataHello(e.from, ap); err != nil {
			return r, err
		}
		if got := h.hs.noted(key); got != "1" {
			return r, fmt.Errorf("the server accepted %q data connections, want 1", got)
		}
		return "227 public, data ok", nil
	}
}

// dataHello connects to ap and reads the script listener's "hello".
func (h *harness) dataHello(from string, ap netip.AddrPort) error {
	dc, err := h.dialData(from, ap, 3*time.Second)
	if err != nil {
		return fmt.Errorf("data connection to %v: %w", ap, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 6)
	if _, err := dc.Read(b); err != nil || string(b) != "hello\n" {
		return fmt.Errorf("data connection to %v: read %q, %v", ap, b, err)
	}
	return nil
}

func duplicated227(h *harness, e *env) (string, error) {
	w := h.watchRules(e.from)
	c, err := h.scriptLogin(e)
	if err != nil {
		w.end()
		return "", err
	}
	defer c.close()
	r1, err := c.expect("PASV", "227")
	if err != nil {
		w.end()
		return r1, err
	}
	r2, err := c.replyWithin(5 * time.Second)
	got := r1[:3] + ", " + r2
	peak := w.end()
	switch {
	case err != nil:
		return got, fmt.Errorf("the second 227: %w", err)
	case isPublic227(r1) != nil:
		return got, isPublic227(r1)
	case !strings.HasPrefix(r2, "425"):
		return got, fmt.Errorf("the duplicate got the client %q, want 425", r2)
	case peak > 1:
		return got, fmt.Errorf("%d mappings at once", peak)
	}
	if _, err := c.expect("NOOP", "200"); err != nil {
		return got, fmt.Errorf("after the duplicate: %w", err)
	}
	return got, nil
}

func late227(h *harness, e *env) (string, error) {
	c, err := h.scriptLogin(e)
	if err != nil {
		return "", err
	}
	if err := c.send("PASV\r\n"); err != nil {
		return "", err
	}
	time.Sleep(50 * time.Millisecond)
	c.close()
	// The 227 arrives 500ms after the PASV; noRules then checks nothing
	// stayed.
	time.Sleep(time.Second)
	return "(client closed)", nil
}

func unsolicited227(h *harness, e *env) (string, error) {
	w := h.watchRules(e.from)
	c, err := h.scriptLogin(e)
	if err != nil {
		w.end()
		return "", err
	}
	defer c.close()
	time.Sleep(300 * time.Millisecond) // the unsolicited 227 arrives
	peak := w.end()
	if err := c.send("PASV\r\n"); err != nil {
		return "", err
	}
	var got []string
	for i := 0; i < 3; i++ {
		r, err := c.replyWithin(5 * time.Second)
		if err != nil {
			return strings.Join(got, ", "), err
		}
		got = append(got, r[:3])
		if strings.HasPrefix(r, "227") {
			if err := isPublic227(r); err != nil {
				return strings.Join(got, ", "), err
			}
			break
		}
	}
	g := strings.Join(got, ", ")
	if peak > 0 {
		return g, fmt.Errorf("the unsolicited 227 installed %d mapping(s)", peak)
	}
	if got[len(got)-1] != "227" {
		return g, fmt.Errorf("PASV got no 227")
	}
	return g, nil
}

func unsolicited200(h *harness, e *env) (string, error) {
	c, err := h.scriptLogin(e)
	if err != nil {
		return "", err
	}
	defer c.close()
	r1, err := c.replyWithin(5 * time.Second)
	if err != nil || !strings.HasPrefix(r1, "200") {
		return r1, fmt.Errorf("the unsolicited 200: %q, %v", r1, err)
	}
	r2, err := c.expect("PASV", "227")
	if err != nil {
		return r1[:3] + ", " + r2, err
	}
	return "200, 227 public", isPublic227(r2)
}

func bareCR227(h *harness, e *env) (string, error) {
	w := h.watchRules(neighbour)
	r, err := pasvThen(func(c *ctl) (string, error) { return c.replyWithin(5 * time.Second) })(h, e)
	peak := w.end()
	if err != nil {
		return r, err
	}
	if peak > 0 {
		return r, fmt.Errorf("a mapping to %s was installed", neighbour)
	}
	if !strings.HasPrefix(r, "425") {
		if err := isPublic227(r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// aborScript answers ABOR with 226 and notes whether the DM byte came as
// TCP urgent data (read with MSG_OOB) or inline.
func aborScript(s *sconn) {
	if !s.login() {
		return
	}
	for i := 0; i < 100; i++ {
		l, err := s.line()
		if err != nil {
			return
		}
		if !strings.HasSuffix(l, "ABOR") {
			if !s.answer(strings.Fields(l + " x")[0]) {
				return
			}
			continue
		}
		urgent := "no"
		if oob(s.c) == 0xf2 {
			urgent = "yes"
		}
		if strings.Contains(l, "\xf2") {
			urgent += ", DM inline"
		}
		s.hs.note("urgent", urgent)
		_ = s.send("226 Abort successful.\r\n")
		s.serve()
		return
	}
}

// oob reads one byte of urgent data, or returns -1.
func oob(c net.Conn) int {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1
	}
	b := []byte{0}
	n := -1
	_ = rc.Read(func(fd uintptr) bool {
		for i := 0; i < 50; i++ {
			m, _, err := syscall.Recvfrom(int(fd), b, syscall.MSG_OOB|syscall.MSG_DONTWAIT)
			if err == nil && m == 1 {
				n = int(b[0])
				return true
			}
			time.Sleep(10 * time.Millisecond)
		}
		return true
	})
	return n
}

func aborSynch(h *harness, e *env) (string, error) {
	c, err := h.scriptLogin(e)
	if err != nil {
		return "", err
	}
	defer c.close()
	if err := sendSynch(c.c); err != nil {
		return "", err
	}
	r, err := c.replyWithinCmd("ABOR", 5*time.Second)
	if err != nil || !strings.HasPrefix(r, "226") {
		return r, fmt.Errorf("ABOR: %q, %v", r, err)
	}
	// Whether the DM came as urgent data this script cannot tell reliably:
	// once its line reader has read past the urgent mark, the kernel
	// forgets the urgent byte (tcp_recvmsg clears urg_data), so a recv
	// with MSG_OOB after the ABOR line finds nothing. The tests named in
	// the entry's ref read it before that: a fake server without
	// SO_OOBINLINE, and vsftpd with async_abor_enable=YES, which acts on
	// SIGURG.
	return r[:3] + ", urgent seen by this script: " + h.hs.noted("urgent"), nil
}

// oneShot gets a 227, makes its data connection and keeps it, then
// connects again to the same public port: the second must not reach the
// server.
func oneShot(h *harness, e *env) (string, error) {
	c, err := h.scriptLogin(e)
	if err != nil {
		return "", err
	}
	defer c.close()
	r, err := c.expect("PASV", "227")
	if err != nil {
		return r, err
	}
	if err := isPublic227(r); err != nil {
		return r, err
	}
	ap, _ := parse227(r)
	dc, err := h.dialData(e.from, ap, 3*time.Second)
	if err != nil {
		return r, fmt.Errorf("first data connection: %w", err)
	}
	defer dc.Close()
	b := make([]byte, 6)
	_ = dc.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := dc.Read(b); err != nil {
		return r, fmt.Errorf("first data connection: %w", err)
	}
	second := "refused"
	if err := h.dataHello(e.from, ap); err == nil {
		second = "connected"
	}
	got := "first ok, second " + second
	if n := h.hs.noted("oneshot"); n != "1" {
		return got, fmt.Errorf("the server accepted %s connections on its passive port, want 1", n)
	}
	if second != "refused" {
		return got, fmt.Errorf("the second connection got through")
	}
	return got, nil
}
