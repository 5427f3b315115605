package ftp

import (
	"testing"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		text string
		verb Verb
		arg  string // "<nil>" for a nil argument
	}{
		{"USER anonymous", VerbUSER, "anonymous"},
		{"user anonymous", VerbUSER, "anonymous"},
		{"uSeR anonymous", VerbUSER, "anonymous"},
		{"PASS", VerbPASS, "<nil>"},
		{"PASV ", VerbPASV, "<nil>"},
		// The argument starts one byte after the verb, as in every server:
		// a file name may start or end with spaces.
		{"PASV    ", VerbPASV, "   "},
		{"PORT 192,0,2,1,4,1", VerbPORT, "192,0,2,1,4,1"},
		{"PORT   192,0,2,1,4,1 ", VerbPORT, "  192,0,2,1,4,1 "},
		{"EPRT |2|2001:db8::1|5282|", VerbEPRT, "|2|2001:db8::1|5282|"},
		{"ccc", VerbCCC, "<nil>"},
		{"STOR a b  c", VerbSTOR, "a b  c"},
		{"RETR  x", VerbRETR, " x"},
		{"RETR x ", VerbRETR, "x "},
		{"MLSD", VerbMLSD, "<nil>"},
		{"XPWD", VerbOther, "<nil>"},
		{"SITE CHMOD 755 x", VerbOther, "CHMOD 755 x"},
		{"", VerbOther, "<nil>"},
		{" ", VerbOther, "<nil>"},
		// No verb: a line that starts with whitespace.
		{" USER x", VerbOther, "USER x"},
		{"\tPORT 1,2,3,4,5,6", VerbOther, "PORT 1,2,3,4,5,6"},
		{"USERS x", VerbOther, "x"},
		{"US", VerbOther, "<nil>"},
		// Any whitespace ends the verb, as in ProFTPD: issue 12's verb
		// smuggling.
		{"PORT\t1,2,3,4,5,6", VerbPORT, "1,2,3,4,5,6"},
		{"port\t1,2,3,4,5,6", VerbPORT, "1,2,3,4,5,6"},
		{"EPRT\t|1|192.0.2.99|22|", VerbEPRT, "|1|192.0.2.99|22|"},
		{"PORT\v1,2,3,4,5,6", VerbPORT, "1,2,3,4,5,6"},
		{"PORT\f1,2,3,4,5,6", VerbPORT, "1,2,3,4,5,6"},
		{"PORT\r1,2,3,4,5,6", VerbPORT, "1,2,3,4,5,6"},
		{"PORT \t1,2,3,4,5,6", VerbPORT, "\t1,2,3,4,5,6"},
		{"PASV\t", VerbPASV, "<nil>"},
		{"EPSV\tALL", VerbEPSV, "ALL"},
		{"AUTH\tTLS", VerbAUTH, "TLS"},
		{"LPSV\t", VerbLPSV, "<nil>"},
		{"REIN\t", VerbREIN, "<nil>"},
		{"RETR\tx", VerbRETR, "x"},
		{"QUIT\r", VerbQUIT, "<nil>"},
		// Not whitespace: these stay in the verb, which is then unknown.
		{"CCC\x00", VerbOther, "<nil>"},
		{"CC\x00", VerbOther, "<nil>"},
		{"PORT\x001,2,3,4,5,6", VerbOther, "<nil>"},
		{"PORT\xa01,2,3,4,5,6", VerbOther, "<nil>"},
		{"PORT\x851,2,3,4,5,6", VerbOther, "<nil>"},
		{"PORT_1,2,3,4,5,6", VerbOther, "<nil>"},
		{"PORT,1,2,3,4,5,6", VerbOther, "<nil>"},
		{"PO\xd2T", VerbOther, "<nil>"},
		{"P0RT x", VerbOther, "x"},
		{"\xff\xf4ABOR", VerbOther, "<nil>"},
	}
	for _, tt := range tests {
		verb, arg := ParseCommand([]byte(tt.text))
		got := string(arg)
		if arg == nil {
			got = "<nil>"
		}
		if verb != tt.verb || got != tt.arg {
			t.Errorf("ParseCommand(%q) = %v, %q; want %v, %q", tt.text, verb, got, tt.verb, tt.arg)
		}
	}
}

func TestCommandNoVerb(t *testing.T) {
	for text, want := range map[string]bool{
		"": true, " ": true, " USER x": true, "\tPORT 1,2,3,4,5,6": true, "\vNOOP": true,
		"NOOP": false, "x": false, "\xffNOOP": false, "PORT\t1,2,3,4,5,6": false,
	} {
		if got := ParseLine(nil, []byte(text)).NoVerb(); got != want {
			t.Errorf("%q: NoVerb() = %v, want %v", text, got, want)
		}
	}
}

