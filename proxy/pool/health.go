package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// maxGreeting bounds what a check reads of a greeting, all lines together.
// Real greetings are a line or a few (a banner, a notice); a server that
// sends more is not one to send clients to.
const maxGreeting = 4096

// quitWait is how long a check waits for the 221 after its QUIT: long
// enough that a server answering at once sees an orderly end rather than a
// reset (and logs none), short enough that one that does not answer costs
// little. The check's Timeout bounds it too.
const quitWait = 500 * time.Millisecond

// Run runs the active health checks until ctx ends. Call it once, on its
// own goroutine. While Health.Interval is 0 it only waits, for ctx or for
// an Update that turns checks on, so that a reload can turn them on and
// off. The checks of a round run at once, one goroutine per member, and
// Run waits for them before it returns.
func (p *Pool) Run(ctx context.Context) {
	select {
	case <-p.wake: // New's: the first round, at once, checks them all
	default:
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-timer.C:
		}
		p.mu.Lock()
		interval := p.health.Interval
		p.mu.Unlock()
		if interval <= 0 {
			continue // no timer: until the next wake
		}
		start := time.Now()
		p.checkRound(ctx)
		// Rounds start Interval apart (not Interval after the last one
		// ended), so that slow checks do not stretch the time to notice a
		// server gone; a round longer than Interval delays the next one.
		timer.Reset(time.Until(start.Add(interval)))
	}
}

// checkRound checks every member once, concurrently, and records the
// results.
func (p *Pool) checkRound(ctx context.Context) {
	p.mu.Lock()
	ms := slices.Clone(p.members)
	timeout, pp := p.health.Timeout, p.cfg.ProxyProtocol
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			err := check(ctx, m.addr, timeout, pp)
			if ctx.Err() != nil {
				return // shutting down: not the server's failure
			}
			p.record(m, err)
		})
	}
	wg.Wait()
}

// record counts one check of m, and moves m in or out of rotation when
// Rise successes or Fall failures in a row say so.
func (p *Pool) record(m *member, err error) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.removed {
		return
	}
	if err == nil {
		m.oks++
		m.fails = 0
		if !m.healthy && m.oks >= p.health.Rise {
			p.markUpLocked(m, now, "health check passed "+strconv.Itoa(m.oks)+" times")
		}
		return
	}
	m.fails++
	m.oks = 0
	reason := "health check: " + err.Error()
	switch {
	case !m.healthy:
		m.reason = reason // the latest, for Status
	case m.fails >= p.health.Fall:
		p.markDownLocked(m, now, reason)
	}
}

// check connects to addr, sends the check's PROXY header if pp asks for
// one, and reads the greeting, all within timeout. A 2xx greeting is
// success; anything else (120, 421, silence, a reset, garbage, too many
// bytes) is a failure. After a complete greeting it sends QUIT.
func check(ctx context.Context, addr string, timeout time.Duration, pp ProxyProtocol) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	// The deadline covers the timeout; this covers Run's ctx ending first.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if pp != ProxyOff {
		h, err := checkHeader(pp)
		if err != nil {
			return err
		}
		if _, err := conn.Write(h); err != nil {
			return fmt.Errorf("writing PROXY header: %w", err)
		}
	}
	code, text, err := readGreeting(conn)
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	quit(conn, deadline)
	if code/100 != 2 {
		return fmt.Errorf("greeting: %s", text)
	}
	return nil
}

// errGreetingTooLong is a greeting that had not ended within maxGreeting
// bytes.
var errGreetingTooLong = errors.New("greeting longer than " + strconv.Itoa(maxGreeting) + " bytes")

// readGreeting reads one reply from r, multi-line replies included (RFC 959
// 4.2), and at most maxGreeting bytes of it. It returns the reply's code
// and the start of its first line (code included), made safe for a log.
func readGreeting(r io.Reader) (code int, text string, err error) {
	lr := &io.LimitedReader{R: r, N: maxGreeting}
	rd := ftp.NewReader(lr, maxGreeting)
	var st ftp.ReplyState
	for {
		_, line, err := rd.ReadLine()
		switch {
		case err == nil:
		case lr.N == 0 || errors.Is(err, ftp.ErrLineTooLong):
			return 0, "", errGreetingTooLong
		case errors.Is(err, io.EOF):
			return 0, "", io.ErrUnexpectedEOF // closed before any reply
		default:
			return 0, "", err
		}
		c, last, err := st.Feed(line)
		if err != nil {
			return 0, "", err
		}
		if text == "" {
			text = printable(line, 80)
		}
		if last {
			return c, text, nil
		}
	}
}

// quit ends a check politely: QUIT, and a short wait for the 221.
func quit(conn net.Conn, deadline time.Time) {
	if t := time.Now().Add(quitWait); t.Before(deadline) {
		deadline = t
	}
	_ = conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, "QUIT\r\n"); err != nil {
		return
	}
	_, _, _ = ftp.NewReader(io.LimitReader(conn, 512), 512).ReadLine()
}

// printable returns at most n bytes of b with anything but printable ASCII
// replaced, since a server's text goes into logs.
func printable(b []byte, n int) string {
	b = b[:min(len(b), n)]
	out := make([]byte, len(b))
	for i, c := range b {
		if c < ' ' || c > '~' {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}
