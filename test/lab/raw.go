package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"
)

// The raw client: a Go FTP client that downloads DataFile while giving the
// test control between the command that sets up the data connection and
// the data connection itself. Real clients connect (or send RETR) at once,
// and servers stop listening after the first data connection, so only here
// can an intruder try a data port while it still leads somewhere.

// RawSession is where a raw client runs and whom it logs in as.
type RawSession struct {
	// NS is the namespace the client runs in.
	NS string
	// Local is the client's own address ("" for the kernel's choice in
	// passive mode; active mode needs it, to listen on).
	Local string
	// Host is the address dialed on port 21.
	Host string
	// User and Password log in.
	User, Password string
}

// RawPassiveRetr downloads DataFile in passive mode (PASV, or EPSV when
// epsv). After the 227/229 reply it calls between with the announced
// address (for a 229, the host dialed and the reply's port); if between
// returns a connection, that is used as the data connection, otherwise
// the client dials the announced address itself. It returns the data's hex
// SHA-256. The whole run is bounded by 60 s.
func (l *Lab) RawPassiveRetr(ctx context.Context, s RawSession, epsv bool,
	between func(announced netip.AddrPort) (net.Conn, error)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, nc, err := l.RawLogin(ctx, s)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	var announced netip.AddrPort
	if epsv {
		msg, err := RawCmd(c, 229, "EPSV")
		if err != nil {
			return "", err
		}
		ports := Parse229s("229 " + msg)
		if len(ports) != 1 {
			return "", fmt.Errorf("EPSV: cannot parse %q", msg)
		}
		host, err := netip.ParseAddr(s.Host)
		if err != nil {
			return "", fmt.Errorf("EPSV: host %q: %w", s.Host, err)
		}
		announced = netip.AddrPortFrom(host, ports[0])
	} else {
		msg, err := RawCmd(c, 227, "PASV")
		if err != nil {
			return "", err
		}
		addrs := Parse227s("227 " + msg)
		if len(addrs) != 1 {
			return "", fmt.Errorf("PASV: cannot parse %q", msg)
		}
		announced = addrs[0]
	}
	data, err := between(announced)
	if err != nil {
		return "", err
	}
	if data == nil {
		data, err = l.Dial(ctx, s.NS, s.Local, announced.String())
		if err != nil {
			return "", fmt.Errorf("dial data %v: %w", announced, err)
		}
	}
	defer data.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = data.SetDeadline(dl)
	}
	if _, err := RawCmd(c, 1, "RETR %s", DataFile); err != nil {
		return "", err
	}
	sum, err := sha256Of(data)
	if err != nil {
		return "", fmt.Errorf("reading data: %w", err)
	}
	data.Close()
	if _, err := RawCmd(c, 2, ""); err != nil {
		return "", fmt.Errorf("after RETR: %w", err)
	}
	_, _ = RawCmd(c, 2, "QUIT")
	return sum, nil
}

// RawActiveRetr downloads DataFile in active mode: it listens on s.Local
// at a port the kernel picks, sends PORT (or EPRT when eprt) for it, and
// calls between. between returns how many connections it made to the
// client's port (positive controls of a probe), which are accepted and
// closed before RETR; then the server's data connection is read. It
// returns the data's hex SHA-256 and the peer address of every connection
// the client accepted, in order. The whole run is bounded by 60 s.
func (l *Lab) RawActiveRetr(ctx context.Context, s RawSession, eprt bool,
	between func() (int, error)) (string, []netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, nc, err := l.RawLogin(ctx, s)
	if err != nil {
		return "", nil, err
	}
	defer nc.Close()
	ln, err := l.Listen(s.NS, net.JoinHostPort(s.Local, "0"))
	if err != nil {
		return "", nil, fmt.Errorf("data listener: %w", err)
	}
	defer ln.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = ln.SetDeadline(dl)
	}
	if _, err := RawCmd(c, 200, "%s", ActiveCommandFor(ln.Addr().(*net.TCPAddr).AddrPort(), eprt)); err != nil {
		return "", nil, err
	}
	n, err := between()
	if err != nil {
		return "", nil, err
	}
	var peers []netip.AddrPort
	for range n {
		pc, err := ln.AcceptTCP()
		if err != nil {
			return "", peers, fmt.Errorf("accepting the positive control: %w", err)
		}
		peers = append(peers, pc.RemoteAddr().(*net.TCPAddr).AddrPort())
		pc.Close()
	}
	if _, err := RawCmd(c, 1, "RETR %s", DataFile); err != nil {
		return "", peers, err
	}
	data, err := ln.AcceptTCP()
	if err != nil {
		return "", peers, fmt.Errorf("accepting the data connection: %w", err)
	}
	defer data.Close()
	peers = append(peers, data.RemoteAddr().(*net.TCPAddr).AddrPort())
	sum, err := sha256Of(data)
	if err != nil {
		return "", peers, fmt.Errorf("reading data: %w", err)
	}
	data.Close()
	if _, err := RawCmd(c, 2, ""); err != nil {
		return "", peers, fmt.Errorf("after RETR: %w", err)
	}
	_, _ = RawCmd(c, 2, "QUIT")
	return sum, peers, nil
}

