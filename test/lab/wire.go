package lab

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// These parsers are the tests' own oracle for what went over the wire,
// written independently of proxy/ftp on purpose: checking the proxy's
// rewrite with the proxy's own parser would prove nothing. They read the
// text Stream returns.

// reply227 finds a 227 reply line; the six numbers are taken from the
// first run of six comma-separated numbers, as RFC 1123 4.1.2.6 advises.
var reply227 = regexp.MustCompile(`(?m)^227[ -][^\r\n]*?(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})`)

// Parse227s returns every address announced by a 227 reply in replies.
func Parse227s(replies string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, m := range reply227.FindAllStringSubmatch(replies, -1) {
		if ap, ok := hostPort6(m[1:7]); ok {
			out = append(out, ap)
		}
	}
	return out
}

// hostPort6 turns the six decimal numbers of a 227 reply or a PORT
// command into an address and port; ok is false if one is over 255.
func hostPort6(f []string) (netip.AddrPort, bool) {
	var n [6]int
	for i := range n {
		v, err := strconv.Atoi(f[i])
		if err != nil || v > 255 {
			return netip.AddrPort{}, false
		}
		n[i] = v
	}
	a := netip.AddrFrom4([4]byte{byte(n[0]), byte(n[1]), byte(n[2]), byte(n[3])})
	return netip.AddrPortFrom(a, uint16(n[4]<<8|n[5])), true
}

// Parse229s returns the port of every 229 reply in replies. RFC 2428 lets
// the delimiter be any printable character, so it is read, not assumed.
func Parse229s(replies string) []uint16 {
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

// SentCommand reports whether cmds (the client-to-server side of a control
// channel) contains the command verb, alone or with arguments.
func SentCommand(cmds, verb string) bool {
	re := regexp.MustCompile(`(?mi)^` + regexp.QuoteMeta(verb) + `( [^\r\n]*)?\r?$`)
	return re.MatchString(cmds)
}

// ActiveCommand is one PORT or EPRT command read from a control channel.
type ActiveCommand struct {
	// Verb is "PORT" or "EPRT".
	Verb string
	// Addr is the address and port it names.
	Addr netip.AddrPort
}

// String formats the command for reports.
func (c ActiveCommand) String() string { return c.Verb + " " + c.Addr.String() }

// portLine is a PORT command with its six numbers.
var portLine = regexp.MustCompile(`(?i)^PORT (\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})$`)

// ParseActive returns every well-formed PORT and EPRT command in cmds (a
// client-to-server stream), in order. Malformed ones are left out: a test
// that must see that none reached a server counts command lines instead.
func ParseActive(cmds string) []ActiveCommand {
	var out []ActiveCommand
	for _, line := range strings.Split(cmds, "\n") {
		line = strings.TrimRight(line, "\r")
		if m := portLine.FindStringSubmatch(line); m != nil {
			if ap, ok := hostPort6(m[1:7]); ok {
				out = append(out, ActiveCommand{"PORT", ap})
			}
			continue
		}
		if len(line) < 6 || !strings.EqualFold(line[:5], "EPRT ") {
			continue
		}
		// RFC 2428: any printable delimiter, read from the argument.
		d := line[5:6]
		f := strings.Split(line[5:], d)
		if len(f) != 5 || f[0] != "" || f[4] != "" || (f[1] != "1" && f[1] != "2") {
			continue
		}
		a, err := netip.ParseAddr(f[2])
		p, perr := strconv.Atoi(f[3])
		if err != nil || perr != nil || p < 1 || p > 65535 || (f[1] == "1") != a.Is4() {
			continue
		}
		out = append(out, ActiveCommand{"EPRT", netip.AddrPortFrom(a, uint16(p))})
	}
	return out
}

// Connect is a connection attempt seen in a capture: a SYN without ACK,
// from an address to an address and port.
type Connect struct {
	From netip.Addr
	To   netip.AddrPort
}

// String formats the connection for reports.
func (c Connect) String() string { return fmt.Sprintf("%v->%v", c.From, c.To) }

// Connects returns the connection attempts in pkts, in order: who tried to
// connect where. SYNs gives only the where.
func Connects(pkts []Packet) []Connect {
	var out []Connect
	for _, p := range pkts {
		if p.SYN && !p.ACK {
			out = append(out, Connect{p.Src.Addr(), p.Dst})
		}
	}
	return out
}
