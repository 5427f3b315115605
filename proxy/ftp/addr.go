package ftp

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
)

// malformed builds every parse error here. Data addresses come from the
// peer the proxy trusts least with them, so the parsers fail closed: a
// value comes back only when every octet is 0-255, every port 1-65535,
// and the text admits one reading.
func malformed(what, why string) error {
	return fmt.Errorf("parsing %s: %s: %w", what, why, ErrMalformed)
}

// ParsePASV finds the data address in a 227 reply's text: the whole text
// after the code, possibly several lines' text joined with "\n".
//
// RFC 959 fixes no place for the address, so (as RFC 1123 4.1.2.6 asks)
// ParsePASV takes the first list of comma-separated numbers in the text,
// with or without parentheses, and that list must be exactly
// h1,h2,h3,h4,p1,p2: six numbers of one to three digits (leading zeros
// such as "010" are accepted, as some servers send them), each 0-255, no
// signs, no spaces, and a port other than 0; nothing just before it may
// read as part of its first number. Anything wrong with the first list is
// an error rather than a reason to look further: a reply whose first list
// is no address has not said where its data port is.
func ParsePASV(text []byte) (netip.AddrPort, error) {
	const what = "227 reply"
	i := numberList(text)
	if i < 0 {
		return netip.AddrPort{}, malformed(what, "no h1,h2,h3,h4,p1,p2")
	}
	if why := beforeList(text[:i]); why != "" {
		return netip.AddrPort{}, malformed(what, why)
	}
	ap, _, why := hostPort(text[i:])
	if why != "" {
		return netip.AddrPort{}, malformed(what, why)
	}
	return ap, nil
}

// AppendPASV appends the reply "227 Entering Passive Mode
// (h1,h2,h3,h4,p1,p2).\r\n". The caller guarantees ap is IPv4 (an
// IPv4-mapped IPv6 address is unmapped). Any other address is a programming
// error; it is written as 0,0,0,0 rather than panic, and never as some
// other host.
func AppendPASV(dst []byte, ap netip.AddrPort) []byte {
	dst = append(dst, "227 Entering Passive Mode ("...)
	dst = appendHostPort(dst, ap)
	return append(dst, ").\r\n"...)
}

// ParsePORT parses a PORT argument "h1,h2,h3,h4,p1,p2", spaces around it
// allowed, with the same bounds as ParsePASV: six numbers of one to three
// digits, each 0-255, port not 0.
func ParsePORT(arg []byte) (netip.AddrPort, error) {
	const what = "PORT argument"
	b := bytes.Trim(arg, " ")
	ap, n, why := hostPort(b)
	if why == "" && n != len(b) {
		why = "bytes after h1,h2,h3,h4,p1,p2"
	}
	if why != "" {
		return netip.AddrPort{}, malformed(what, why)
	}
	return ap, nil
}

// AppendPORT appends the command "PORT h1,h2,h3,h4,p1,p2\r\n". The caller
// guarantees ap is IPv4, as for AppendPASV.
func AppendPORT(dst []byte, ap netip.AddrPort) []byte {
	dst = append(dst, "PORT "...)
	dst = appendHostPort(dst, ap)
	return append(dst, '\r', '\n')
}

// ParseEPSV parses the port in a 229 reply's text (RFC 2428):
// "(<d><d><d><port><d>)" where <d> is one delimiter, any ASCII 33-126 but a
// digit, the same four times, and port is 1-65535 in at most five digits.
// Text around it and missing parentheses are tolerated ("Entering Extended
// Passive Mode (|||6446|)"). The first three equal delimiters followed by a
// digit commit the parse: if what follows is wrong, it is an error.
func ParseEPSV(text []byte) (uint16, error) {
	const what = "229 reply"
	for i := 0; i+3 < len(text); i++ {
		d := text[i]
		if !isDelim(d) || isDigit(d) || text[i+1] != d || text[i+2] != d || !isDigit(text[i+3]) {
			continue
		}
		if i > 0 && text[i-1] == d {
			return 0, malformed(what, "more than three delimiters before the port")
		}
		port, n := decimal(text[i+3:], 5)
		end := i + 3 + n
		switch {
		case n > 5:
			return 0, malformed(what, "port longer than five digits")
		case end == len(text) || text[end] != d:
			return 0, malformed(what, "port not closed by the delimiter")
		case end+1 < len(text) && text[end+1] == d:
			return 0, malformed(what, "more than one delimiter after the port")
		case port == 0 || port > 65535:
			return 0, malformed(what, "port out of range")
		}
		return uint16(port), nil
	}
	return 0, malformed(what, "no (|||port|)")
}

// AppendEPSV appends the reply "229 Entering Extended Passive Mode
// (|||port|)\r\n". port should not be 0.
func AppendEPSV(dst []byte, port uint16) []byte {
	dst = append(dst, "229 Entering Extended Passive Mode (|||"...)
	dst = strconv.AppendUint(dst, uint64(port), 10)
	return append(dst, "|)\r\n"...)
}

