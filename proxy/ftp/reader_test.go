package ftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// line is one ReadLine result, as strings so that tests compare values
// (the slices themselves are reused).
type line struct {
	raw, text string
	err       error
}

func (l line) String() string { return fmt.Sprintf("{%q %q %v}", l.raw, l.text, l.err) }

// readAll calls ReadLine until io.EOF, or until it has clearly looped.
func readAll(t testing.TB, r *Reader) []line {
	t.Helper()
	var out []line
	for range 100000 {
		raw, text, err := r.ReadLine()
		out = append(out, line{string(raw), string(text), err})
		if err == io.EOF {
			return out
		}
	}
	t.Fatalf("no io.EOF after 100000 calls")
	return nil
}

func sameLines(a, b []line) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].raw != b[i].raw || a[i].text != b[i].text || !errors.Is(a[i].err, b[i].err) || !errors.Is(b[i].err, a[i].err) {
			return false
		}
	}
	return true
}

// ok is a line that passes; raw must end in its terminator.
func ok(raw, text string) line { return line{raw: raw, text: text} }

var (
	eof      = line{err: io.EOF}
	tooLong  = line{err: ErrLineTooLong}
	endless  = line{err: ErrLineEndless}
	cutShort = line{err: io.ErrUnexpectedEOF}
)

