package ftp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// apOK is what a test expects a parser to accept; "" means it must refuse.
func apOK(s string) netip.AddrPort {
	if s == "" {
		return netip.AddrPort{}
	}
	return netip.MustParseAddrPort(s)
}

func TestParsePASV(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		// What real servers send (the text after "227").
		{"vsftpd", " Entering Passive Mode (192,0,2,10,117,48).", "192.0.2.10:30000"},
		{"proftpd", " Entering Passive Mode (192,0,2,10,156,64).", "192.0.2.10:40000"},
		{"pure-ftpd", " Entering Passive Mode (192,0,2,10,195,80)", "192.0.2.10:50000"},
		{"IIS without parentheses", " Entering Passive Mode 192,0,2,10,4,1", "192.0.2.10:1025"},
		{"IIS with a dot", " Entering Passive Mode 192,0,2,10,4,1.", "192.0.2.10:1025"},
		{"equals sign", " =192,0,2,10,4,1", "192.0.2.10:1025"},
		{"filezilla", " Entering Passive Mode (203,0,113,5,200,13)", "203.0.113.5:51213"},
		{"multi-line joined", "-Entering Passive Mode\n227 (192,0,2,10,117,48)", "192.0.2.10:30000"},
		{"multi-line, address first", "-(192,0,2,10,117,48)\n227 OK", "192.0.2.10:30000"},
		{"leading zeros", " (192,000,002,010,004,001)", "192.0.2.10:1025"},
		{"numbers before it are text", " 2024 Entering Passive Mode 5 (192,0,2,10,4,1)", "192.0.2.10:1025"},
		{"bare list", "192,0,2,10,4,1", "192.0.2.10:1025"},
		{"highest values", " (255,255,255,255,255,255)", "255.255.255.255:65535"},
		{"unspecified host", " (0,0,0,0,4,1)", "0.0.0.0:1025"},
		{"port 1", " (192,0,2,10,0,1)", "192.0.2.10:1"},
		{"unclosed parenthesis", " (192,0,2,10,4,1", "192.0.2.10:1025"},
		{"text after", " (192,0,2,10,4,1) 1,2,3,4,5,6", "192.0.2.10:1025"},
		{"colon", " Entering Passive Mode:192,0,2,10,4,1", "192.0.2.10:1025"},
		{"multi-line joined, no parentheses", "-Entering Passive Mode\n227 192,0,2,10,4,1", "192.0.2.10:1025"},
		{"code-like number at text start", "227 192,0,2,10,4,1", "192.0.2.10:1025"},

		{"empty", "", ""},
		{"no address", " Entering Passive Mode.", ""},
		{"octet 256", " (256,0,2,10,4,1)", ""},
		{"octet 999", " (192,0,2,999,4,1)", ""},
		{"port byte 256", " (192,0,2,10,256,1)", ""},
		{"port byte 300", " (192,0,2,10,4,300)", ""},
		{"negative", " (-1,0,2,10,4,1)", ""},
		{"negative later", " (192,0,2,-10,4,1)", ""},
		{"plus sign", " (+192,0,2,10,4,1)", ""},
		{"empty field", " (192,,0,2,10,4,1)", ""},
		{"empty first field", " (,192,0,2,10,4)", ""},
		{"trailing comma", " (192,0,2,10,4,1,)", ""},
		{"five numbers", " (192,0,2,10,4)", ""},
		{"seven numbers", " (192,0,2,10,4,1,7)", ""},
		{"port 0", " (192,0,2,10,0,0)", ""},
		{"four digits", " (0192,0,2,10,4,1)", ""},
		{"huge digit run", " (" + strings.Repeat("9", 10000) + ",0,2,10,4,1)", ""},
		{"huge last number", " (192,0,2,10,4," + strings.Repeat("0", 100) + "1)", ""},
		{"space inside", " (192, 0, 2, 10, 4, 1)", ""},
		{"space in a number", " (19 2,0,2,10,4,1)", ""},
		{"non-ASCII digits", " (\u0661\u0669\u0662,0,2,10,4,1)", ""},
		{"fullwidth digits", " (\uff11,0,2,10,4,1)", ""},
		{"NUL inside", " (192,0\x00,2,10,4,1)", ""},
		{"NUL as separator", " (192\x000,2,10,4,1)", ""},
		{"dots", " (192.0.2.10,4,1)", ""},
		{"semicolons", " (192;0;2;10;4;1)", ""},
		{"decimal before", " 1.5,0,2,10,4,1", ""},
		{"hex", " (0xc0,0,2,10,4,1)", ""},
		{"letter before", " Mode192,0,2,10,4,1", ""},
		{"number before", " Entering Passive Mode 5 192,0,2,10,4,1", ""},
		{"four-digit code-like number", "\n2270 192,0,2,10,4,1", ""},
		{"code-like number mid-line", " x 227 192,0,2,10,4,1", ""},
		{"first list is wrong", " 1,2 (192,0,2,10,4,1)", ""},
		{"first list across lines is wrong", "-port 4,1\n227 (192,0,2,10,4,1)", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePASV([]byte(tt.text))
			want := apOK(tt.want)
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrMalformed) {
					t.Errorf("ParsePASV(%.60q) = %v, %v; want an ErrMalformed", tt.text, got, err)
				}
				if got.IsValid() {
					t.Errorf("ParsePASV(%.60q) returned %v with its error", tt.text, got)
				}
				return
			}
			if err != nil || got != want {
				t.Errorf("ParsePASV(%q) = %v, %v; want %v", tt.text, got, err, want)
			}
		})
	}
}