// ParseEPRT parses an EPRT argument "<d><proto><d><addr><d><port><d>" (RFC
// 2428), spaces around it allowed. The delimiter may be any ASCII 33-126
// that occurs nowhere in the fields. proto is "1" with a dotted-quad IPv4
// address or "2" with a textual IPv6 address that is not IPv4-mapped and
// has no zone; netip's parser decides the text, so IPv4 octets with
// leading zeros (octal to some parsers) are refused. port is 1-65535 in at
// most five digits.
func ParseEPRT(arg []byte) (netip.AddrPort, error) {
	const what = "EPRT argument"
	b := bytes.Trim(arg, " ")
	if len(b) < 2 || !isDelim(b[0]) || b[len(b)-1] != b[0] || bytes.Count(b, b[:1]) != 4 {
		return netip.AddrPort{}, malformed(what, "not <d>proto<d>address<d>port<d>")
	}
	body := b[1 : len(b)-1] // holds exactly two delimiters
	i := bytes.IndexByte(body, b[0])
	j := i + 1 + bytes.IndexByte(body[i+1:], b[0])
	proto, host, portText := body[:i], body[i+1:j], body[j+1:]

	port, n := decimal(portText, 5)
	if n == 0 || n > 5 || n != len(portText) || port == 0 || port > 65535 {
		return netip.AddrPort{}, malformed(what, "port not 1-65535")
	}
	if len(host) > len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255") {
		return netip.AddrPort{}, malformed(what, "address too long")
	}
	a, err := netip.ParseAddr(string(host))
	if err != nil {
		return netip.AddrPort{}, malformed(what, "bad address")
	}
	switch string(proto) {
	case "1":
		if !a.Is4() {
			return netip.AddrPort{}, malformed(what, "protocol 1 without an IPv4 address")
		}
	case "2":
		if !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return netip.AddrPort{}, malformed(what, "protocol 2 without a plain IPv6 address")
		}
	default:
		return netip.AddrPort{}, malformed(what, "protocol not 1 or 2")
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}

// AppendEPRT appends the command "EPRT |1|a.b.c.d|port|\r\n", or "|2|" with
// the IPv6 text for an IPv6 address. An IPv4-mapped address is written as
// IPv4 and a zone is dropped, because the peer can use neither; an invalid
// address is a programming error, written as 0.0.0.0.
func AppendEPRT(dst []byte, ap netip.AddrPort) []byte {
	a, proto := ap.Addr().Unmap().WithZone(""), "EPRT |2|"
	if !a.Is6() {
		a, proto = netip.AddrFrom4(ipv4(a)), "EPRT |1|"
	}
	dst = append(dst, proto...)
	dst = a.AppendTo(dst)
	dst = append(dst, '|')
	dst = strconv.AppendUint(dst, uint64(ap.Port()), 10)
	return append(dst, "|\r\n"...)
}

// numberList returns where the first run of two or more comma-separated
// numbers in b starts, or -1. A lone number ("227", a year) is text.
func numberList(b []byte) int {
	for i := 0; i < len(b); {
		if !isDigit(b[i]) {
			i++
			continue
		}
		j := i
		for j < len(b) && isDigit(b[j]) {
			j++
		}
		if j+1 < len(b) && b[j] == ',' && isDigit(b[j+1]) {
			return i
		}
		i = j
	}
	return -1
}

// beforeList says what is wrong with the text before an address list, if
// anything: nothing next to it may read as part of its first number, such
// as a sign, a dot, a letter ("0xc0,...") or digits before a space ("19
// 2,..."). Three digits that start a line are the reply code of a joined
// multi-line reply ("\n227 192,0,2,10,4,1"), not a number.
func beforeList(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	switch c := b[len(b)-1]; {
	case c == '-' || c == '+':
		return "sign before the address"
	case c == '.' || c == ',':
		return "separator before the address"
	case 'a' <= c|0x20 && c|0x20 <= 'z':
		return "letter before the address"
	}
	t := bytes.TrimRight(b, " ")
	d := len(t)
	for d > 0 && isDigit(t[d-1]) {
		d--
	}
	if d < len(t) && (len(t)-d != 3 || d > 0 && t[d-1] != '\n') {
		return "number before the address"
	}
	return ""
}

// hostPort parses the RFC 959 host-port "h1,h2,h3,h4,p1,p2" at the start
// of b. It returns how many bytes it used, or why it failed.
func hostPort(b []byte) (ap netip.AddrPort, used int, why string) {
	var n [6]byte
	i := 0
	for k := range n {
		if k > 0 {
			if i == len(b) || b[i] != ',' {
				return netip.AddrPort{}, 0, "fewer than six numbers"
			}
			i++
		}
		v, d := decimal(b[i:], 3)
		switch {
		case d == 0:
			return netip.AddrPort{}, 0, "empty number"
		case d > 3:
			return netip.AddrPort{}, 0, "number longer than three digits"
		case v > 255:
			return netip.AddrPort{}, 0, "number above 255"
		}
		n[k] = byte(v)
		i += d
	}
	if i < len(b) && b[i] == ',' {
		return netip.AddrPort{}, 0, "more than six numbers"
	}
	port := uint16(n[4])<<8 | uint16(n[5])
	if port == 0 {
		return netip.AddrPort{}, 0, "port 0"
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), port), i, ""
}

func appendHostPort(dst []byte, ap netip.AddrPort) []byte {
	for _, o := range ipv4(ap.Addr()) {
		dst = strconv.AppendUint(dst, uint64(o), 10)
		dst = append(dst, ',')
	}
	dst = strconv.AppendUint(dst, uint64(ap.Port()>>8), 10)
	dst = append(dst, ',')
	return strconv.AppendUint(dst, uint64(ap.Port()&0xff), 10)
}

// ipv4 returns the four bytes of an IPv4 or IPv4-mapped address, and
// 0.0.0.0 for anything else, so that formatting is total.
func ipv4(a netip.Addr) [4]byte {
	if a = a.Unmap(); a.Is4() {
		return a.As4()
	}
	return [4]byte{}
}

// decimal reads the ASCII digits at the start of b. It stops after max+1
// of them, so a flood of digits costs nothing and cannot overflow: d > max
// means too many.
func decimal(b []byte, max int) (v, d int) {
	for d < len(b) && d <= max && isDigit(b[d]) {
		v = v*10 + int(b[d]-'0')
		d++
	}
	return v, d
}

// isDelim reports whether c may delimit RFC 2428 fields.
func isDelim(c byte) bool { return 33 <= c && c <= 126 }
