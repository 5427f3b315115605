package ftp

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// A whole session, one stream per direction, as the proxy would see it.
// The limit is small so that the over-long lines stay readable.
const conversationMax = 64

var (
	serverStream = "220-pasvgate test server\r\n" +
		"220 Ready\r\n" +
		"331 Please specify the password.\r\n" +
		"230 Login successful.\r\n" +
		"211-Features:\r\n EPRT\r\n EPSV\r\n PASV\r\n REST STREAM\r\n211 End\r\n" +
		"227 Entering Passive Mode (192,0,2,10,117,48).\r\n" +
		"150 Here comes the directory listing.\r\n" +
		"226 Directory send OK.\r\n" +
		"500 " + strings.Repeat("x", 100) + "\r\n" +
		"426 Failure writing network stream.\r\n" +
		"226 ABOR successful.\r\n" +
		"229 Entering Extended Passive Mode (|||30001|)\r\n" +
		"221 Goodbye.\n"
	clientStream = "USER anonymous\r\n" +
		"PASS guest@example.com\r\n" +
		"FEAT\r\n" +
		"PASV\r\n" +
		"LIST\r\n" +
		"\xff\xf4\xff\xf2ABOR\r\n" +
		"STOR " + strings.Repeat("y", 100) + "\r\n" +
		"EPSV\r\n" +
		"EPRT |1|198.51.100.7|50001|\r\n" +
		"QUIT\r\n" +
		"NOO"
)

// event is one line through the codec: what ReadLine returned and what the
// parsers made of it.
type event struct {
	line
	reply string // server: "code last", or the Feed error
	cmd   string // client: verb and argument
	addr  string // an address parsed from the line, or its error
}

func (e event) String() string { return fmt.Sprintf("%v %s%s %s", e.line, e.reply, e.cmd, e.addr) }

func serverEvents(rd io.Reader) []event {
	r := NewReader(rd, conversationMax)
	var s ReplyState
	var out []event
	for {
		raw, text, err := r.ReadLine()
		e := event{line: line{string(raw), string(text), err}}
		if err == nil {
			code, last, err := s.Feed(text)
			e.reply = fmt.Sprint(code, " ", last, " ", err)
			if last && code == CodeEnteringPassive {
				ap, err := ParsePASV(text[3:])
				e.addr = fmt.Sprint(ap, " ", err)
			}
			if last && code == CodeEnteringExtPassive {
				port, err := ParseEPSV(text[3:])
				e.addr = fmt.Sprint(port, " ", err)
			}
		}
		out = append(out, e)
		if err == io.EOF || len(out) > 1000 {
			return out
		}
	}
}

func clientEvents(rd io.Reader) []event {
	r := NewReader(rd, conversationMax)
	var out []event
	for {
		raw, text, err := r.ReadLine()
		e := event{line: line{string(raw), string(text), err}}
		if err == nil {
			verb, arg := ParseCommand(text)
			e.cmd = verb.String() + " " + strconv.Quote(string(arg))
			if verb == VerbEPRT {
				ap, err := ParseEPRT(arg)
				e.addr = fmt.Sprint(ap, " ", err)
			}
		}
		out = append(out, e)
		if err == io.EOF || len(out) > 1000 {
			return out
		}
	}
}

func reply(raw, code string, last bool) event {
	text := strings.TrimRight(raw, "\r\n")
	return event{line: ok(raw, text), reply: fmt.Sprint(code, " ", last, " <nil>")}
}

func command(raw, text, verb, arg string) event {
	return event{line: ok(raw, text), cmd: verb + " " + arg}
}