func TestParsePORT(t *testing.T) {
	tests := []struct {
		name, arg, want string
	}{
		{"plain", "198,51,100,7,195,81", "198.51.100.7:50001"},
		{"spaces around", "  198,51,100,7,195,81  ", "198.51.100.7:50001"},
		{"leading zeros", "198,051,100,007,195,081", "198.51.100.7:50001"},
		{"low port", "198,51,100,7,0,25", "198.51.100.7:25"},

		{"empty", "", ""},
		{"only spaces", "   ", ""},
		{"port 0", "198,51,100,7,0,0", ""},
		{"octet 256", "198,51,256,7,195,81", ""},
		{"port byte 256", "198,51,100,7,256,81", ""},
		{"five numbers", "198,51,100,7,195", ""},
		{"seven numbers", "198,51,100,7,195,81,1", ""},
		{"trailing comma", "198,51,100,7,195,81,", ""},
		{"empty field", "198,51,,100,7,195", ""},
		{"negative", "198,51,100,7,-1,81", ""},
		{"plus", "+198,51,100,7,195,81", ""},
		{"four digits", "198,51,100,7,195,0081", ""},
		{"huge digit run", strings.Repeat("1", 5000) + ",51,100,7,195,81", ""},
		{"parentheses", "(198,51,100,7,195,81)", ""},
		{"text after", "198,51,100,7,195,81 x", ""},
		{"tab around", "\t198,51,100,7,195,81", ""},
		{"space inside", "198, 51,100,7,195,81", ""},
		{"NUL after", "198,51,100,7,195,81\x00", ""},
		{"non-ASCII digit", "198,51,100,7,195,8\u0661", ""},
		{"dotted", "198.51.100.7,195,81", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePORT([]byte(tt.arg))
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrMalformed) || got.IsValid() {
					t.Errorf("ParsePORT(%.60q) = %v, %v; want an ErrMalformed", tt.arg, got, err)
				}
				return
			}
			if want := apOK(tt.want); err != nil || got != want {
				t.Errorf("ParsePORT(%q) = %v, %v; want %v", tt.arg, got, err, want)
			}
		})
	}
}

