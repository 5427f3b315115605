// Package load is the client side of the gateway benchmark in test/bench: a
// small hand-rolled FTP control-channel client and the workloads it times
// (NOOP round trips, sequential small downloads, whole short sessions, bulk
// transfers, and a phase-by-phase breakdown of single small transfers).
//
// cmd/ftpload runs it inside the benchmark's client namespace and prints a
// Result as JSON; the orchestrator (test/bench) only starts it and reads the
// result, so the timing is taken next to the sockets, in a process that does
// nothing else. The same program runs against every gateway.
//
// The client always dials exactly the address a 227 reply names, and for a
// 229 reply the control connection's address: a client that quietly fell
// back to the control address would measure a path the gateway never set
// up. The one exception is asked for by name (Config.PASVHost), for the
// floor's relay, which passes the server's 227 on untouched. It allocates little per operation (one reusable command buffer,
// replies read in place) so that its own cost stays small next to the
// gateway's.
package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// Reply codes the client acts on (RFC 959 4.2, RFC 2428).
const (
	codeOpening      = 150
	codeAlreadyOpen  = 125
	codeOK           = 200
	codeFileStatus   = 213
	codeReady        = 220
	codeClosing      = 221
	codeTransferDone = 226
	codeEnteringPASV = 227
	codeEnteringEPSV = 229
	codeLoggedIn     = 230
	codeFileActionOK = 250
	codeNeedPassword = 331
)

// Conn is one control connection. It is not safe for concurrent use.
type Conn struct {
	// nc is the control connection: TCP, or TLS over it after StartTLS.
	nc      net.Conn
	r       *bufio.Reader
	peer    netip.AddrPort
	timeout time.Duration
	dialer  net.Dialer
	// pasvHost, when valid, replaces the host of every 227 (see
	// Config.PASVHost).
	pasvHost netip.Addr

	wbuf  []byte // the command being sent, reused
	first []byte // copy of a multi-line reply's first line, reused

	// tls is the FTPS state (tls.go); nil for plain FTP.
	tls *tlsState
}

// Dial connects to addr and reads the server's greeting. timeout bounds the
// connect and, later, every single command, data connection and transfer.
func Dial(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (*Conn, error) {
	c := &Conn{peer: addr, timeout: timeout, dialer: net.Dialer{Timeout: timeout}}
	nc, err := c.dialer.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	if err := c.greeted(nc); err != nil {
		return nil, err
	}
	return c, nil
}

// NewConn takes over nc, a control connection already dialled to peer (the
// bench dials from another namespace), and reads the server's greeting.
func NewConn(nc net.Conn, peer netip.AddrPort, timeout time.Duration) (*Conn, error) {
	c := &Conn{peer: peer, timeout: timeout, dialer: net.Dialer{Timeout: timeout}}
	if err := c.greeted(nc); err != nil {
		return nil, err
	}
	return c, nil
}

// greeted reads the greeting on nc; on error nc is closed.
func (c *Conn) greeted(nc net.Conn) error {
	c.nc = nc
	c.r = bufio.NewReaderSize(c.nc, 4096)
	c.wbuf = make([]byte, 0, 128)
	if err := c.nc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		c.nc.Close()
		return err
	}
	if err := c.expect(codeReady, "greeting"); err != nil {
		c.nc.Close()
		return err
	}
	return nil
}

// Close drops the connection without QUIT.
func (c *Conn) Close() error { return c.nc.Close() }

// Cmd sends one command and reads its reply. text is the reply's first line
// after the code, valid only until the next call.
func (c *Conn) Cmd(verb, arg string) (code int, text []byte, err error) {
	c.wbuf = append(c.wbuf[:0], verb...)
	if arg != "" {
		c.wbuf = append(c.wbuf, ' ')
		c.wbuf = append(c.wbuf, arg...)
	}
	c.wbuf = append(c.wbuf, '\r', '\n')
	if err := c.nc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, nil, err
	}
	if _, err := c.nc.Write(c.wbuf); err != nil {
		return 0, nil, fmt.Errorf("sending %s: %w", verb, err)
	}
	return c.reply()
}

// do is Cmd that insists on one reply code.
func (c *Conn) do(want int, verb, arg string) error {
	code, text, err := c.Cmd(verb, arg)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("%s %s: got %d %s, want %d", verb, arg, code, text, want)
	}
	return nil
}