var (
	wantServer = []event{
		reply("220-pasvgate test server\r\n", "220", false),
		reply("220 Ready\r\n", "220", true),
		reply("331 Please specify the password.\r\n", "331", true),
		reply("230 Login successful.\r\n", "230", true),
		reply("211-Features:\r\n", "211", false),
		reply(" EPRT\r\n", "211", false),
		reply(" EPSV\r\n", "211", false),
		reply(" PASV\r\n", "211", false),
		reply(" REST STREAM\r\n", "211", false),
		reply("211 End\r\n", "211", true),
		func() event {
			e := reply("227 Entering Passive Mode (192,0,2,10,117,48).\r\n", "227", true)
			e.addr = "192.0.2.10:30000 <nil>"
			return e
		}(),
		reply("150 Here comes the directory listing.\r\n", "150", true),
		reply("226 Directory send OK.\r\n", "226", true),
		{line: tooLong},
		reply("426 Failure writing network stream.\r\n", "426", true),
		reply("226 ABOR successful.\r\n", "226", true),
		func() event {
			e := reply("229 Entering Extended Passive Mode (|||30001|)\r\n", "229", true)
			e.addr = "30001 <nil>"
			return e
		}(),
		reply("221 Goodbye.\n", "221", true),
		{line: eof},
	}
	wantClient = []event{
		command("USER anonymous\r\n", "USER anonymous", "USER", `"anonymous"`),
		command("PASS guest@example.com\r\n", "PASS guest@example.com", "PASS", `"guest@example.com"`),
		command("FEAT\r\n", "FEAT", "FEAT", `""`),
		command("PASV\r\n", "PASV", "PASV", `""`),
		command("LIST\r\n", "LIST", "LIST", `""`),
		command("\xff\xf4\xff\xf2ABOR\r\n", "ABOR", "ABOR", `""`),
		{line: tooLong},
		command("EPSV\r\n", "EPSV", "EPSV", `""`),
		func() event {
			e := command("EPRT |1|198.51.100.7|50001|\r\n", "EPRT |1|198.51.100.7|50001|", "EPRT", `"|1|198.51.100.7|50001|"`)
			e.addr = "198.51.100.7:50001 <nil>"
			return e
		}(),
		command("QUIT\r\n", "QUIT", "QUIT", `""`),
		{line: cutShort},
		{line: eof},
	}
)

func sameEvents(a, b []event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameLines([]line{a[i].line}, []line{b[i].line}) || a[i].reply != b[i].reply || a[i].cmd != b[i].cmd || a[i].addr != b[i].addr {
			return false
		}
	}
	return true
}

// twoChunks returns first, then second, then io.EOF: a read boundary
// wherever the test puts one (and more where the reader's buffer is full).
type twoChunks struct{ first, second string }

func (c *twoChunks) Read(p []byte) (int, error) {
	chunk := &c.first
	if *chunk == "" {
		chunk = &c.second
	}
	if *chunk == "" {
		return 0, io.EOF
	}
	n := copy(p, *chunk)
	*chunk = (*chunk)[n:]
	return n, nil
}

// TestConversationAnySplit reads a whole session split into reads at every
// byte boundary, and one byte at a time: TCP may cut anywhere, and the
// proxy must see exactly the same lines whatever it does.
func TestConversationAnySplit(t *testing.T) {
	for _, dir := range []struct {
		name   string
		stream string
		events func(io.Reader) []event
		want   []event
	}{
		{"server", serverStream, serverEvents, wantServer},
		{"client", clientStream, clientEvents, wantClient},
	} {
		t.Run(dir.name, func(t *testing.T) {
			check := func(how string, rd io.Reader) {
				t.Helper()
				if got := dir.events(rd); !sameEvents(got, dir.want) {
					t.Fatalf("%s:\n got %v\nwant %v", how, got, dir.want)
				}
			}
			check("whole", strings.NewReader(dir.stream))
			check("one byte", iotest.OneByteReader(strings.NewReader(dir.stream)))
			check("one byte, data with EOF", iotest.DataErrReader(iotest.OneByteReader(strings.NewReader(dir.stream))))
			check("half", iotest.HalfReader(strings.NewReader(dir.stream)))
			for i := 0; i <= len(dir.stream); i++ {
				check(fmt.Sprintf("split at %d", i), &twoChunks{dir.stream[:i], dir.stream[i:]})
			}
		})
	}
}

// The split reader itself must deliver every byte once, in order, or the
// test above proves nothing.
func TestTwoChunks(t *testing.T) {
	data := strings.Repeat("0123456789", 1000)
	for _, at := range []int{0, 1, 5000, 9999, 10000} {
		got, err := io.ReadAll(&twoChunks{data[:at], data[at:]})
		if err != nil || string(got) != data {
			t.Errorf("split at %d: %d bytes, %v", at, len(got), err)
		}
	}
}
