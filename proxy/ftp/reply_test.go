package ftp

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

type feedResult struct {
	code int
	last bool
	err  bool
}

func TestReplyState(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  []feedResult
	}{
		{"single line", []string{"220 Ready"}, []feedResult{{220, true, false}}},
		{"code alone", []string{"200"}, []feedResult{{200, true, false}}},
		{"empty text after code", []string{"200 "}, []feedResult{{200, true, false}}},
		{"multi-line FEAT", []string{"211-Features:", " EPSV", " PASV", "211 End"},
			[]feedResult{{211, false, false}, {211, false, false}, {211, false, false}, {211, true, false}}},
		{"other codes inside are text", []string{"220-Welcome", "230 not the end", "220-still open", "220 Ready"},
			[]feedResult{{220, false, false}, {220, false, false}, {220, false, false}, {220, true, false}}},
		{"ends on the bare code", []string{"227-Entering", "227"}, []feedResult{{227, false, false}, {227, true, false}}},
		{"empty and junk lines inside", []string{"250-a", "", "\xff\x00junk", "250 done"},
			[]feedResult{{250, false, false}, {250, false, false}, {250, false, false}, {250, true, false}}},
		{"code prefix is not the end", []string{"226-a", "2260 x", "226x", "226 b"},
			[]feedResult{{226, false, false}, {226, false, false}, {226, false, false}, {226, true, false}}},
		{"one reply after another", []string{"150 go", "226 done"}, []feedResult{{150, true, false}, {226, true, false}}},

		{"empty line", []string{""}, []feedResult{{0, false, true}}},
		{"two digits", []string{"22"}, []feedResult{{0, false, true}}},
		{"code 0xx", []string{"099 x"}, []feedResult{{0, false, true}}},
		{"code 6xx", []string{"600 x"}, []feedResult{{0, false, true}}},
		{"four digits", []string{"2200 x"}, []feedResult{{0, false, true}}},
		{"letter in code", []string{"2x0 x"}, []feedResult{{0, false, true}}},
		{"tab after code", []string{"220\tx"}, []feedResult{{0, false, true}}},
		{"leading space", []string{" 220 x"}, []feedResult{{0, false, true}}},
		{"non-ASCII digit", []string{"2\u0662\u0660 x"}, []feedResult{{0, false, true}}},
		{"bad line leaves state alone", []string{"nonsense", "331 Password"}, []feedResult{{0, false, true}, {331, true, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s ReplyState
			for i, l := range tt.lines {
				code, last, err := s.Feed([]byte(l))
				got := feedResult{code, last, err != nil}
				if got != tt.want[i] {
					t.Fatalf("Feed(%q) = %v, %v, %v; want %+v", l, code, last, err, tt.want[i])
				}
				if err != nil && !errors.Is(err, ErrMalformed) {
					t.Errorf("Feed(%q) error %v does not wrap ErrMalformed", l, err)
				}
				if open := !last && err == nil; s.InReply() != open {
					t.Errorf("after %q InReply = %v, want %v", l, s.InReply(), open)
				}
			}
		})
	}
}

func TestAppendReply(t *testing.T) {
	tests := []struct {
		code int
		text string
		want string
	}{
		{CodeCantOpenData, "Can't open data connection.", "425 Can't open data connection.\r\n"},
		{CodeSyntaxError, "", "500 \r\n"},
		{CodeArgSyntaxError, "bad\r\n200 injected\n", "501 bad  200 injected \r\n"},
		{CodeFileNotAvailable, "a\xffb", "550 a\xff\xffb\r\n"},
	}
	for _, tt := range tests {
		got := AppendReply([]byte("x"), tt.code, tt.text)
		if string(got) != "x"+tt.want {
			t.Errorf("AppendReply(%d, %q) = %q, want %q", tt.code, tt.text, got[1:], tt.want)
			continue
		}
		// What the proxy says must read back as one whole reply.
		_, text, err := NewReader(strings.NewReader(string(got[1:])), 0).ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		var s ReplyState
		if code, last, err := s.Feed(text); code != tt.code || !last || err != nil {
			t.Errorf("reading back %q: Feed = %d, %v, %v", got[1:], code, last, err)
		}
	}
}

func TestAppendReplyFitsTheLineLimit(t *testing.T) {
	for _, text := range []string{strings.Repeat("x", 10000), strings.Repeat("\xff", 10000)} {
		line := AppendReply(nil, 500, text)
		if len(line) > DefaultMaxLine {
			t.Fatalf("reply of %d bytes exceeds the %d-byte line limit", len(line), DefaultMaxLine)
		}
		if _, _, err := NewReader(bytes.NewReader(line), 0).ReadLine(); err != nil {
			t.Fatalf("a long reply does not read back: %v", err)
		}
	}
}