func TestCommandBadVerb(t *testing.T) {
	for text, want := range map[string]bool{
		"NOOP": false, "noop x": false, "XSHA256 f": false, "PORT\t1,2,3,4,5,6": false, "": false,
		"FOO_BAR": true, "P@SW": true, "PORT,1,2,3,4,5,6": true, "PORT_1": true, "R\xc3\xa9TR x": true,
		"NOOP\x00": true, "CWD/x": true,
	} {
		if got := ParseLine(nil, []byte(text)).BadVerb(); got != want {
			t.Errorf("%q: BadVerb() = %v, want %v", text, got, want)
		}
	}
}

func TestCommandCanonical(t *testing.T) {
	for text, want := range map[string]bool{
		"NOOP": true, "noop": true, "RETR x": true, "RETR  x": true, "\xff\xf4ABOR": true,
		"NOOP ": false, "NOOP\t": false, "RETR\tx": false, "PORT\v1,2,3,4,5,6": false, "SITE\fx": false,
	} {
		if got := ParseLine(nil, []byte(text)).Canonical(); got != want {
			t.Errorf("%q: Canonical() = %v, want %v", text, got, want)
		}
	}
}

func TestAppendCanonical(t *testing.T) {
	tests := []struct{ text, want string }{
		{"PORT\t192,0,2,99,0,22", "PORT 192,0,2,99,0,22\r\n"},
		{"port 1,2,3,4,5,6", "PORT 1,2,3,4,5,6\r\n"},
		{"EPRT\f|1|192.0.2.99|22|", "EPRT |1|192.0.2.99|22|\r\n"},
		{"pasv", "PASV\r\n"},
		{"PASV\t", "PASV\r\n"},
		{"epsv\tall", "EPSV all\r\n"},
		{"Retr\t a file \t", "RETR  a file \t\r\n"},
		{"RETR \xffname", "RETR \xff\xffname\r\n"},
		{"REIN", "REIN\r\n"},
		{"noop\t", "NOOP\r\n"},
		{"site\tchmod 644 x", "SITE chmod 644 x\r\n"},
		{"xsha256\tf", "XSHA256 f\r\n"},
	}
	for _, tt := range tests {
		c := ParseLine(nil, []byte(tt.text))
		if got := string(c.AppendCanonical(nil)); got != tt.want {
			t.Errorf("canonical %q = %q, want %q", tt.text, got, tt.want)
		}
	}
}

func TestParseCommandAllVerbs(t *testing.T) {
	for v := VerbOther + 1; v < numVerbs; v++ {
		for _, word := range []string{v.String(), lower(v.String())} {
			if got, arg := ParseCommand([]byte(word + " x")); got != v || string(arg) != "x" {
				t.Errorf("ParseCommand(%q) = %v, %q; want %v, \"x\"", word+" x", got, arg, v)
			}
		}
	}
}

func lower(s string) string {
	b := []byte(s)
	for i := range b {
		b[i] |= 0x20
	}
	return string(b)
}

func TestParseCommandDoesNotAllocate(t *testing.T) {
	text := []byte("retr some/file.tar.gz")
	allocs := testing.AllocsPerRun(1000, func() {
		if v, _ := ParseCommand(text); v != VerbRETR {
			t.Fatal(v)
		}
	})
	if allocs != 0 {
		t.Errorf("ParseCommand allocates %v times, want 0", allocs)
	}
}

func TestVerb(t *testing.T) {
	transfer := map[Verb]bool{VerbRETR: true, VerbSTOR: true, VerbSTOU: true, VerbAPPE: true, VerbLIST: true, VerbNLST: true, VerbMLSD: true}
	seen := map[string]bool{}
	for v := VerbOther; v < numVerbs; v++ {
		if v.IsTransfer() != transfer[v] {
			t.Errorf("%v.IsTransfer() = %v", v, v.IsTransfer())
		}
		if s := v.String(); s == "" || seen[s] {
			t.Errorf("Verb(%d).String() = %q: empty or repeated", v, s)
		}
		seen[v.String()] = true
	}
	if s := VerbOther.String(); s != "OTHER" {
		t.Errorf("VerbOther.String() = %q", s)
	}
	if s := Verb(200).String(); s != "Verb(200)" {
		t.Errorf("Verb(200).String() = %q", s)
	}
	if Verb(200).IsTransfer() {
		t.Error("Verb(200).IsTransfer() = true")
	}
}
