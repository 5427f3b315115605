package load

import (
	"net/netip"
	"testing"
)

// The bench trusts these parsers to tell it where the gateway sent the
// client; a wrong parse would make its path checks meaningless.

func TestParsePASV(t *testing.T) {
	for _, tc := range []struct {
		text string
		want string // "" means an error
	}{
		{"Entering Passive Mode (203,0,113,2,156,66).", "203.0.113.2:40002"},
		{"Entering Passive Mode (192,0,2,10,117,48)", "192.0.2.10:30000"},
		{"=192,0,2,10,117,48", "192.0.2.10:30000"}, // no parentheses
		{"Entering Passive Mode (256,0,2,10,117,48)", ""},
		{"Entering Passive Mode (192,0,2,10,117)", ""},
		{"Entering Passive Mode (192,0,2,10,0,0)", ""},
		{"Entering Passive Mode (1920,0,2,10,1,1)", ""},
		{"Entering Passive Mode ()", ""},
		{"", ""},
	} {
		got, err := parsePASV([]byte(tc.text))
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("parsePASV(%q) = %v, want an error", tc.text, got)
		case tc.want != "" && (err != nil || got != netip.MustParseAddrPort(tc.want)):
			t.Errorf("parsePASV(%q) = %v, %v, want %s", tc.text, got, err, tc.want)
		}
	}
}

func TestParseEPSV(t *testing.T) {
	for _, tc := range []struct {
		text string
		want uint16 // 0 means an error
	}{
		{"Entering Extended Passive Mode (|||40001|)", 40001},
		{"Entering Extended Passive Mode (!!!30000!)", 30000},
		{"Entering Extended Passive Mode (|||65536|)", 0},
		{"Entering Extended Passive Mode (|||0|)", 0},
		{"Entering Extended Passive Mode (||40001|)", 0},
		{"Entering Extended Passive Mode (|||40001)", 0},
		{"Entering Extended Passive Mode (|||", 0},
		{"(", 0},
	} {
		got, err := parseEPSV([]byte(tc.text))
		if (tc.want == 0) != (err != nil) || got != tc.want {
			t.Errorf("parseEPSV(%q) = %d, %v, want %d", tc.text, got, err, tc.want)
		}
	}
}

func TestReplyCode(t *testing.T) {
	for line, want := range map[string]int{"226 ok": 226, "230-Welcome": 230, "22 x": -1, "2260": -1, "abc ": -1, "": -1} {
		got, ok := replyCode([]byte(line))
		if (want < 0) == ok || (ok && got != want) {
			t.Errorf("replyCode(%q) = %d, %v, want %d", line, got, ok, want)
		}
	}
}