// expect reads a reply that was not asked for by a command just sent (the
// greeting, the end of a transfer) and insists on its code.
func (c *Conn) expect(want int, what string) error {
	code, text, err := c.reply()
	if err != nil {
		return fmt.Errorf("reading %s: %w", what, err)
	}
	if code != want {
		return fmt.Errorf("%s: got %d %s, want %d", what, code, text, want)
	}
	return nil
}

// reply reads one reply, single- or multi-line (RFC 959 4.2), and returns
// its code and the text of its first line.
func (c *Conn) reply() (int, []byte, error) {
	line, err := c.readLine()
	if err != nil {
		return 0, nil, err
	}
	code, ok := replyCode(line)
	if !ok {
		return 0, nil, fmt.Errorf("malformed reply %q", line)
	}
	if line[3] != '-' {
		return code, bytes.TrimLeft(line[3:], " "), nil
	}
	// The reader's buffer is reused by the next line: keep a copy.
	c.first = append(c.first[:0], line[4:]...)
	for {
		l, err := c.readLine()
		if err != nil {
			return 0, nil, err
		}
		if n, ok := replyCode(l); ok && n == code && l[3] == ' ' {
			return code, c.first, nil
		}
	}
}

// readLine returns one line without its line ending, valid until the next
// read. A line longer than the reader's buffer is an error: no server of
// the benchmark sends one.
func (c *Conn) readLine() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("reading reply: %w", err)
	}
	line = bytes.TrimSuffix(line, []byte{'\n'})
	return bytes.TrimSuffix(line, []byte{'\r'}), nil
}

// replyCode parses the three-digit code at the start of a reply line that
// is followed by ' ' or '-'.
func replyCode(line []byte) (int, bool) {
	if len(line) < 4 || (line[3] != ' ' && line[3] != '-') {
		return 0, false
	}
	n := 0
	for _, b := range line[:3] {
		if b < '0' || b > '9' {
			return 0, false
		}
		n = n*10 + int(b-'0')
	}
	return n, true
}

// Login logs in anonymously and switches to binary mode, as every real
// client does before a transfer. It accepts a server that asks for no
// password (vsftpd's no_anon_password) and one that does.
func (c *Conn) Login() error {
	code, text, err := c.Cmd("USER", "anonymous")
	if err != nil {
		return err
	}
	switch code {
	case codeLoggedIn:
	case codeNeedPassword:
		if err := c.do(codeLoggedIn, "PASS", "bench@"); err != nil {
			return err
		}
	default:
		return fmt.Errorf("USER anonymous: got %d %s", code, text)
	}
	return c.do(codeOK, "TYPE", "I")
}

// Quit sends QUIT, waits for the server's 221, and closes the connection.
func (c *Conn) Quit() error {
	err := c.do(codeClosing, "QUIT", "")
	return errors.Join(err, c.nc.Close())
}

// Noop sends one NOOP and waits for its 200.
func (c *Conn) Noop() error { return c.do(codeOK, "NOOP", "") }

// Size asks the server for a file's size (RFC 3659), to check an upload.
func (c *Conn) Size(name string) (int64, error) {
	code, text, err := c.Cmd("SIZE", name)
	if err != nil {
		return 0, err
	}
	if code != codeFileStatus {
		return 0, fmt.Errorf("SIZE %s: got %d %s", name, code, text)
	}
	var n int64
	for _, b := range text {
		if b < '0' || b > '9' {
			return 0, fmt.Errorf("SIZE %s: bad size %q", name, text)
		}
		n = n*10 + int64(b-'0')
	}
	return n, nil
}

// Delete removes a file (DELE).
func (c *Conn) Delete(name string) error { return c.do(codeFileActionOK, "DELE", name) }

