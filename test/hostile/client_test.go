package hostile

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxReplyLine bounds every line the test clients read: a reply longer
// than this is an error, never a buffer that grows.
const maxReplyLine = 64 << 10

// maxReplyLines bounds the lines of one multi-line reply a client reads.
const maxReplyLines = 10000

// ctl is a bounded FTP control client inside the client namespace.
type ctl struct {
	c net.Conn
	r *bufio.Reader
}

// dialFrom opens a control connection to pasvgate from the client address
// from.
func (h *harness) dialFrom(from string) (*ctl, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.lab.Client.Dial(ctx, "tcp", from+":0", pgListen)
	if err != nil {
		return nil, fmt.Errorf("dialing pasvgate from %s: %w", from, err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &ctl{c: c, r: bufio.NewReaderSize(c, maxReplyLine)}, nil
}

// line reads one line, without its line end.
func (c *ctl) line() (string, error) {
	b, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("reply line longer than %d bytes", maxReplyLine)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// reply reads one whole reply and returns its last line.
func (c *ctl) reply() (string, error) {
	for i := 0; i < maxReplyLines; i++ {
		l, err := c.line()
		if err != nil {
			return "", err
		}
		if len(l) >= 3 && (len(l) == 3 || l[3] == ' ') && isCode(l[:3]) {
			return l, nil
		}
	}
	return "", fmt.Errorf("a reply of more than %d lines", maxReplyLines)
}

func isCode(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 100 && n < 600
}

// replyWithin is reply with a deadline d from now.
func (c *ctl) replyWithin(d time.Duration) (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	defer c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	return c.reply()
}

func (c *ctl) send(s string) error {
	_, err := io.WriteString(c.c, s)
	return err
}

// cmd sends one command line and returns its reply's last line.
func (c *ctl) cmd(line string) (string, error) {
	if err := c.send(line + "\r\n"); err != nil {
		return "", err
	}
	return c.reply()
}

// expect runs cmd and checks its reply's code.
func (c *ctl) expect(line, code string) (string, error) {
	r, err := c.cmd(line)
	if err != nil {
		return r, fmt.Errorf("%s: %w", printable(line), err)
	}
	if !strings.HasPrefix(r, code) {
		return r, fmt.Errorf("%s got %q, want %s", printable(line), r, code)
	}
	return r, nil
}

// login reads the greeting and logs in as anonymous.
func (c *ctl) login() error {
	if r, err := c.reply(); err != nil || !strings.HasPrefix(r, "220") {
		return fmt.Errorf("greeting %q: %v", r, err)
	}
	if _, err := c.expect("USER anonymous", "331"); err != nil {
		return err
	}
	if _, err := c.expect("PASS x", "230"); err != nil {
		return err
	}
	_, err := c.expect("TYPE I", "200")
	return err
}

// untilClosed reads replies until the connection ends (EOF or reset),
// within d, and returns the last reply line it got; an error if the
// connection is still open at d.
func (c *ctl) untilClosed(d time.Duration) (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	var last string
	for i := 0; i < 1<<20; i++ {
		l, err := c.line()
		if err == nil {
			if len(l) >= 3 && isCode(l[:3]) {
				last = l
			}
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return last, fmt.Errorf("connection still open after %v (last reply %q)", d, last)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
			return last, nil
		}
		if strings.Contains(err.Error(), "longer than") {
			continue
		}
		return last, nil
	}
	return last, fmt.Errorf("endless replies")
}

func (c *ctl) close() { c.c.Close() }

var re227 = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)

// parse227 reads the address of a 227 reply.
func parse227(r string) (netip.AddrPort, error) {
	m := re227.FindStringSubmatch(r)
	if !strings.HasPrefix(r, "227 ") || m == nil {
		return netip.AddrPort{}, fmt.Errorf("not a 227: %q", r)
	}
	var b [6]byte
	for i := range b {
		n, err := strconv.Atoi(m[i+1])
		if err != nil || n > 255 {
			return netip.AddrPort{}, fmt.Errorf("bad 227 %q", r)
		}
		b[i] = byte(n)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5])), nil
}

