// Package ftpctl is test infrastructure: the control side of the load
// clients that test/scale and test/scaleout drive, with reply reading,
// commands checked by code, and 227/229 parsers of the tests' own, so that
// a test does not share a bug with pasvgate's codec (proxy/ftp). Every
// read and write is bounded by the Conn's timeout.
package ftpctl

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Conn is one control connection.
type Conn struct {
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// New wraps c, reading replies through a buffer of bufSize bytes (a few
// hundred keep thousands of idle sessions cheap), each read and write
// bounded by timeout.
func New(c net.Conn, bufSize int, timeout time.Duration) *Conn {
	return &Conn{c: c, r: bufio.NewReaderSize(c, bufSize), timeout: timeout}
}

// Reply reads one reply, multi-line ones whole (at most 100 lines), and
// returns its code and its last line.
func (f *Conn) Reply() (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(f.timeout))
	for range 100 {
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

// Expect reads a reply and checks its code is one of want.
func (f *Conn) Expect(want ...int) (string, error) {
	code, line, err := f.Reply()
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

// Cmd sends a command and checks the reply's code.
func (f *Conn) Cmd(line string, want ...int) (string, error) {
	_ = f.c.SetWriteDeadline(time.Now().Add(f.timeout))
	if _, err := fmt.Fprintf(f.c, "%s\r\n", line); err != nil {
		return "", fmt.Errorf("sending %s: %w", line, err)
	}
	r, err := f.Expect(want...)
	if err != nil {
		return r, fmt.Errorf("%s: %w", line, err)
	}
	return r, nil
}

var (
	pasvRE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	epsvRE = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
)

// Parse227 reads the data address of a 227 reply line.
func Parse227(line string) (netip.AddrPort, error) {
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

// Parse229 reads the port of a 229 reply line.
func Parse229(line string) (uint16, error) {
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