// Passive asks for a data port with PASV (epsv false) or EPSV and returns
// the address to connect to: the 227's address as given, or the control
// connection's address with the 229's port.
func (c *Conn) Passive(epsv bool) (netip.AddrPort, error) {
	verb, want := "PASV", codeEnteringPASV
	if epsv {
		verb, want = "EPSV", codeEnteringEPSV
	}
	code, text, err := c.Cmd(verb, "")
	if err != nil {
		return netip.AddrPort{}, err
	}
	if code != want {
		return netip.AddrPort{}, fmt.Errorf("%s: got %d %s", verb, code, text)
	}
	if epsv {
		port, err := parseEPSV(text)
		if err != nil {
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(c.peer.Addr(), port), nil
	}
	ap, err := parsePASV(text)
	if err == nil && c.pasvHost.IsValid() {
		ap = netip.AddrPortFrom(c.pasvHost, ap.Port())
	}
	return ap, err
}

// Timing is the breakdown of one transfer, as the client sees it.
type Timing struct {
	Passive time.Duration // PASV/EPSV sent until its reply
	Connect time.Duration // data connection dialled until established
	Open    time.Duration // RETR/STOR sent until 150
	Data    time.Duration // 150 until the data connection's end
	Final   time.Duration // the data connection's end until 226
	// Done is when the 226 arrived, on the wall clock, so that the
	// orchestrator can line it up with the gateway's log.
	Done time.Time
	// Addr is where the data connection went.
	Addr netip.AddrPort
}

// Total is the whole transfer, PASV/EPSV sent until 226.
func (t Timing) Total() time.Duration { return t.Passive + t.Connect + t.Open + t.Data + t.Final }

// Retr downloads name through a new passive data connection, reading it in
// buf-sized pieces and throwing the bytes away, and returns the number of
// bytes received.
func (c *Conn) Retr(ctx context.Context, name string, epsv bool, buf []byte) (int64, Timing, error) {
	return c.RetrTo(ctx, name, epsv, buf, nil)
}

// RetrTo is Retr that also writes every byte received to sink, when it is
// not nil (a hash, to check the bytes). Under PROT P the data connection's
// TLS handshake is part of the Data phase.
func (c *Conn) RetrTo(ctx context.Context, name string, epsv bool, buf []byte, sink io.Writer) (int64, Timing, error) {
	var t Timing
	t0 := time.Now()
	ap, err := c.Passive(epsv)
	if err != nil {
		return 0, t, err
	}
	t1 := time.Now()
	dc, err := c.dialData(ctx, ap)
	if err != nil {
		return 0, t, err
	}
	defer dc.Close()
	t2 := time.Now()
	if err := c.opening("RETR", name); err != nil {
		return 0, t, err
	}
	t3 := time.Now()
	if err := dc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, t, err
	}
	rd, err := c.protect(ctx, dc)
	if err != nil {
		return 0, t, err
	}
	var n int64
	for {
		m, err := rd.Read(buf)
		n += int64(m)
		if sink != nil && m > 0 {
			_, _ = sink.Write(buf[:m])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, t, fmt.Errorf("reading %s from %s: %w", name, ap, err)
		}
	}
	dc.Close()
	t4 := time.Now()
	if err := c.transferDone("RETR " + name); err != nil {
		return n, t, err
	}
	t5 := time.Now()
	t = Timing{Passive: t1.Sub(t0), Connect: t2.Sub(t1), Open: t3.Sub(t2), Data: t4.Sub(t3), Final: t5.Sub(t4), Done: t5, Addr: ap}
	return n, t, nil
}

// Stor uploads size bytes, written from chunk over and over, each time
// with its offset in its first 8 bytes (stampOffset), to name through a
// new passive data connection.
func (c *Conn) Stor(ctx context.Context, name string, epsv bool, size int64, chunk []byte) (Timing, error) {
	var t Timing
	t0 := time.Now()
	ap, err := c.Passive(epsv)
	if err != nil {
		return t, err
	}
	t1 := time.Now()
	dc, err := c.dialData(ctx, ap)
	if err != nil {
		return t, err
	}
	defer dc.Close()
	t2 := time.Now()
	if err := c.opening("STOR", name); err != nil {
		return t, err
	}
	t3 := time.Now()
	if err := dc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return t, err
	}
	wr, err := c.protect(ctx, dc)
	if err != nil {
		return t, err
	}
	for left := size; left > 0; {
		p := chunk
		if int64(len(p)) > left {
			p = p[:left]
		}
		stampOffset(p, size-left)
		m, err := wr.Write(p)
		left -= int64(m)
		if err != nil {
			return t, fmt.Errorf("writing %s to %s: %w", name, ap, err)
		}
	}
	// Half-close (under TLS a close_notify first), then wait for the
	// server's close: closing outright could reset the connection if
	// anything were left unread.
	if wr != net.Conn(dc) {
		if err := wr.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			return t, fmt.Errorf("closing %s upload's TLS: %w", name, err)
		}
	}
	if err := dc.CloseWrite(); err != nil {
		return t, fmt.Errorf("closing %s upload: %w", name, err)
	}
	if _, err := io.Copy(io.Discard, wr); err != nil {
		return t, fmt.Errorf("waiting for the server to close %s: %w", name, err)
	}
	dc.Close()
	t4 := time.Now()
	if err := c.transferDone("STOR " + name); err != nil {
		return t, err
	}
	t5 := time.Now()
	return Timing{Passive: t1.Sub(t0), Connect: t2.Sub(t1), Open: t3.Sub(t2), Data: t4.Sub(t3), Final: t5.Sub(t4), Done: t5, Addr: ap}, nil
}

