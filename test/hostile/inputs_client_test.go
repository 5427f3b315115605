package hostile

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Hostile inputs from the client side, against a real server (test/ftpd,
// reached through the hostile server's splice, which records what the
// server received).

// bouncePORT and bounceEPRT aim a server at a host other than the client:
// smuggled past pasvgate they would be an FTP bounce.
const (
	bouncePORT = "192,0,2,99,0,22"
	bounceEPRT = "|1|192.0.2.99|22|"
)

func clientEntries() []entry {
	return []entry{
		{id: "C01", side: "client", input: "PORT<TAB>" + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("PORT\t"+bouncePORT, "500", "192,0,2,99")},
		{id: "C02", side: "client", input: "EPRT<TAB>" + bounceEPRT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("EPRT\t"+bounceEPRT, "500", "192.0.2.99")},
		{id: "C03", side: "client", input: "port<SP><SP>" + bouncePORT + " (case, spaces)", want: "500",
			inv: "server never gets it", run: refusedAfterLogin("port  "+bouncePORT, "500", "192,0,2,99")},
		{id: "C04", side: "client", input: "PoRt<VT>" + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("PoRt\v"+bouncePORT, "500", "192,0,2,99")},
		{id: "C05", side: "client", input: "P<IAC NOP>ORT " + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("P\xff\xf1ORT "+bouncePORT, "500", "192,0,2,99")},
		{id: "C06", side: "client", input: "<SP>PORT " + bouncePORT + " (no verb)", want: "500",
			inv: "server never gets it", run: refusedAfterLogin(" PORT "+bouncePORT, "500", "192,0,2,99")},
		{id: "C07", side: "client", input: "NOOP<NUL>PORT " + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("NOOP\x00PORT "+bouncePORT, "500", "192,0,2,99")},
		{id: "C08", side: "client", input: "NOOP<CR>PORT " + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("NOOP\rPORT "+bouncePORT, "500", "192,0,2,99")},
		{id: "C09", side: "client", input: "<IAC WILL ECHO>PORT " + bouncePORT, want: "500",
			inv: "server never gets it", run: refusedAfterLogin("\xff\xfb\x01PORT "+bouncePORT, "500", "192,0,2,99")},
		{id: "C10", side: "client", input: "PORT own address, port 21", want: "500",
			inv: "server never gets it", run: func(h *harness, e *env) (string, error) {
				return refusedAfterLogin("PORT "+commas(e.from)+",0,21", "500", commas(e.from)+",0,21")(h, e)
			}},
		{id: "C11", side: "client", input: "PORT another client's address", want: "500",
			inv: "server never gets it", run: refusedAfterLogin("PORT 203,0,113,11,78,32", "500", "203,0,113,11")},
		{id: "C12", side: "client", input: "EPRT |2|2001:db8:1::10|20000| over IPv4", want: "522",
			run: refusedAfterLogin("EPRT |2|2001:db8:1::10|20000|", "522", "2001:db8")},
		{id: "C13", side: "client", input: "EPSV ALL, then PORT own address", want: "503",
			run: func(h *harness, e *env) (string, error) {
				c, err := loggedIn(h, e)
				if err != nil {
					return "", err
				}
				defer c.close()
				if _, err := c.cmd("EPSV ALL"); err != nil {
					return "", err
				}
				return c.expect("PORT "+commas(e.from)+",78,32", "503")
			}},
		{id: "C14", side: "client", input: "AUTH TLS", want: "534",
			run: refusedAfterLogin("AUTH TLS", "534", "AUTH")},
		{id: "C15", side: "client", input: "PORT own address before login", want: "530",
			inv: "no mapping at any time", run: beforeLogin(func(from string) string { return "PORT " + commas(from) + ",78,32" })},
		{id: "C16", side: "client", input: "EPRT own address before login", want: "530",
			inv: "no mapping at any time", run: beforeLogin(func(from string) string { return "EPRT |1|" + from + "|20000|" })},
		{id: "C17", side: "client", input: "PASV before login", want: "530",
			inv: "no mapping at any time", run: beforeLogin(func(string) string { return "PASV" })},
		{id: "C18", side: "client", input: "500 PORTs before login, 20 pipelined at a time", want: "530 x500",
			inv: "no mapping at any time", run: portsBeforeLogin},
		{id: "C19", side: "client", input: "31 pipelined PORT+RETR after login", want: "200 for the first PORT",
			inv: "at most 1 mapping of the session live", run: pipelinedPortRetr},
		{id: "C20", side: "client", input: fmt.Sprintf("PASV from %d sessions of one address", mappingsPerIP+1),
			want: fmt.Sprintf("227 x%d, then 425", mappingsPerIP), inv: "--max-mappings-per-ip", run: perIPMappings},
		{id: "C21", side: "client", input: "one address opens default max-sessions-per-ip + 1", want: "421 for the extra",
			inv: "non-zero defaults (also --max-sessions)", run: perIPSessionsDefault},
		{id: "C22", side: "client", input: "PASV, RETR, no data connection, then silence", want: "421 at idle-timeout, closed",
			run: idlePendingTransfer},
		{id: "C23", side: "client", input: "5000 bytes without a newline", want: "500 at once",
			run: longLine(5000, false)},
		{id: "C24", side: "client", input: "1 MiB without a newline", want: "500, closed",
			run: longLine(1<<20, true)},
		{id: "C25", side: "client", input: "2 MB of LPSV lines, the server not yet greeting, replies never read", want: "421, closed",
			inv: "RSS", script: func(s *sconn) { s.until("\x00never") }, run: flood("LPSV\r\n", 2<<20, false)},
		{id: "C26", side: "client", input: "4 MB of NOOP lines after login, replies never read", want: "closed (421 if readable)",
			inv: "RSS", run: flood("NOOP\r\n", 4<<20, true)},
		{id: "C27", side: "client", input: "slowloris before login: 20 sessions, a byte each 400ms", want: "421 at login-timeout, closed",
			run: slowloris},
		{id: "C28", side: "client", input: "REIN after the login window", want: "a reply (not a silent close)",
			run: reinAfterWindow},
		{id: "C29", side: "client", input: "IAC IP, IAC DM (urgent), ABOR", want: "ABOR answered",
			ref: "S19 checks the server gets the DM as urgent data", run: aborSynchClient},
	}
}

// commas writes an IPv4 address as PORT does.
func commas(a string) string { return strings.ReplaceAll(a, ".", ",") }

// loggedIn dials from the entry's address and logs in.
func loggedIn(h *harness, e *env) (*ctl, error) {
	c, err := h.dialFrom(e.from)
	if err != nil {
		return nil, err
	}
	if err := c.login(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// refusedAfterLogin sends line after a login, wants code, and checks that
// the real server never received never.
func refusedAfterLogin(line, code, never string) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		c, err := loggedIn(h, e)
		if err != nil {
			return "", err
		}
		defer c.close()
		r, err := c.expect(line, code)
		if err != nil {
			return r, err
		}
		// The session goes on.
		if _, err := c.expect("NOOP", "200"); err != nil {
			return r, fmt.Errorf("after the refusal: %w", err)
		}
		if h.hs.serverGot(never) {
			return r, fmt.Errorf("the server received %q", never)
		}
		return r, nil
	}
}

// ruleWatch samples `rules list` for the mappings that name one client
// address, and keeps the peak count.
type ruleWatch struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
	peak int
}

