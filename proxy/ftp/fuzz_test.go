package ftp

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
	"testing/iotest"
)

// Seeds live in testdata/fuzz/<FuzzName>, so plain `go test` runs them.

func FuzzReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		max := int(limit % 512) // small limits reach the over-long paths; 0 means the default
		whole := readAll(t, NewReader(bytes.NewReader(data), max))
		bytewise := readAll(t, NewReader(iotest.OneByteReader(bytes.NewReader(data)), max))
		if !sameLines(whole, bytewise) {
			t.Fatalf("reads of one byte change the lines:\n whole %v\nbytes %v", whole, bytewise)
		}
		if max == 0 {
			max = DefaultMaxLine
		}
		if want := refLines(data, max); !sameLines(whole, want) {
			t.Fatalf("lines differ from the reference:\n got %v\nwant %v", whole, want)
		}

		var kept, got []byte // what must come out as raw lines, and what did
		for rest := data; ; {
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				break // a trailing partial line is dropped
			}
			if i+1 <= max {
				kept = append(kept, rest[:i+1]...)
			}
			rest = rest[i+1:]
		}
		for _, l := range whole {
			if l.err != nil {
				continue
			}
			got = append(got, l.raw...)
			if len(l.raw) > max || l.raw[len(l.raw)-1] != '\n' || bytes.IndexByte([]byte(l.text), '\n') >= 0 {
				t.Fatalf("bad line %v with limit %d", l, max)
			}
			if back, err := readOne(AppendLine(nil, []byte(l.text))); err != nil || string(back) != l.text {
				t.Fatalf("AppendLine(%q) reads back as %q, %v", l.text, back, err)
			}
		}
		if !bytes.Equal(got, kept) {
			t.Fatalf("raw lines %q, want %q", got, kept)
		}
	})
}

// refLines is what a Reader must return for data, written out the slow
// way, apart from the code under test.
func refLines(data []byte, max int) []line {
	var out []line
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		n := i + 1 // the line's length, terminator included
		if i < 0 {
			n = len(data)
		}
		switch {
		case i < 0 && n >= max, i >= 0 && n > max:
			out = append(out, tooLong)
			if n > 2*max {
				out = append(out, endless)
			}
		case i < 0:
			out = append(out, cutShort)
		default:
			out = append(out, line{raw: string(data[:i+1]), text: refText(data[:i])})
		}
		if i < 0 {
			break
		}
		data = data[i+1:]
	}
	return append(out, eof)
}

// refText reads Telnet (RFC 854, 855) one byte at a time with a state
// machine, where the Reader skips ahead with IndexByte.
func refText(b []byte) string {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	const (
		data = iota
		iac
		option
		sub
		subIAC
	)
	var out []byte
	state := data
	for _, c := range b {
		switch state {
		case data:
			if c == 255 {
				state = iac
			} else {
				out = append(out, c)
			}
		case iac:
			state = data
			switch {
			case c == 255:
				out = append(out, 255)
			case c >= 251:
				state = option
			case c == 250:
				state = sub
			case c < 240:
				out = append(out, c)
			}
		case option:
			state = data
		case sub:
			if c == 255 {
				state = subIAC
			}
		case subIAC:
			state = sub
			if c == 240 {
				state = data
			}
		}
	}
	return string(out)
}

func FuzzParsePASV(f *testing.F) {
	f.Fuzz(func(t *testing.T, text []byte) {
		ap, err := ParsePASV(text)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || ap.IsValid() {
				t.Fatalf("ParsePASV(%q) = %v, %v", text, ap, err)
			}
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("ParsePASV(%q) accepted %v", text, ap)
		}
		if back, err := reparsePASV(AppendPASV(nil, ap)); err != nil || back != ap {
			t.Fatalf("%v reads back as %v, %v", ap, back, err)
		}
	})
}

func FuzzParseEPSV(f *testing.F) {
	f.Fuzz(func(t *testing.T, text []byte) {
		port, err := ParseEPSV(text)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || port != 0 {
				t.Fatalf("ParseEPSV(%q) = %v, %v", text, port, err)
			}
			return
		}
		if port == 0 {
			t.Fatalf("ParseEPSV(%q) accepted port 0", text)
		}
		if back, err := reparseEPSV(AppendEPSV(nil, port)); err != nil || back != port {
			t.Fatalf("%v reads back as %v, %v", port, back, err)
		}
	})
}

func FuzzParsePORT(f *testing.F) {
	f.Fuzz(func(t *testing.T, arg []byte) {
		ap, err := ParsePORT(arg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || ap.IsValid() {
				t.Fatalf("ParsePORT(%q) = %v, %v", arg, ap, err)
			}
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("ParsePORT(%q) accepted %v", arg, ap)
		}
		if back, err := reparsePORT(AppendPORT(nil, ap)); err != nil || back != ap {
			t.Fatalf("%v reads back as %v, %v", ap, back, err)
		}
		// PORT is strict: apart from spaces around it and leading zeros,
		// what it accepts is exactly what AppendPORT writes.
		fields := bytes.Split(bytes.Trim(arg, " "), []byte(","))
		for i, f := range fields {
			if fields[i] = bytes.TrimLeft(f, "0"); len(fields[i]) == 0 {
				fields[i] = []byte("0")
			}
		}
		if got, want := string(bytes.Join(fields, []byte(","))), string(AppendPORT(nil, ap)); "PORT "+got+"\r\n" != want {
			t.Fatalf("ParsePORT(%q) accepted %q, which is not %q", arg, got, want)
		}
	})
}

