package scaleout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// opTimeout bounds every read and write of the test's client: an answer
// on veths takes microseconds, so reaching it means something is stuck.
const opTimeout = 10 * time.Second

// session is one control connection of the test's own client. It dials
// exactly the address a 227 names, so a gateway that announced an
// address the client could not use fails the test instead of passing.
type session struct {
	l     *lab
	c     net.Conn
	r     *bufio.Reader
	local netip.AddrPort // the control connection's source
}

// dial opens a control connection from src to the service address and
// logs in anonymously.
func (l *lab) dial(ctx context.Context, src netip.Addr) (*session, error) {
	c, err := l.client.Dial(ctx, "tcp", netip.AddrPortFrom(src, 0).String(), serviceAddr+":21")
	if err != nil {
		return nil, fmt.Errorf("connecting from %s: %w", src, err)
	}
	s := &session{l: l, c: c, r: bufio.NewReader(c), local: netip.MustParseAddrPort(c.LocalAddr().String())}
	if _, err := s.expect(220); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := s.cmd("USER anonymous", 331); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := s.cmd("PASS scaleout@", 230); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := s.cmd("TYPE I", 200); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// reply reads one reply, multi-line ones whole, and returns its code and
// its last line.
func (s *session) reply() (int, string, error) {
	_ = s.c.SetReadDeadline(time.Now().Add(opTimeout))
	for range 100 {
		line, err := s.r.ReadString('\n')
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
func (s *session) expect(want ...int) (string, error) {
	code, line, err := s.reply()
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
func (s *session) cmd(line string, want ...int) (string, error) {
	_ = s.c.SetWriteDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(s.c, "%s\r\n", line); err != nil {
		return "", fmt.Errorf("sending %s: %w", line, err)
	}
	r, err := s.expect(want...)
	if err != nil {
		return r, fmt.Errorf("%s: %w", line, err)
	}
	return r, nil
}

func (s *session) close() {
	_ = s.c.SetDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(s.c, "QUIT\r\n")
	s.c.Close()
}

var (
	pasvRE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	epsvRE = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
)

// parse227 reads the data address of a 227 reply: the test's own parser,
// so that it does not share a bug with pasvgate's.
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

// passive asks for a data port, PASV or EPSV, and returns where the
// client must connect: the 227's address, or for EPSV (RFC 2428: the
// address of the control connection) the service address.
func (s *session) passive(epsv bool) (netip.AddrPort, error) {
	if !epsv {
		line, err := s.cmd("PASV", 227)
		if err != nil {
			return netip.AddrPort{}, err
		}
		return parse227(line)
	}
	line, err := s.cmd("EPSV", 229)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := parse229(line)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.MustParseAddr(serviceAddr), p), nil
}

// dialData connects the data connection from the session's own address.
// rcvbuf, if not zero, is set before the connect (so the window is
// small from the first segment).
func (s *session) dialData(ctx context.Context, to netip.AddrPort, rcvbuf int) (net.Conn, error) {
	d := net.Dialer{Timeout: opTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.local.Addr(), 0))}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	var c net.Conn
	err := s.l.client.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", to.String())
		return err
	})
	return c, err
}

// outcome is what one download saw.
type outcome struct {
	src  netip.AddrPort // the control connection's source
	epsv bool
	data netip.AddrPort // where the data connection went
	// dataErr is set when the data connection itself failed (refused or
	// timed out): the case of a connection that reached the wrong node.
	dataErr error
	err     error // any other failure
}

// download runs one session from src: login, PASV or EPSV, RETR of the
// file, every byte checked against the file, 226, QUIT.
func (l *lab) download(ctx context.Context, src netip.Addr, epsv bool) outcome {
	o := outcome{epsv: epsv}
	s, err := l.dial(ctx, src)
	if err != nil {
		o.err = err
		return o
	}
	defer s.close()
	o.src = s.local
	if o.data, err = s.passive(epsv); err != nil {
		o.err = err
		return o
	}
	dc, err := s.dialData(ctx, o.data, 0)
	if err != nil {
		o.dataErr = err
		return o
	}
	defer dc.Close()
	if _, err := s.cmd("RETR "+fileName, 150, 125); err != nil {
		o.err = err
		return o
	}
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	got, err := io.ReadAll(io.LimitReader(dc, int64(len(l.file))+1))
	if err != nil {
		o.err = fmt.Errorf("reading the data connection: %w", err)
		return o
	}
	if !bytes.Equal(got, l.file) {
		o.err = fmt.Errorf("got %d bytes sha256 %x, want %d bytes sha256 %x", len(got), sha256.Sum256(got), len(l.file), sha256.Sum256(l.file))
		return o
	}
	if _, err := s.expect(226, 250); err != nil {
		o.err = fmt.Errorf("after the data: %w", err)
	}
	return o
}

// downloads runs one download per source on a few workers and returns the
// outcomes in the order of srcs.
func (l *lab) downloads(ctx context.Context, srcs []netip.Addr, epsv func(i int) bool) []outcome {
	out := make([]outcome, len(srcs))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				out[i] = l.download(ctx, srcs[i], epsv(i))
			}
		}()
	}
	for i := range srcs {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return out
}

// allClients lists every client address, times rounds.
func allClients(rounds int) []netip.Addr {
	var srcs []netip.Addr
	for range rounds {
		for i := range numClients {
			srcs = append(srcs, clientAddr(i))
		}
	}
	return srcs
}