func (h *harness) watchRules(addr string) *ruleWatch {
	re := regexp.MustCompile(`(^|[^0-9.])` + regexp.QuoteMeta(addr) + `([^0-9]|$)`)
	w := &ruleWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if lines, err := h.rules(); err == nil {
				n := 0
				for _, l := range lines {
					if re.MatchString(l) {
						n++
					}
				}
				w.peak = max(w.peak, n)
			}
			select {
			case <-w.stop:
				return
			case <-time.After(30 * time.Millisecond):
			}
		}
	}()
	return w
}

// end stops the watch (after one more sample) and returns the peak.
func (w *ruleWatch) end() int {
	w.once.Do(func() {
		time.Sleep(50 * time.Millisecond)
		close(w.stop)
		<-w.done
	})
	return w.peak
}

// beforeLogin sends a command right after the greeting, wants 530, and
// checks that no mapping for the client existed at any time.
func beforeLogin(line func(from string) string) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		w := h.watchRules(e.from)
		c, err := h.dialFrom(e.from)
		if err != nil {
			w.end()
			return "", err
		}
		defer c.close()
		if _, err := c.reply(); err != nil {
			w.end()
			return "", err
		}
		r, err := c.expect(line(e.from), "530")
		if peak := w.end(); peak > 0 && err == nil {
			err = fmt.Errorf("%d mapping(s) before login", peak)
		}
		return r, err
	}
}

