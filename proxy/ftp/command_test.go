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
		{"PASV    ", VerbPASV, "<nil>"},
		{"PORT 192,0,2,1,4,1", VerbPORT, "192,0,2,1,4,1"},
		{"PORT   192,0,2,1,4,1 ", VerbPORT, "192,0,2,1,4,1 "},
		{"EPRT |2|2001:db8::1|5282|", VerbEPRT, "|2|2001:db8::1|5282|"},
		{"ccc", VerbCCC, "<nil>"},
		{"STOR a b  c", VerbSTOR, "a b  c"},
		{"RETR  x", VerbRETR, "x"},
		{"MLSD", VerbMLSD, "<nil>"},
		{"XPWD", VerbOther, "<nil>"},
		{"SITE CHMOD 755 x", VerbOther, "CHMOD 755 x"},
		{"", VerbOther, "<nil>"},
		{" ", VerbOther, "<nil>"},
		{" USER x", VerbOther, "USER x"},
		{"USERS x", VerbOther, "x"},
		{"US", VerbOther, "<nil>"},
		{"PORT\t1,2,3,4,5,6", VerbOther, "<nil>"},
		{"CCC\x00", VerbOther, "<nil>"},
		{"CC\x00", VerbOther, "<nil>"},
		{"PO\xd2T", VerbOther, "<nil>"},
		{"P0RT x", VerbOther, "x"},
		{"QUIT\r", VerbOther, "<nil>"},
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