// isPublic227 checks that a 227 names pasvgate's public address and a port
// of its data range.
func isPublic227(r string) error {
	ap, err := parse227(r)
	if err != nil {
		return err
	}
	if ap.Addr().String() != publicAddr || ap.Port() < 40000 || ap.Port() > 40999 {
		return fmt.Errorf("227 names %v, want %s and a port in %s", ap, publicAddr, dataPorts)
	}
	return nil
}

// dialData opens a data connection from the client address from.
func (h *harness) dialData(from string, to netip.AddrPort, within time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return h.lab.Client.Dial(ctx, "tcp", from+":0", to.String())
}

// download logs in from from, fetches payload.bin over PASV and checks it
// byte for byte (sha256). pause, if not nil, runs once the first 64 KiB
// have arrived, with the rest still to cross the gateway.
func (h *harness) download(from string, pause func()) error {
	c, err := h.dialFrom(from)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.login(); err != nil {
		return err
	}
	r, err := c.expect("PASV", "227")
	if err != nil {
		return err
	}
	ap, err := parse227(r)
	if err != nil {
		return err
	}
	dc, err := h.dialData(from, ap, 5*time.Second)
	if err != nil {
		return fmt.Errorf("data connection to %v: %w", ap, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(30 * time.Second))
	if pause != nil {
		// A small window keeps most of the file on the server's side
		// while paused: it crosses the gateway after the pause.
		_ = dc.(*net.TCPConn).SetReadBuffer(32 << 10)
	}
	if _, err := c.expect("RETR payload.bin", "150"); err != nil {
		return err
	}
	sum := sha256.New()
	first := make([]byte, 64<<10)
	if _, err := io.ReadFull(dc, first); err != nil {
		return fmt.Errorf("reading data: %w", err)
	}
	sum.Write(first)
	if pause != nil {
		pause()
	}
	n, err := io.Copy(sum, io.LimitReader(dc, payloadLen))
	if err != nil {
		return fmt.Errorf("reading data after %d bytes: %w", int(n)+len(first), err)
	}
	if got := [32]byte(sum.Sum(nil)); got != h.payload || int(n)+len(first) != payloadLen {
		return fmt.Errorf("downloaded %d bytes, not byte-exact", int(n)+len(first))
	}
	if r, err := c.replyWithin(15 * time.Second); err != nil || !strings.HasPrefix(r, "226") {
		return fmt.Errorf("end of RETR: %q, %v", r, err)
	}
	_, _ = c.cmd("QUIT")
	return nil
}

// canary downloads payload.bin through pasvgate from canaryAddr, again
// and again, until stopped: the other session every entry must leave
// unaffected.
type canary struct {
	h    *harness
	stop chan struct{}
	done chan struct{}

	// hold is held for each of the canary's transfers; an entry that
	// needs the data range to itself holds it to pause the canary.
	hold sync.Mutex

	mu      sync.Mutex
	results []canaryResult
}

type canaryResult struct {
	end time.Time
	err error
}

func (h *harness) startCanary() *canary {
	cn := &canary{h: h, stop: make(chan struct{}), done: make(chan struct{})}
	h.canary = cn
	go func() {
		defer close(cn.done)
		for i := 0; i < 100000; i++ {
			select {
			case <-cn.stop:
				return
			default:
			}
			cn.hold.Lock()
			err := h.download(canaryAddr, nil)
			cn.hold.Unlock()
			cn.mu.Lock()
			cn.results = append(cn.results, canaryResult{time.Now(), err})
			cn.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return cn
}

// end stops the canary and waits for its last transfer.
func (cn *canary) end() {
	close(cn.stop)
	<-cn.done
}

// since counts the canary's transfers that ended after t0, and returns the
// first failure among them.
func (cn *canary) since(t0 time.Time) (ok int, err error) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	for _, r := range cn.results {
		if r.end.Before(t0) {
			continue
		}
		if r.err != nil && err == nil {
			err = r.err
		}
		if r.err == nil {
			ok++
		}
	}
	return ok, err
}

// printable shows control bytes of a line as Go escapes, for the table.
func printable(s string) string {
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	if len(q) > 48 {
		q = q[:45] + "..."
	}
	return q
}