// portsBeforeLogin sends 500 PORTs before login, 20 at a time (a
// pipeline well inside pasvgate's 64 outstanding commands), reading the
// replies: every one must get 530, none may install a mapping.
func portsBeforeLogin(h *harness, e *env) (string, error) {
	w := h.watchRules(e.from)
	defer w.end()
	c, err := h.dialFrom(e.from)
	if err != nil {
		return "", err
	}
	defer c.close()
	if _, err := c.reply(); err != nil {
		return "", err
	}
	const n, batch = 500, 20
	codes := map[string]int{}
	for i := 0; i < n; i += batch {
		var b strings.Builder
		for j := i; j < i+batch; j++ {
			fmt.Fprintf(&b, "PORT %s,%d,%d\r\n", commas(e.from), 100+j/256, j%256)
		}
		if err := c.send(b.String()); err != nil {
			return fmt.Sprint(codes), err
		}
		for j := 0; j < batch; j++ {
			r, err := c.replyWithin(10 * time.Second)
			if err != nil {
				return fmt.Sprint(codes), fmt.Errorf("after %d replies: %w", i+j, err)
			}
			codes[r[:3]]++
		}
	}
	got := fmt.Sprintf("530 x%d", codes["530"])
	if codes["530"] != n {
		return fmt.Sprint(codes), fmt.Errorf("replies %v, want 530 x%d", codes, n)
	}
	if peak := w.end(); peak > 0 {
		return got, fmt.Errorf("%d mapping(s) live before login", peak)
	}
	return got, nil
}

// pipelinedPortRetr pipelines 31 PORT+RETR pairs after a login, to ports
// where the client's namespace drops the server's SYN, so that no
// transfer ends while the test looks: each PORT may install a mapping,
// but the session may hold one at a time.
func pipelinedPortRetr(h *harness, e *env) (string, error) {
	const n = 31
	ports := fmt.Sprintf("%d-%d", 120<<8, 120<<8+n-1)
	for _, args := range [][]string{
		{"nft", "add", "table", "ip", "hst"},
		{"nft", "add", "chain", "ip", "hst", "in", "{ type filter hook input priority 0; }"},
		{"nft", "add", "rule", "ip", "hst", "in", "tcp", "dport", ports, "drop"},
	} {
		if _, err := h.lab.Client.Run(context.Background(), args[0], args[1:]...); err != nil {
			return "", err
		}
	}
	defer h.lab.Client.Run(context.Background(), "nft", "delete", "table", "ip", "hst")
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	w := h.watchRules(e.from)
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "PORT %s,%d,%d\r\nRETR payload.bin\r\n", commas(e.from), 120, i)
	}
	if err := c.send(b.String()); err != nil {
		w.end()
		return "", err
	}
	// The replies that come within 2s; the transfers never end, so the
	// session is closed after that.
	codes := map[string]int{}
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; i < 2*n; i++ {
		r, err := c.replyWithin(time.Until(deadline))
		if err != nil {
			break
		}
		codes[r[:3]]++
	}
	peak := w.end()
	got := fmt.Sprintf("%v, peak %d mapping(s)", codes, peak)
	if peak > 1 {
		return got, fmt.Errorf("%d mappings of one session live at once", peak)
	}
	if codes["200"] == 0 {
		return got, fmt.Errorf("no PORT got 200")
	}
	return got, nil
}

// perIPMappings opens mappingsPerIP+1 sessions from one address, each
// asking for PASV: the last must get 425.
func perIPMappings(h *harness, e *env) (string, error) {
	if !h.pgFlags["max-mappings-per-ip"] {
		return "", errors.New("pasvgate has no --max-mappings-per-ip: fix not landed")
	}
	var got []string
	for i := 0; i <= mappingsPerIP; i++ {
		c, err := loggedIn(h, e)
		if err != nil {
			return strings.Join(got, " "), err
		}
		defer c.close()
		r, err := c.cmd("PASV")
		if err != nil {
			return strings.Join(got, " "), err
		}
		got = append(got, r[:3])
		want := "227"
		if i == mappingsPerIP {
			want = "425"
		}
		if !strings.HasPrefix(r, want) {
			return strings.Join(got, " "), fmt.Errorf("session %d's PASV got %q, want %s", i+1, r, want)
		}
	}
	return strings.Join(got, " "), nil
}

var (
	defaultPerIP = regexp.MustCompile(`-max-sessions-per-ip int\n[^\n]*\(default (\d+)\)`)
	defaultMax   = regexp.MustCompile(`-max-sessions int\n[^\n]*\(default (\d+)\)`)
)