// ActiveCommandFor is the PORT command for ap (an IPv4 address), or with
// eprt the EPRT command for ap of either family.
func ActiveCommandFor(ap netip.AddrPort, eprt bool) string {
	if !eprt {
		return fmt.Sprintf("PORT %s,%d,%d", strings.ReplaceAll(ap.Addr().String(), ".", ","), ap.Port()>>8, ap.Port()&0xff)
	}
	proto := 1
	if ap.Addr().Is6() {
		proto = 2
	}
	return fmt.Sprintf("EPRT |%d|%s|%d|", proto, ap.Addr(), ap.Port())
}

// Listen opens a TCP listener inside namespace ns on addr.
func (l *Lab) Listen(ns, addr string) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := l.Do(ns, func() error {
		x, err := net.Listen("tcp", addr)
		if err == nil {
			ln = x.(*net.TCPListener)
		}
		return err
	})
	return ln, err
}

// RawLogin dials s.Host:21 from s.Local in s.NS and logs in (binary type),
// for a test that speaks FTP itself. It returns the connection twice: for
// commands, and to close. The connection's deadline is ctx's, or 60 s.
func (l *Lab) RawLogin(ctx context.Context, s RawSession) (*textproto.Conn, net.Conn, error) {
	nc, err := l.Dial(ctx, s.NS, s.Local, net.JoinHostPort(s.Host, "21"))
	if err != nil {
		return nil, nil, fmt.Errorf("dial control: %w", err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(60 * time.Second)
	}
	_ = nc.SetDeadline(dl)
	c := textproto.NewConn(nc)
	if err := login(c, s.User, s.Password); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return c, nc, nil
}

// login reads the greeting and logs in, then sets binary type.
func login(c *textproto.Conn, user, password string) error {
	if _, err := RawCmd(c, 220, ""); err != nil {
		return err
	}
	if _, err := c.Cmd("USER %s", user); err != nil {
		return err
	}
	switch code, msg, err := c.ReadResponse(0); {
	case err != nil:
		return fmt.Errorf("USER: %w", err)
	case code == 331:
		if _, err := RawCmd(c, 230, "PASS %s", password); err != nil {
			return err
		}
	case code != 230:
		return fmt.Errorf("USER: %d %s", code, msg)
	}
	_, err := RawCmd(c, 200, "TYPE I")
	return err
}

// RawCmd sends one command (none if format is empty: it just reads a
// reply) and reads the reply, which must match expect: a code, or its
// first digit, as textproto.Conn.ReadResponse takes it.
func RawCmd(c *textproto.Conn, expect int, format string, args ...any) (string, error) {
	what := "greeting"
	if format != "" {
		line := fmt.Sprintf(format, args...)
		what = line
		if i := strings.IndexByte(line, ' '); i >= 0 {
			what = line[:i]
		}
		if _, err := c.Cmd("%s", line); err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
	}
	_, msg, err := c.ReadResponse(expect)
	if err != nil {
		return msg, fmt.Errorf("%s: %w", what, err)
	}
	return msg, nil
}

// sha256Of reads r to its end and returns the hex SHA-256 of what it read.
func sha256Of(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