func TestParseEPSV(t *testing.T) {
	tests := []struct {
		name, text string
		want       uint16 // 0: must refuse
	}{
		{"RFC 2428 example", " Entering Extended Passive Mode (|||6446|)", 6446},
		{"vsftpd", " Entering Extended Passive Mode (|||30000|)", 30000},
		{"pure-ftpd", " Extended Passive mode OK (|||50000|)", 50000},
		{"no parentheses", " Entering Extended Passive Mode |||6446|", 6446},
		{"bare", "|||6446|", 6446},
		{"other delimiter", " (!!!6446!)", 6446},
		{"tilde", " (~~~6446~)", 6446},
		{"parenthesis as delimiter", " ((((6446()", 0},
		{"dots before", " Entering Extended Passive Mode.. (|||6446|)", 6446},
		{"lowest", " (|||1|)", 1},
		{"highest", " (|||65535|)", 65535},
		{"leading zeros", " (|||06446|)", 6446},
		{"multi-line joined", "-Entering Extended Passive Mode\n229 (|||6446|)", 6446},

		{"empty", "", 0},
		{"no port", " Entering Extended Passive Mode", 0},
		{"port 0", " (|||0|)", 0},
		{"port 65536", " (|||65536|)", 0},
		{"port 99999", " (|||99999|)", 0},
		{"six digits", " (|||006446|)", 0},
		{"huge digit run", " (|||" + strings.Repeat("9", 10000) + "|)", 0},
		{"mixed delimiters", " (|!|6446|)", 0},
		{"closing delimiter differs", " (|||6446!)", 0},
		{"no closing delimiter", " (|||6446)", 0},
		{"cut off", " (|||6446", 0},
		{"four delimiters before", " (||||6446|)", 0},
		{"two delimiters after", " (|||6446||)", 0},
		{"two delimiters before", " (||6446|)", 0},
		{"negative", " (|||-6446|)", 0},
		{"plus", " (|||+6446|)", 0},
		{"space in port", " (|||64 46|)", 0},
		{"space delimiter", " (   6446 )", 0},
		{"NUL delimiter", " (\x00\x00\x006446\x00)", 0},
		{"DEL delimiter", " (\x7f\x7f\x7f6446\x7f)", 0},
		{"high-bit delimiter", " (\xff\xff\xff6446\xff)", 0},
		{"digit delimiter", " (1116446 1)", 0},
		{"address given", " (|1|192.0.2.1|6446|)", 0},
		{"non-ASCII digits", " (|||\u0666\u0664\u0664\u0666|)", 0},
		{"first candidate commits", " ...1 (|||6446|)", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEPSV([]byte(tt.text))
			if tt.want == 0 {
				if err == nil || !errors.Is(err, ErrMalformed) || got != 0 {
					t.Errorf("ParseEPSV(%.60q) = %v, %v; want an ErrMalformed", tt.text, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseEPSV(%q) = %v, %v; want %v", tt.text, got, err, tt.want)
			}
		})
	}
}

func TestParseEPRT(t *testing.T) {
	tests := []struct {
		name, arg, want string
	}{
		{"RFC 2428 IPv4", "|1|132.235.1.2|6275|", "132.235.1.2:6275"},
		{"RFC 2428 IPv6", "|2|1080::8:800:200C:417A|5282|", "[1080::8:800:200c:417a]:5282"},
		{"documentation IPv4", "|1|198.51.100.7|50001|", "198.51.100.7:50001"},
		{"full IPv6", "|2|2001:db8:0:0:0:0:0:1|50001|", "[2001:db8::1]:50001"},
		{"IPv4-compatible IPv6", "|2|::198.51.100.7|50001|", "[::c633:6407]:50001"},
		{"other delimiter", "!1!198.51.100.7!50001!", "198.51.100.7:50001"},
		{"colon delimiter for IPv4", ":1:198.51.100.7:50001:", "198.51.100.7:50001"},
		{"dot delimiter for IPv6", ".2.2001:db8::1.50001.", "[2001:db8::1]:50001"},
		{"spaces around", " |1|198.51.100.7|50001| ", "198.51.100.7:50001"},
		{"port 1", "|1|198.51.100.7|1|", "198.51.100.7:1"},
		{"port 65535", "|1|198.51.100.7|65535|", "198.51.100.7:65535"},
		{"port with leading zero", "|1|198.51.100.7|01025|", "198.51.100.7:1025"},

		{"empty", "", ""},
		{"one delimiter", "|", ""},
		{"proto 3", "|3|198.51.100.7|50001|", ""},
		{"proto 0", "|0|198.51.100.7|50001|", ""},
		{"proto 01", "|01|198.51.100.7|50001|", ""},
		{"empty proto", "||198.51.100.7|50001|", ""},
		{"IPv6 in proto 1", "|1|2001:db8::1|50001|", ""},
		{"IPv4 in proto 2", "|2|198.51.100.7|50001|", ""},
		{"IPv4-mapped in proto 2", "|2|::ffff:198.51.100.7|50001|", ""},
		{"IPv4-mapped in proto 1", "|1|::ffff:198.51.100.7|50001|", ""},
		{"zone", "|2|fe80::1%eth0|50001|", ""},
		{"zone in proto 1", "|1|198.51.100.7%eth0|50001|", ""},
		{"IPv6 in brackets", "|2|[2001:db8::1]|50001|", ""},
		{"octet 256", "|1|198.51.100.256|50001|", ""},
		{"octal-looking octet", "|1|198.51.100.07|50001|", ""},
		{"three octets", "|1|198.51.100|50001|", ""},
		{"five octets", "|1|198.51.100.7.1|50001|", ""},
		{"empty address", "|1||50001|", ""},
		{"hostname", "|1|localhost|50001|", ""},
		{"port 0", "|1|198.51.100.7|0|", ""},
		{"port 65536", "|1|198.51.100.7|65536|", ""},
		{"six digit port", "|1|198.51.100.7|050001|", ""},
		{"huge port", "|1|198.51.100.7|" + strings.Repeat("9", 10000) + "|", ""},
		{"empty port", "|1|198.51.100.7||", ""},
		{"negative port", "|1|198.51.100.7|-1|", ""},
		{"port with space", "|1|198.51.100.7|50 01|", ""},
		{"port with NUL", "|1|198.51.100.7|5000\x00|", ""},
		{"non-ASCII port", "|1|198.51.100.7|\u0665\u0660|", ""},
		{"mixed delimiters", "|1!198.51.100.7|50001|", ""},
		{"delimiter in a field", "|1|198.51|100.7|50001|", ""},
		{"dot delimiter for IPv4", ".1.198.51.100.7.50001.", ""},
		{"colon delimiter for IPv6", ":2:2001:db8::1:50001:", ""},
		{"missing last delimiter", "|1|198.51.100.7|50001", ""},
		{"extra field", "|1|198.51.100.7|50001|x|", ""},
		{"text after", "|1|198.51.100.7|50001|x", ""},
		{"space delimiter", " 1 198.51.100.7 50001 ", ""},
		{"NUL delimiter", "\x001\x00198.51.100.7\x0050001\x00", ""},
		{"high-bit delimiter", "\xff1\xff198.51.100.7\xff50001\xff", ""},
		{"very long address", "|2|" + strings.Repeat("0", 1000) + "::1|50001|", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEPRT([]byte(tt.arg))
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrMalformed) || got.IsValid() {
					t.Errorf("ParseEPRT(%.60q) = %v, %v; want an ErrMalformed", tt.arg, got, err)
				}
				return
			}
			if want := apOK(tt.want); err != nil || got != want {
				t.Errorf("ParseEPRT(%q) = %v, %v; want %v", tt.arg, got, err, want)
			}
		})
	}
}