// perIPSessionsDefault opens as many sessions from one address as the
// default --max-sessions-per-ip allows, and one more, which gets 421.
// --max-sessions must have a non-zero default too (checked in the help:
// opening that many is the scale suite's business).
func perIPSessionsDefault(h *harness, e *env) (string, error) {
	if defaultMax.FindStringSubmatch(h.pgHelp) == nil {
		return "", errors.New("--max-sessions has no non-zero default: fix not landed")
	}
	m := defaultPerIP.FindStringSubmatch(h.pgHelp)
	if m == nil {
		return "", errors.New("--max-sessions-per-ip has no non-zero default: fix not landed")
	}
	n, _ := strconv.Atoi(m[1])
	if n > 500 {
		return "", fmt.Errorf("default --max-sessions-per-ip %d: too many to test here", n)
	}
	// All dialled first: each greeting takes the hostile server's peek
	// wait, and n of them in a row would outlast --login-timeout.
	var open []*ctl
	for i := 0; i < n; i++ {
		c, err := h.dialFrom(e.from)
		if err != nil {
			return "", err
		}
		defer c.close()
		open = append(open, c)
	}
	time.Sleep(100 * time.Millisecond) // pasvgate has counted them all
	c, err := h.dialFrom(e.from)
	if err != nil {
		return "", err
	}
	defer c.close()
	r, err := c.reply()
	if err != nil || !strings.HasPrefix(r, "421") {
		return r, fmt.Errorf("session %d (default limit %d): %q, %v; want 421", n+1, n, r, err)
	}
	for i, c := range open {
		if r, err := c.reply(); err != nil || !strings.HasPrefix(r, "220") {
			return r, fmt.Errorf("session %d of %d: %q, %v", i+1, n, r, err)
		}
	}
	return fmt.Sprintf("%s (default %d)", r, n), nil
}

// idlePendingTransfer asks for a transfer and never makes its data
// connection: the idle timeout must still end the session.
func idlePendingTransfer(h *harness, e *env) (string, error) {
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	if _, err := c.expect("PASV", "227"); err != nil {
		return "", err
	}
	t0 := time.Now()
	if err := c.send("RETR payload.bin\r\n"); err != nil {
		return "", err
	}
	last, err := c.untilClosed(idleTimeout + replyGrace + 3*time.Second)
	if err != nil {
		return last, err
	}
	if !strings.HasPrefix(last, "421") {
		return last, fmt.Errorf("closed after %v with %q, want 421", time.Since(t0).Round(100*time.Millisecond), last)
	}
	return fmt.Sprintf("%s after %.1fs", last[:3], time.Since(t0).Seconds()), nil
}

// longLine sends n bytes with no newline: 500 must come once the line
// passes --max-line (4096), before any newline; if more is sent, the
// session must close.
func longLine(n int, goesOn bool) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		c, err := loggedIn(h, e)
		if err != nil {
			return "", err
		}
		defer c.close()
		first := min(n, 5000)
		if err := c.send(strings.Repeat("A", first)); err != nil {
			return "", err
		}
		r, err := c.replyWithin(2 * time.Second)
		if err != nil {
			return "", fmt.Errorf("no reply within 2s of %d bytes without a newline: %w", first, err)
		}
		if !strings.HasPrefix(r, "500") {
			return r, fmt.Errorf("got %q, want 500", r)
		}
		if !goesOn {
			return r, nil
		}
		_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_ = c.send(strings.Repeat("A", n-first)) // may fail once pasvgate closes
		last, err := c.untilClosed(5 * time.Second)
		if err != nil {
			return r, err
		}
		return strings.TrimSpace(r[:3] + " " + last[:min(3, len(last))] + ", closed"), nil
	}
}