func TestReader(t *testing.T) {
	long := strings.Repeat("x", 9000)
	tests := []struct {
		name string
		in   string
		max  int
		want []line
	}{
		{"empty input", "", 0, []line{eof}},
		{"CRLF", "USER anonymous\r\nPASS a@b\r\n", 0, []line{ok("USER anonymous\r\n", "USER anonymous"), ok("PASS a@b\r\n", "PASS a@b"), eof}},
		{"bare LF", "NOOP\nQUIT\n", 0, []line{ok("NOOP\n", "NOOP"), ok("QUIT\n", "QUIT"), eof}},
		{"empty lines", "\r\n\n", 0, []line{ok("\r\n", ""), ok("\n", ""), eof}},
		{"CR inside a line stays text", "RETR a\rb\r\n", 0, []line{ok("RETR a\rb\r\n", "RETR a\rb"), eof}},
		{"only the CR before LF goes", "NOOP\r\r\n", 0, []line{ok("NOOP\r\r\n", "NOOP\r"), eof}},
		{"lone CR line", "\r\r\n", 0, []line{ok("\r\r\n", "\r"), eof}},
		{"NUL stays text", "RETR a\x00b\r\n", 0, []line{ok("RETR a\x00b\r\n", "RETR a\x00b"), eof}},
		{"partial line at EOF", "NOOP\r\nQUI", 0, []line{ok("NOOP\r\n", "NOOP"), cutShort, eof}},
		{"CR alone at EOF", "NOOP\r", 0, []line{cutShort, eof}},
		{"line at the limit", "123456\r\n", 8, []line{ok("123456\r\n", "123456"), eof}},
		{"one over the limit", "1234567\r\nOK\r\n", 8, []line{tooLong, ok("OK\r\n", "OK"), eof}},
		{"far over the limit", strings.Repeat("A", 100) + "\r\nOK\n", 8, []line{tooLong, endless, ok("OK\n", "OK"), eof}},
		{"twice the limit", strings.Repeat("A", 14) + "\r\nOK\n", 8, []line{tooLong, ok("OK\n", "OK"), eof}},
		{"one over twice the limit", strings.Repeat("A", 15) + "\r\nOK\n", 8, []line{tooLong, endless, ok("OK\n", "OK"), eof}},
		{"endless at EOF", strings.Repeat("A", 17), 8, []line{tooLong, endless, eof}},
		{"twice the limit at EOF", strings.Repeat("A", 16), 8, []line{tooLong, eof}},
		{"over-long lines in a row", "123456789\n123456789\r\n12\n", 8, []line{tooLong, tooLong, ok("12\n", "12"), eof}},
		{"LF just past the limit", "12345678\nOK\n", 8, []line{tooLong, ok("OK\n", "OK"), eof}},
		{"over-long at EOF", "0123456789", 8, []line{tooLong, eof}},
		{"partial at the limit at EOF", "12345678", 8, []line{tooLong, eof}},
		{"partial under the limit at EOF", "1234567", 8, []line{cutShort, eof}},
		{"limit 1", "\nA\n\n", 1, []line{ok("\n", ""), tooLong, ok("\n", ""), eof}},
		{"buffer grows to a big limit", long + "\r\nOK\r\n", 10000, []line{ok(long+"\r\n", long), ok("OK\r\n", "OK"), eof}},
		{"big limit still holds", long + "\r\nOK\r\n", 9001, []line{tooLong, ok("OK\r\n", "OK"), eof}},

		// Telnet (RFC 854): raw keeps every byte, text loses the commands.
		{"IP DM ABOR", "\xff\xf4\xff\xf2ABOR\r\n", 0, []line{ok("\xff\xf4\xff\xf2ABOR\r\n", "ABOR"), eof}},
		{"DM taken out of band", "\xff\xf4\xffABOR\r\n", 0, []line{ok("\xff\xf4\xffABOR\r\n", "ABOR"), eof}},
		{"AYT inside a word", "NO\xff\xf6OP\r\n", 0, []line{ok("NO\xff\xf6OP\r\n", "NOOP"), eof}},
		{"NOP", "\xff\xf1NOOP\r\n", 0, []line{ok("\xff\xf1NOOP\r\n", "NOOP"), eof}},
		{"SE outside SB", "\xff\xf0NOOP\r\n", 0, []line{ok("\xff\xf0NOOP\r\n", "NOOP"), eof}},
		{"WILL WONT DO DONT", "\xff\xfb\x01\xff\xfc\x03\xff\xfd\x18\xff\xfe\x1fNOOP\r\n", 0, []line{ok("\xff\xfb\x01\xff\xfc\x03\xff\xfd\x18\xff\xfe\x1fNOOP\r\n", "NOOP"), eof}},
		{"option byte is a letter", "\xff\xfbPNOOP\r\n", 0, []line{ok("\xff\xfbPNOOP\r\n", "NOOP"), eof}},
		{"option byte is IAC", "\xff\xfd\xffNOOP\r\n", 0, []line{ok("\xff\xfd\xffNOOP\r\n", "NOOP"), eof}},
		{"SB..SE", "\xff\xfa\x18\x00xterm\xff\xf0NOOP\r\n", 0, []line{ok("\xff\xfa\x18\x00xterm\xff\xf0NOOP\r\n", "NOOP"), eof}},
		{"empty SB", "\xff\xfa\xff\xf0NOOP\r\n", 0, []line{ok("\xff\xfa\xff\xf0NOOP\r\n", "NOOP"), eof}},
		{"IAC IAC inside SB cannot close it", "\xff\xfa\x01\xff\xff\xf0X\xff\xf0NOOP\r\n", 0, []line{ok("\xff\xfa\x01\xff\xff\xf0X\xff\xf0NOOP\r\n", "NOOP"), eof}},
		{"SB unclosed in the line", "NO\xff\xfaOP\r\nQUIT\r\n", 0, []line{ok("NO\xff\xfaOP\r\n", "NO"), ok("QUIT\r\n", "QUIT"), eof}},
		{"IAC IAC is 0xFF", "RETR a\xff\xffb\r\n", 0, []line{ok("RETR a\xff\xffb\r\n", "RETR a\xffb"), eof}},
		{"IAC IAC before CRLF", "RETR a\xff\xff\r\n", 0, []line{ok("RETR a\xff\xff\r\n", "RETR a\xff"), eof}},
		{"IAC before CRLF", "NOOP\xff\r\n", 0, []line{ok("NOOP\xff\r\n", "NOOP"), eof}},
		{"IAC before bare LF", "NOOP\xff\n", 0, []line{ok("NOOP\xff\n", "NOOP"), eof}},
		{"WILL cut by CRLF", "NOOP\xff\xfb\r\n", 0, []line{ok("NOOP\xff\xfb\r\n", "NOOP"), eof}},
		{"lone IAC before CR keeps the CR", "A\xff\rB\r\n", 0, []line{ok("A\xff\rB\r\n", "A\rB"), eof}},
		{"Telnet counts against the limit", "\xff\xf1\xff\xf1OK\r\n", 7, []line{tooLong, eof}},

		// No Telnet sequence can hide a line end: every LF ends a line,
		// so a command after one is always seen on its own.
		{"LF as WILL option", "NOOP\xff\xfb\nPORT 192,0,2,1,0,25\r\n", 0, []line{ok("NOOP\xff\xfb\n", "NOOP"), ok("PORT 192,0,2,1,0,25\r\n", "PORT 192,0,2,1,0,25"), eof}},
		{"LF inside SB", "\xff\xfaX\nPORT 192,0,2,1,0,25\xff\xf0\r\n", 0, []line{ok("\xff\xfaX\n", ""), ok("PORT 192,0,2,1,0,25\xff\xf0\r\n", "PORT 192,0,2,1,0,25"), eof}},
		{"LF after IAC", "NOOP\xff\nQUIT\r\n", 0, []line{ok("NOOP\xff\n", "NOOP"), ok("QUIT\r\n", "QUIT"), eof}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readers := map[string]io.Reader{
				"whole":    strings.NewReader(tt.in),
				"one byte": iotest.OneByteReader(strings.NewReader(tt.in)),
				"data+EOF": iotest.DataErrReader(strings.NewReader(tt.in)),
			}
			for how, rd := range readers {
				if got := readAll(t, NewReader(rd, tt.max)); !sameLines(got, tt.want) {
					t.Errorf("%s:\n got %v\nwant %v", how, got, tt.want)
				}
			}
		})
	}
}