func TestAppendAddresses(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.5:51213")
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"PASV", AppendPASV([]byte("x"), v4), "x227 Entering Passive Mode (203,0,113,5,200,13).\r\n"},
		{"PASV mapped", AppendPASV(nil, netip.MustParseAddrPort("[::ffff:203.0.113.5]:51213")), "227 Entering Passive Mode (203,0,113,5,200,13).\r\n"},
		{"PASV IPv6 is a caller bug", AppendPASV(nil, netip.MustParseAddrPort("[2001:db8::1]:1025")), "227 Entering Passive Mode (0,0,0,0,4,1).\r\n"},
		{"PASV zero value", AppendPASV(nil, netip.AddrPort{}), "227 Entering Passive Mode (0,0,0,0,0,0).\r\n"},
		{"EPSV", AppendEPSV([]byte("x"), 6446), "x229 Entering Extended Passive Mode (|||6446|)\r\n"},
		{"PORT", AppendPORT([]byte("x"), v4), "xPORT 203,0,113,5,200,13\r\n"},
		{"PORT IPv6 is a caller bug", AppendPORT(nil, netip.MustParseAddrPort("[2001:db8::1]:1025")), "PORT 0,0,0,0,4,1\r\n"},
		{"EPRT IPv4", AppendEPRT([]byte("x"), v4), "xEPRT |1|203.0.113.5|51213|\r\n"},
		{"EPRT IPv6", AppendEPRT(nil, netip.MustParseAddrPort("[2001:db8::1]:1025")), "EPRT |2|2001:db8::1|1025|\r\n"},
		{"EPRT mapped", AppendEPRT(nil, netip.MustParseAddrPort("[::ffff:203.0.113.5]:1025")), "EPRT |1|203.0.113.5|1025|\r\n"},
		{"EPRT zone dropped", AppendEPRT(nil, netip.MustParseAddrPort("[fe80::1%eth0]:1025")), "EPRT |2|fe80::1|1025|\r\n"},
		{"EPRT zero value", AppendEPRT(nil, netip.AddrPort{}), "EPRT |1|0.0.0.0|0|\r\n"},
	}
	for _, tt := range tests {
		if string(tt.got) != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

// roundTrip checks that what the Append functions write reads back, through
// the same Reader, ReplyState and ParseCommand the proxy uses, as the value
// that was written.
func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.1:1", "192.0.2.10:30000", "255.255.255.255:65535", "10.0.0.1:256"} {
		ap := netip.MustParseAddrPort(s)
		if got, err := reparsePASV(AppendPASV(nil, ap)); err != nil || got != ap {
			t.Errorf("PASV %v: read back %v, %v", ap, got, err)
		}
		if got, err := reparsePORT(AppendPORT(nil, ap)); err != nil || got != ap {
			t.Errorf("PORT %v: read back %v, %v", ap, got, err)
		}
	}
	for _, s := range []string{"192.0.2.10:30000", "[2001:db8::1]:1", "[::]:65535", "[fe80::1:2:3:4]:2121"} {
		ap := netip.MustParseAddrPort(s)
		if got, err := reparseEPRT(AppendEPRT(nil, ap)); err != nil || got != ap {
			t.Errorf("EPRT %v: read back %v, %v", ap, got, err)
		}
	}
	for _, p := range []uint16{1, 21, 6446, 65535} {
		if got, err := reparseEPSV(AppendEPSV(nil, p)); err != nil || got != p {
			t.Errorf("EPSV %v: read back %v, %v", p, got, err)
		}
	}
}