// flood writes size bytes of line without reading a reply, after a login
// or before even the greeting (pasvgate's own replies then queue behind
// it); pasvgate must disconnect the client rather than queue replies
// without bound.
func flood(line string, size int, login bool) func(*harness, *env) (string, error) {
	return func(h *harness, e *env) (string, error) {
		var c *ctl
		var err error
		if login {
			c, err = loggedIn(h, e)
		} else {
			// A server that has not greeted yet: pasvgate's replies queue
			// behind the greeting.
			c, err = h.dialScript(e)
		}
		if err != nil {
			return "", err
		}
		defer c.close()
		// Keep our own receive buffer small, so that pasvgate meets a
		// client that does not read soon.
		if tc, ok := c.c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		// pasvgate may block on writing to us for its write timeout (30s)
		// before it lets go.
		_ = c.c.SetWriteDeadline(time.Now().Add(50 * time.Second))
		buf := []byte(strings.Repeat(line, size/len(line)))
		t0 := time.Now()
		_, werr := c.c.Write(buf)
		if werr != nil && !isConnGone(werr) {
			return "", fmt.Errorf("writing the flood: %w after %v (pasvgate neither read it nor closed)", werr, time.Since(t0).Round(time.Second))
		}
		last, err := c.untilClosed(10 * time.Second)
		got := fmt.Sprintf("closed after %.1fs", time.Since(t0).Seconds())
		if last != "" {
			got = last[:3] + ", " + got
		}
		if err != nil {
			return last, err
		}
		if !login && !strings.HasPrefix(last, "421") {
			return got, fmt.Errorf("closed with last reply %q, want 421", last)
		}
		if strings.HasPrefix(line, "NOOP") && !strings.HasPrefix(last, "421") && werr == nil {
			return got, fmt.Errorf("closed with last reply %q, want 421", last)
		}
		return got, nil
	}
}

// isConnGone reports a write that failed because the peer closed.
func isConnGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// slowloris opens 20 sessions that send a byte each 400ms and never a
// whole line: each must get 421 at the login timeout and be closed.
func slowloris(h *harness, e *env) (string, error) {
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	lasts := make(chan string, n)
	for i := 0; i < n; i++ {
		c, err := h.dialFrom(e.from)
		if err != nil {
			return "", err
		}
		defer c.close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for j := 0; j < 30; j++ {
					select {
					case <-stop:
						return
					case <-time.After(400 * time.Millisecond):
					}
					if c.send("U") != nil {
						return
					}
				}
			}()
			last, err := c.untilClosed(loginTimeout + replyGrace + 3*time.Second)
			if err == nil && !strings.HasPrefix(last, "421") {
				err = fmt.Errorf("closed with %q, want 421", last)
			}
			errs <- err
			lasts <- last
		}()
	}
	wg.Wait()
	close(errs)
	close(lasts)
	for err := range errs {
		if err != nil {
			return <-lasts, err
		}
	}
	return fmt.Sprintf("%s x%d, closed", (<-lasts)[:3], n), nil
}

// reinAfterWindow logs in, outlives the login window with NOOPs, then
// sends REIN: the client must get a reply, not a silent close.
func reinAfterWindow(h *harness, e *env) (string, error) {
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	for t0 := time.Now(); time.Since(t0) < loginTimeout+500*time.Millisecond; {
		if _, err := c.expect("NOOP", "200"); err != nil {
			return "", err
		}
		time.Sleep(300 * time.Millisecond)
	}
	r, err := c.replyWithinCmd("REIN", 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("REIN: no reply: %w", err)
	}
	if strings.HasPrefix(r, "421") {
		return r, nil // the session ends, and the client was told
	}
	// Otherwise the session goes on, or ends with a 421: either way the
	// next command gets a reply, never a silent close.
	r2, err := c.replyWithinCmd("NOOP", 5*time.Second)
	if err != nil {
		return r, fmt.Errorf("NOOP after REIN's %q: no reply: %w", r[:3], err)
	}
	return r[:3] + ", then " + r2, nil
}

// replyWithinCmd sends a command and reads its reply within d.
func (c *ctl) replyWithinCmd(line string, d time.Duration) (string, error) {
	if err := c.send(line + "\r\n"); err != nil {
		return "", err
	}
	return c.replyWithin(d)
}

// aborSynchClient sends ABOR after a Telnet Synch, the DM byte as TCP
// urgent data, as a client aborting a transfer does (RFC 959 4.1.3).
func aborSynchClient(h *harness, e *env) (string, error) {
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	if err := sendSynch(c.c); err != nil {
		return "", err
	}
	if err := c.send("ABOR\r\n"); err != nil {
		return "", err
	}
	r, err := c.replyWithin(5 * time.Second)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(r, "2") && !strings.HasPrefix(r, "4") && !strings.HasPrefix(r, "5") {
		return r, fmt.Errorf("ABOR got %q", r)
	}
	_, err = c.expect("NOOP", "200")
	return r, err
}

// sendSynch writes IAC IP IAC, then DM with MSG_OOB.
func sendSynch(c net.Conn) error {
	if _, err := c.Write([]byte{0xff, 0xf4, 0xff}); err != nil {
		return err
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = syscall.Sendto(int(fd), []byte{0xf2}, syscall.MSG_OOB, nil)
		return true
	}); err != nil {
		return err
	}
	return serr
}
