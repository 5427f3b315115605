package interop

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// These parsers are the test's own oracle for what went over the wire,
// written independently of proxy/ftp on purpose: checking the proxy's
// rewrite with the proxy's own parser would prove nothing.

// reply227 finds a 227 reply line; the six numbers are taken from the
// first run of six comma-separated numbers, as RFC 1123 4.1.2.6 advises.
var reply227 = regexp.MustCompile(`(?m)^227[ -][^\r\n]*?(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})`)

// parse227s returns every address announced by a 227 reply in replies.
func parse227s(replies string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, m := range reply227.FindAllStringSubmatch(replies, -1) {
		var n [6]int
		ok := true
		for i := range n {
			v, err := strconv.Atoi(m[i+1])
			if err != nil || v > 255 {
				ok = false
			}
			n[i] = v
		}
		if !ok {
			continue
		}
		addr := netip.AddrFrom4([4]byte{byte(n[0]), byte(n[1]), byte(n[2]), byte(n[3])})
		out = append(out, netip.AddrPortFrom(addr, uint16(n[4]<<8|n[5])))
	}
	return out
}

// parse229s returns the port of every 229 reply in replies. RFC 2428 lets
// the delimiter be any printable character, so it is read, not assumed.
func parse229s(replies string) []uint16 {
	var out []uint16
	for _, line := range strings.Split(replies, "\n") {
		if !strings.HasPrefix(line, "229") || len(line) < 4 || (line[3] != ' ' && line[3] != '-') {
			continue
		}
		i := strings.IndexByte(line, '(')
		if i < 0 || i+4 >= len(line) {
			continue
		}
		d := line[i+1]
		if d < 33 || d > 126 || line[i+2] != d || line[i+3] != d {
			continue
		}
		rest := line[i+4:]
		j := strings.IndexByte(rest, d)
		if j <= 0 || j+1 >= len(rest) || rest[j+1] != ')' {
			continue
		}
		p, err := strconv.Atoi(rest[:j])
		if err != nil || p < 1 || p > 65535 {
			continue
		}
		out = append(out, uint16(p))
	}
	return out
}

// sentCommand reports whether cmds (the client-to-server side of a control
// channel) contains the command verb, alone or with arguments.
func sentCommand(cmds, verb string) bool {
	re := regexp.MustCompile(`(?mi)^` + regexp.QuoteMeta(verb) + `( [^\r\n]*)?\r?$`)
	return re.MatchString(cmds)
}

func TestParse227(t *testing.T) {
	got := parse227s("150 x\r\n227 Entering Passive Mode (203,0,113,2,156,64).\r\n227 =192,0,2,10,1,2\r\n227 (300,1,1,1,1,1)\r\n")
	want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:40000"), netip.MustParseAddrPort("192.0.2.10:258")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestParse229(t *testing.T) {
	got := parse229s("229 Entering Extended Passive Mode (|||40001|)\r\n229 x (!!!5!)\r\n229 (|||0|)\r\n229 (||40002|)\r\n229 (|||99999|)\r\n")
	if fmt.Sprint(got) != "[40001 5]" {
		t.Errorf("got %v", got)
	}
}

func TestSentCommand(t *testing.T) {
	cmds := "USER a\r\nepsv\r\nEPSV ALL\r\nPASVX\r\n"
	if !sentCommand(cmds, "EPSV") || sentCommand(cmds, "PASV") {
		t.Errorf("sentCommand wrong on %q", cmds)
	}
}

// rawRetr is the "raw" client of the matrix: a Go FTP client that downloads
// lab.DataFile while giving the test control between the passive reply and
// the data connection. Real clients connect at once, and servers stop
// listening after the first data connection, so only here can an intruder
// try the announced port while it still leads somewhere.
//
// It runs inside namespace ns, from local, to host:21. After the 227/229
// reply it calls between with the announced address; if between returns a
// connection, that is used as the data connection, otherwise rawRetr dials
// the announced address itself. It returns the hex SHA-256 of the data.
func rawRetr(ctx context.Context, l *lab.Lab, ns, local, host, user, password string, epsv bool,
	between func(announced netip.AddrPort) (net.Conn, error)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	nc, err := l.Dial(ctx, ns, local, net.JoinHostPort(host, "21"))
	if err != nil {
		return "", fmt.Errorf("dial control: %w", err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	c := textproto.NewConn(nc)
	// send sends one command (none if format is empty: just read a reply)
	// and reads the reply, which must match expect (a code or its first
	// digit, as textproto does it).
	send := func(expect int, format string, args ...any) (string, error) {
		what := "greeting"
		if format != "" {
			what = strings.SplitN(format, " ", 2)[0]
			if _, err := c.Cmd(format, args...); err != nil {
				return "", fmt.Errorf("%s: %w", what, err)
			}
		}
		_, msg, err := c.ReadResponse(expect)
		if err != nil {
			return msg, fmt.Errorf("%s: %w", what, err)
		}
		return msg, nil
	}
	if _, err := send(220, ""); err != nil {
		return "", err
	}
	if _, err := c.Cmd("USER %s", user); err != nil {
		return "", err
	}
	switch code, msg, err := c.ReadResponse(0); {
	case err != nil:
		return "", fmt.Errorf("USER: %w", err)
	case code == 331:
		if _, err := send(230, "PASS %s", password); err != nil {
			return "", err
		}
	case code != 230:
		return "", fmt.Errorf("USER: %d %s", code, msg)
	}
	if _, err := send(200, "TYPE I"); err != nil {
		return "", err
	}
	var announced netip.AddrPort
	if epsv {
		msg, err := send(229, "EPSV")
		if err != nil {
			return "", err
		}
		ports := parse229s("229 " + msg)
		if len(ports) != 1 {
			return "", fmt.Errorf("EPSV: cannot parse %q", msg)
		}
		announced = netip.AddrPortFrom(netip.MustParseAddr(host), ports[0])
	} else {
		msg, err := send(227, "PASV")
		if err != nil {
			return "", err
		}
		addrs := parse227s("227 " + msg)
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
		data, err = l.Dial(ctx, ns, local, announced.String())
		if err != nil {
			return "", fmt.Errorf("dial data %v: %w", announced, err)
		}
	}
	defer data.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = data.SetDeadline(dl)
	}
	if _, err := send(1, "RETR %s", lab.DataFile); err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, data); err != nil {
		return "", fmt.Errorf("reading data: %w", err)
	}
	data.Close()
	if _, err := send(2, ""); err != nil {
		return "", fmt.Errorf("after RETR: %w", err)
	}
	_, _ = send(2, "QUIT")
	return hex.EncodeToString(h.Sum(nil)), nil
}
