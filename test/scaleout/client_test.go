package scaleout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/test/ftpctl"
)

// opTimeout bounds every read and write of the test's client: an answer
// on veths takes microseconds, so reaching it means something is stuck.
const opTimeout = 10 * time.Second

// session is one control connection of the test's own client. It dials
// exactly the address a 227 names, so a gateway that announced an
// address the client could not use fails the test instead of passing.
type session struct {
	l *lab
	c net.Conn
	*ftpctl.Conn
	local netip.AddrPort // the control connection's source
}

// dial opens a control connection from src to the service address and
// logs in anonymously.
func (l *lab) dial(ctx context.Context, src netip.Addr) (*session, error) {
	c, err := l.client.Dial(ctx, "tcp", netip.AddrPortFrom(src, 0).String(), serviceAddr+":21")
	if err != nil {
		return nil, fmt.Errorf("connecting from %s: %w", src, err)
	}
	s := &session{l: l, c: c, Conn: ftpctl.New(c, 4096, opTimeout), local: netip.MustParseAddrPort(c.LocalAddr().String())}
	if _, err := s.Expect(220); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := s.Cmd("USER anonymous", 331); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := s.Cmd("PASS scaleout@", 230); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := s.Cmd("TYPE I", 200); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func (s *session) close() {
	_ = s.c.SetDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(s.c, "QUIT\r\n")
	s.c.Close()
}

// passive asks for a data port, PASV or EPSV, and returns where the
// client must connect: the 227's address, or for EPSV (RFC 2428: the
// address of the control connection) the service address.
func (s *session) passive(epsv bool) (netip.AddrPort, error) {
	if !epsv {
		line, err := s.Cmd("PASV", 227)
		if err != nil {
			return netip.AddrPort{}, err
		}
		return ftpctl.Parse227(line)
	}
	line, err := s.Cmd("EPSV", 229)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := ftpctl.Parse229(line)
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
	if _, err := s.Cmd("RETR "+fileName, 150, 125); err != nil {
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
	if _, err := s.Expect(226, 250); err != nil {
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