// readOne reads the single line b must hold.
func readOne(b []byte) ([]byte, error) {
	r := NewReader(strings.NewReader(string(b)), 0)
	_, text, err := r.ReadLine()
	if err != nil {
		return nil, err
	}
	if _, _, err := r.ReadLine(); err == nil {
		return nil, errors.New("more than one line")
	}
	return text, nil
}

// replyText reads a one-line reply and returns its text after the code.
func replyText(b []byte, want int) ([]byte, error) {
	text, err := readOne(b)
	if err != nil {
		return nil, err
	}
	var s ReplyState
	code, last, err := s.Feed(text)
	if err != nil || code != want || !last {
		return nil, errors.New("not a whole reply with the right code")
	}
	return text[3:], nil
}

func commandArg(b []byte, want Verb) ([]byte, error) {
	text, err := readOne(b)
	if err != nil {
		return nil, err
	}
	verb, arg := ParseCommand(text)
	if verb != want {
		return nil, errors.New("wrong verb")
	}
	return arg, nil
}

func reparsePASV(b []byte) (netip.AddrPort, error) {
	text, err := replyText(b, CodeEnteringPassive)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ParsePASV(text)
}

func reparseEPSV(b []byte) (uint16, error) {
	text, err := replyText(b, CodeEnteringExtPassive)
	if err != nil {
		return 0, err
	}
	return ParseEPSV(text)
}

func reparsePORT(b []byte) (netip.AddrPort, error) {
	arg, err := commandArg(b, VerbPORT)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ParsePORT(arg)
}

func reparseEPRT(b []byte) (netip.AddrPort, error) {
	arg, err := commandArg(b, VerbEPRT)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ParseEPRT(arg)
}