// script is an io.Reader that returns its steps in order, then io.EOF.
type script []struct {
	data string
	err  error
}

func (s *script) Read(p []byte) (int, error) {
	if len(*s) == 0 {
		return 0, io.EOF
	}
	st := &(*s)[0]
	n := copy(p, st.data)
	st.data = st.data[n:]
	if st.data != "" {
		return n, nil
	}
	err := st.err
	*s = (*s)[1:]
	return n, err
}

func TestReaderErrorThenResume(t *testing.T) {
	errTimeout := errors.New("i/o timeout")
	tests := []struct {
		name string
		s    script
		max  int
		want []line
	}{
		{"partial line kept", script{{"NO", errTimeout}, {"OP\r\nQUIT\r\n", nil}}, 0,
			[]line{{err: errTimeout}, ok("NOOP\r\n", "NOOP"), ok("QUIT\r\n", "QUIT"), eof}},
		{"lines before the error come first", script{{"NOOP\r\nQU", errTimeout}, {"IT\r\n", nil}}, 0,
			[]line{ok("NOOP\r\n", "NOOP"), {err: errTimeout}, ok("QUIT\r\n", "QUIT"), eof}},
		{"discarding goes on", script{{"0123456789", errTimeout}, {"ab\r\nOK\r\n", nil}}, 8,
			[]line{tooLong, {err: errTimeout}, ok("OK\r\n", "OK"), eof}},
		{"too long said before the end comes", script{{"0123456789", errTimeout}}, 8,
			[]line{tooLong, {err: errTimeout}, eof}},
		{"endless said before the end comes", script{{"0123456789abcdefg", errTimeout}, {"\nOK\n", nil}}, 8,
			[]line{tooLong, endless, {err: errTimeout}, ok("OK\n", "OK"), eof}},
		{"EOF ends a discard", script{{"0123456789", nil}}, 8, []line{tooLong, eof}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readAll(t, NewReader(&tt.s, tt.max)); !sameLines(got, tt.want) {
				t.Errorf("\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

type funcReader func(p []byte) (int, error)

func (f funcReader) Read(p []byte) (int, error) { return f(p) }

func TestReaderBrokenUnderlying(t *testing.T) {
	tests := []struct {
		name string
		rd   funcReader
		want error
	}{
		{"no progress", func([]byte) (int, error) { return 0, nil }, io.ErrNoProgress},
		{"count too big", func(p []byte) (int, error) { return len(p) + 1, nil }, errBadRead},
		{"negative count", func([]byte) (int, error) { return -1, nil }, errBadRead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, text, err := NewReader(tt.rd, 0).ReadLine()
			if raw != nil || text != nil || !errors.Is(err, tt.want) {
				t.Errorf("ReadLine = %q, %q, %v; want nil, nil, %v", raw, text, err, tt.want)
			}
		})
	}
}

func TestReaderBuffered(t *testing.T) {
	r := NewReader(strings.NewReader("A\r\nB\r\nC"), 0)
	if n := r.Buffered(); n != 0 {
		t.Errorf("Buffered before any read = %d, want 0", n)
	}
	for _, want := range []int{4, 1} { // "B\r\nC", then "C"
		if _, _, err := r.ReadLine(); err != nil {
			t.Fatal(err)
		}
		if n := r.Buffered(); n != want {
			t.Errorf("Buffered = %d, want %d", n, want)
		}
	}
	if _, _, err := r.ReadLine(); err != io.ErrUnexpectedEOF {
		t.Fatalf("ReadLine = %v, want io.ErrUnexpectedEOF", err)
	}
	if n := r.Buffered(); n != 0 {
		t.Errorf("Buffered after a dropped partial line = %d, want 0", n)
	}
}

// A caller that appends to text must not be able to change raw.
func TestReaderTextCannotOverwriteRaw(t *testing.T) {
	r := NewReader(strings.NewReader("NOOP\r\nQUIT\r\n"), 0)
	raw, text, _ := r.ReadLine()
	_ = append(text, "XX"...)
	if string(raw) != "NOOP\r\n" {
		t.Errorf("raw = %q after appending to text", raw)
	}
	if raw, _, _ = r.ReadLine(); string(raw) != "QUIT\r\n" {
		t.Errorf("next raw = %q after appending to text", raw)
	}
}

func TestAppendLine(t *testing.T) {
	tests := []struct{ text, want string }{
		{"NOOP", "NOOP\r\n"},
		{"", "\r\n"},
		{"RETR a\xffb", "RETR a\xff\xffb\r\n"},
		{"RETR a\nPORT x", "RETR a PORT x\r\n"},
		{"A\r", "A\r\r\n"},
	}
	for _, tt := range tests {
		got := AppendLine([]byte("x"), []byte(tt.text))
		if string(got) != "x"+tt.want {
			t.Errorf("AppendLine(%q) = %q, want %q", tt.text, got[1:], tt.want)
			continue
		}
		_, text, err := NewReader(bytes.NewReader(got[1:]), 0).ReadLine()
		if want := strings.ReplaceAll(tt.text, "\n", " "); err != nil || string(text) != want {
			t.Errorf("ReadLine(AppendLine(%q)) = %q, %v; want %q", tt.text, text, err, want)
		}
	}
}

// loopReader returns data over and over, in reads of at most chunk bytes.
type loopReader struct {
	data  []byte
	off   int
	chunk int
}

func (l *loopReader) Read(p []byte) (int, error) {
	p = p[:min(len(p), l.chunk)]
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.data[l.off:])
		n += c
		l.off = (l.off + c) % len(l.data)
	}
	return n, nil
}

const sampleLines = "USER anonymous\r\n" +
	"227 Entering Passive Mode (192,0,2,10,117,48).\r\n" +
	"150 Here comes the directory listing.\r\n" +
	"226 Directory send OK.\r\n" +
	"RETR some/rather/longer/path/name/for/a/file.tar.gz\r\n" +
	"PASV\n"

func TestReadLineDoesNotAllocate(t *testing.T) {
	for name, data := range map[string]string{
		"plain":  sampleLines,
		"telnet": "\xff\xf4\xff\xf2ABOR\r\nRETR a\xff\xffb\r\n\xff\xfa\x18\x00xterm\xff\xf0NOOP\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			r := NewReader(&loopReader{data: []byte(data), chunk: 1500}, 0)
			for range 100 { // warm-up: the text buffer grows once
				if _, _, err := r.ReadLine(); err != nil {
					t.Fatal(err)
				}
			}
			allocs := testing.AllocsPerRun(10000, func() {
				if _, _, err := r.ReadLine(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("ReadLine allocates %v times per line, want 0", allocs)
			}
		})
	}
}

func BenchmarkReadLine(b *testing.B) {
	data := []byte(sampleLines)
	r := NewReader(&loopReader{data: data, chunk: 1500}, 0)
	b.SetBytes(int64(len(data) / strings.Count(sampleLines, "\n")))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := r.ReadLine(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestHasTelnetNegotiation(t *testing.T) {
	for raw, want := range map[string]bool{
		"NOOP\r\n":                             false,
		"\xff\xf4\xff\xf2ABOR\r\n":             false, // IP, DM: allowed
		"\xff\xf6\r\n":                         false, // AYT
		"RETR a\xff\xffb\r\n":                  false, // escaped 0xFF is data
		"\xff\xfb\x01NOOP\r\n":                 true,  // WILL ECHO
		"\xff\xfe\x01NOOP\r\n":                 true,  // DONT
		"\xff\xfaPORT 1,2,3,4,5,6\xff\xf0\r\n": true,  // subnegotiation hiding a PORT
		"\xff\xff\xfbX\r\n":                    false, // IAC IAC then plain 0xFB data
		"ABOR\xff":                             false, // IAC cut off by the end
	} {
		if got := HasTelnetNegotiation([]byte(raw)); got != want {
			t.Errorf("HasTelnetNegotiation(%q) = %v, want %v", raw, got, want)
		}
	}
}
