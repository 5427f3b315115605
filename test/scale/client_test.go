package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/test/ftpctl"
	"github.com/pasvgate/pasvgate/test/netns"
)

// opTimeout bounds every read and write of the load client: an answer on
// veths takes microseconds, so hitting it means something is stuck.
const opTimeout = 30 * time.Second

// ftpConn is one control session of the load client.
type ftpConn struct {
	c net.Conn
	*ftpctl.Conn
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
	return &ftpConn{c: c, Conn: ftpctl.New(c, 256, opTimeout)}, nil
}

// login reads the greeting and logs in anonymously.
func (f *ftpConn) login() error {
	if _, err := f.Expect(220); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if _, err := f.Cmd("USER anonymous", 331); err != nil {
		return err
	}
	_, err := f.Cmd("PASS scale@", 230)
	return err
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
