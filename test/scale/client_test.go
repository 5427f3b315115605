package scale

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// opTimeout bounds every read and write of the load client: an answer on
// veths takes microseconds, so hitting it means something is stuck.
const opTimeout = 30 * time.Second

// ftpConn is one control session of the load client.
type ftpConn struct {
	c net.Conn
	r *bufio.Reader
}

// dialFTP opens a control connection to addr. It must run on a thread
// inside the client namespace (see inNS): the socket belongs to the
// namespace of the thread that creates it.
func dialFTP(ctx context.Context, addr string) (*ftpConn, error) {
	d := net.Dialer{Timeout: opTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Replies are a line or two: a small buffer keeps 10,000 sessions
	// cheap in the test process.
	return &ftpConn{c: c, r: bufio.NewReaderSize(c, 256)}, nil
}

// reply reads one reply, multi-line ones whole, and returns its code and
// the text of its last line.
func (f *ftpConn) reply() (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(opTimeout))
	for i := 0; i < 100; i++ {
		line, err := f.r.ReadString('\n')
		if err != nil {
			return 0, "", fmt.Errorf("reading a reply: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			return 0, "", fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return 0, "", fmt.Errorf("reply line %q has no code", line)
		}
		if line[3] == ' ' {
			return code, line, nil
		}
	}
	return 0, "", errors.New("reply of more than 100 lines")
}

// expect reads a reply and checks its code is one of want.
func (f *ftpConn) expect(want ...int) (string, error) {
	code, line, err := f.reply()
	if err != nil {
		return "", err
	}
	for _, w := range want {
		if code == w {
			return line, nil
		}
	}
	return line, fmt.Errorf("got %q, want %v", line, want)
}

// cmd sends a command and checks the reply's code.
func (f *ftpConn) cmd(line string, want ...int) (string, error) {
	_ = f.c.SetWriteDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(f.c, "%s\r\n", line); err != nil {
		return "", fmt.Errorf("sending %s: %w", line, err)
	}
	r, err := f.expect(want...)
	if err != nil {
		return r, fmt.Errorf("%s: %w", line, err)
	}
	return r, nil
}

// login reads the greeting and logs in anonymously.
func (f *ftpConn) login() error {
	if _, err := f.expect(220); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if _, err := f.cmd("USER anonymous", 331); err != nil {
		return err
	}
	_, err := f.cmd("PASS scale@", 230)
	return err
}

var (
	pasvRE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	epsvRE = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
)

// parse227 reads the data address of a 227 reply. It is the test's own
// parser, so that it does not share a bug with pasvgate's.
func parse227(line string) (netip.AddrPort, error) {
	m := pasvRE.FindStringSubmatch(line)
	if m == nil {
		return netip.AddrPort{}, fmt.Errorf("no address in %q", line)
	}
	var n [6]int
	for i := range n {
		v, err := strconv.Atoi(m[i+1])
		if err != nil || v > 255 {
			return netip.AddrPort{}, fmt.Errorf("bad number %q in %q", m[i+1], line)
		}
		n[i] = v
	}
	a := netip.AddrFrom4([4]byte{byte(n[0]), byte(n[1]), byte(n[2]), byte(n[3])})
	return netip.AddrPortFrom(a, uint16(n[4]<<8|n[5])), nil
}

// parse229 reads the port of a 229 reply.
func parse229(line string) (uint16, error) {
	m := epsvRE.FindStringSubmatch(line)
	if m == nil {
		return 0, fmt.Errorf("no port in %q", line)
	}
	p, err := strconv.ParseUint(m[1], 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("bad port in %q", line)
	}
	return uint16(p), nil
}

// inNS runs work(i) for every i in [0, count) on workers goroutines, each
// locked to a thread inside ns for its whole run, so that the sockets work
// opens belong to ns while the test process itself never leaves its own
// namespace. workers also bounds how many run at once. It returns when all
// are done; an error means a worker could not enter ns, and the indices
// it would have run were run by the others or not at all.
func inNS(ns *netns.NS, workers, count int, work func(i int)) error {
	jobs := make(chan int, count)
	for i := range count {
		jobs <- i
	}
	close(jobs)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = ns.Do(func() error {
				for i := range jobs {
					work(i)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// failed collects the errors of many sessions and summarises them.
type failed struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (f *failed) add(i int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if len(f.first) < 10 {
		f.first = append(f.first, fmt.Sprintf("session %d: %v", i, err))
	}
}

func (f *failed) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *failed) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("%d failed; first ones:\n%s", f.n, strings.Join(f.first, "\n"))
}