// stampOffset writes off into p's first 8 bytes (big-endian), if it has
// them: so that no two pieces of an upload are alike, and a relay that
// dropped one and repeated another would change the upload's hash.
func stampOffset(p []byte, off int64) {
	if len(p) >= 8 {
		binary.BigEndian.PutUint64(p, uint64(off))
	}
}

// opening sends a transfer command and waits for its preliminary reply.
func (c *Conn) opening(verb, name string) error {
	code, text, err := c.Cmd(verb, name)
	if err != nil {
		return err
	}
	if code != codeOpening && code != codeAlreadyOpen {
		return fmt.Errorf("%s %s: got %d %s, want 150", verb, name, code, text)
	}
	return nil
}

// transferDone reads the final reply of a transfer.
func (c *Conn) transferDone(what string) error {
	if err := c.nc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	code, text, err := c.reply()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if code != codeTransferDone && code != codeFileActionOK {
		return fmt.Errorf("%s: got %d %s, want 226", what, code, text)
	}
	return nil
}

func (c *Conn) dialData(ctx context.Context, ap netip.AddrPort) (*net.TCPConn, error) {
	nc, err := c.dialer.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("data connection to %s: %w", ap, err)
	}
	return nc.(*net.TCPConn), nil
}

// parsePASV reads h1,h2,h3,h4,p1,p2 out of a 227 text, with or without the
// parentheses, every number bounds-checked.
func parsePASV(text []byte) (netip.AddrPort, error) {
	s := text
	if i := bytes.IndexByte(s, '('); i >= 0 {
		s = s[i+1:]
	} else if i := bytes.IndexAny(s, "0123456789"); i >= 0 {
		s = s[i:]
	}
	var v [6]int
	for k := range v {
		j := 0
		for j < len(s) && j < 4 && s[j] >= '0' && s[j] <= '9' {
			v[k] = v[k]*10 + int(s[j]-'0')
			j++
		}
		if j == 0 || j > 3 || v[k] > 255 {
			return netip.AddrPort{}, fmt.Errorf("malformed 227 %q", text)
		}
		s = s[j:]
		if k < 5 {
			if len(s) == 0 || s[0] != ',' {
				return netip.AddrPort{}, fmt.Errorf("malformed 227 %q", text)
			}
			s = s[1:]
		}
	}
	addr := netip.AddrFrom4([4]byte{byte(v[0]), byte(v[1]), byte(v[2]), byte(v[3])})
	port := uint16(v[4]<<8 | v[5])
	if port == 0 {
		return netip.AddrPort{}, fmt.Errorf("227 with port 0: %q", text)
	}
	return netip.AddrPortFrom(addr, port), nil
}

// parseEPSV reads the port out of a 229 text "(<d><d><d>port<d>)", any
// delimiter (RFC 2428 section 3).
func parseEPSV(text []byte) (uint16, error) {
	i := bytes.IndexByte(text, '(')
	if i < 0 || len(text) < i+6 {
		return 0, fmt.Errorf("malformed 229 %q", text)
	}
	s := text[i+1:]
	d := s[0]
	if s[1] != d || s[2] != d {
		return 0, fmt.Errorf("malformed 229 %q", text)
	}
	s = s[3:]
	port, j := 0, 0
	for j < len(s) && j < 6 && s[j] >= '0' && s[j] <= '9' {
		port = port*10 + int(s[j]-'0')
		j++
	}
	if j == 0 || port == 0 || port > 65535 || j >= len(s) || s[j] != d {
		return 0, fmt.Errorf("malformed 229 %q", text)
	}
	return uint16(port), nil
}