func FuzzParseEPRT(f *testing.F) {
	f.Fuzz(func(t *testing.T, arg []byte) {
		ap, err := ParseEPRT(arg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || ap.IsValid() {
				t.Fatalf("ParseEPRT(%q) = %v, %v", arg, ap, err)
			}
			return
		}
		a := ap.Addr()
		if !(a.Is4() || a.Is6() && !a.Is4In6() && a.Zone() == "") || ap.Port() == 0 {
			t.Fatalf("ParseEPRT(%q) accepted %v", arg, ap)
		}
		if back, err := reparseEPRT(AppendEPRT(nil, ap)); err != nil || back != ap {
			t.Fatalf("%v reads back as %v, %v", ap, back, err)
		}
	})
}

func FuzzReplyState(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var s ReplyState
		for _, l := range bytes.Split(data, []byte("\n")) {
			before := s
			code, last, err := s.Feed(l)
			if err != nil {
				if !errors.Is(err, ErrMalformed) || s != before || before.InReply() || code != 0 || last {
					t.Fatalf("Feed(%q) in %+v = %d, %v, %v, now %+v", l, before, code, last, err, s)
				}
				continue
			}
			if code < 100 || code > 599 || s.InReply() == last {
				t.Fatalf("Feed(%q) in %+v = %d, %v; now %+v", l, before, code, last, s)
			}
			if before.InReply() && code != before.open {
				t.Fatalf("Feed(%q) inside a %d reply gave %d", l, before.open, code)
			}
			// Whatever opens or ends a reply starts with its code.
			if (!before.InReply() || last) && (len(l) < 3 || string(l[:3]) != strconv.Itoa(code)) {
				t.Fatalf("Feed(%q) in %+v = %d, %v", l, before, code, last)
			}
			if last {
				var fresh ReplyState
				text, err := readOne(AppendReply(nil, code, string(l)))
				if c, end, ferr := fresh.Feed(text); err != nil || c != code || !end || ferr != nil {
					t.Fatalf("AppendReply(%d, %q) reads back as %d, %v, %v, %v", code, l, c, end, ferr, err)
				}
			}
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	f.Fuzz(func(t *testing.T, text []byte) {
		verb, arg := ParseCommand(text)
		if verb >= numVerbs {
			t.Fatalf("ParseCommand(%q) = Verb(%d)", text, verb)
		}
		// The verb is what ProFTPD reads: everything up to the first
		// whitespace byte; the argument is everything after that byte.
		word, rest := text, []byte(nil)
		if i := bytes.IndexFunc(text, func(r rune) bool { return r < 0x80 && IsSpace(byte(r)) }); i >= 0 {
			word, rest = text[:i], text[i+1:]
		}
		if !bytes.Equal(arg, rest) || (arg != nil && len(arg) == 0) {
			t.Fatalf("ParseCommand(%q) argument %q, want %q", text, arg, rest)
		}
		up := asciiUpper(word)
		if verb != VerbOther && up != verb.String() {
			t.Fatalf("ParseCommand(%q) = %v", text, verb)
		}
		if verb == VerbOther {
			for v := VerbOther + 1; v < numVerbs; v++ {
				if up == v.String() {
					t.Fatalf("ParseCommand(%q) missed %v", text, v)
				}
			}
			return
		}
		// The canonical line reads back, through the Reader, as the same
		// command, and to vsftpd (verb up to the first space, upper-cased)
		// as the same verb.
		if bytes.IndexByte(text, '\n') >= 0 {
			return // the Reader never gives a line with LF in it
		}
		c := ParseLine(nil, text)
		if c.Verb != verb || !bytes.Equal(c.Arg, arg) || !bytes.Equal(c.Word, word) {
			t.Fatalf("ParseLine(%q) = %v, %q, %q; want %v, %q, %q", text, c.Verb, c.Word, c.Arg, verb, word, arg)
		}
		line := c.AppendCanonical(nil)
		_, back, err := NewReader(bytes.NewReader(line), len(line)+1).ReadLine()
		if err != nil {
			t.Fatalf("canonical %q of %q: %v", line, text, err)
		}
		if v, a := ParseCommand(back); v != verb || !bytes.Equal(a, arg) {
			t.Fatalf("canonical %q of %q reads back as %v, %q; want %v, %q", line, text, v, a, verb, arg)
		}
		if w, _, _ := bytes.Cut(back, []byte(" ")); string(w) != verb.String() {
			t.Fatalf("canonical %q of %q: vsftpd reads verb %q", line, text, w)
		}
	})
}

// asciiUpper upper-cases a-z only, as FTP verbs are matched; the bytes
// package would also fold other scripts ("\u212a" to "K").
func asciiUpper(b []byte) string {
	u := make([]byte, len(b))
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		u[i] = c
	}
	return string(u)
}
