package ftp

import (
	"fmt"
	"strconv"
)

// ReplyState groups server reply lines into replies (RFC 959 4.2), so that
// the proxy acts on a reply once, when its last line arrives, and passes
// the lines of a multi-line reply on without reading them as replies. The
// zero value is ready: no reply open.
type ReplyState struct {
	open int // code of the open multi-line reply, 0 when none is open
}

// errNoCode is prebuilt because a hostile server can send such lines
// without end.
var errNoCode = fmt.Errorf("reading reply: line does not start with a reply code: %w", ErrMalformed)

// Feed takes the text of the next line from the server. It returns the
// reply code the line belongs to and whether the line ends that reply.
//
// Outside a reply, a line must start with a code "[1-5][0-9][0-9]" followed
// by ' ', '-' or the end of the line; otherwise Feed returns an error
// wrapping ErrMalformed and the state does not change. Inside a multi-line
// reply ("227-..."), every line is a continuation until one that starts
// with the same code and a space, or is exactly the code: RFC 959 lets the
// lines in between say anything, including other codes.
func (s *ReplyState) Feed(text []byte) (code int, last bool, err error) {
	c, sep := replyCode(text)
	if s.open != 0 {
		if c == s.open && sep != '-' {
			s.open = 0
			return c, true, nil
		}
		return s.open, false, nil
	}
	if c == 0 {
		return 0, false, errNoCode
	}
	if sep == '-' {
		s.open = c
		return c, false, nil
	}
	return c, true, nil
}

// InReply reports whether a multi-line reply is open, so that the proxy
// knows a line it is about to inject would land inside someone's reply.
func (s *ReplyState) InReply() bool { return s.open != 0 }

// replyCode returns the code text starts with and the byte after it ('-',
// ' ', or 0 at the end of the line); code 0 if text starts with no code.
func replyCode(text []byte) (code int, sep byte) {
	if len(text) < 3 || text[0] < '1' || text[0] > '5' || !isDigit(text[1]) || !isDigit(text[2]) {
		return 0, 0
	}
	if len(text) > 3 {
		if sep = text[3]; sep != ' ' && sep != '-' {
			return 0, 0
		}
	}
	return int(text[0]-'0')*100 + int(text[1]-'0')*10 + int(text[2]-'0'), sep
}

// AppendReply appends the single-line reply "code text\r\n". CR and LF in
// text become spaces and 0xFF is doubled (RFC 854), because text may quote
// a peer: whatever it holds, the result is one line that reads back as
// text. The line is cut to DefaultMaxLine bytes, so that a peer reading
// with that limit never drops it. code should be 100-599; it is written as
// given.
func AppendReply(dst []byte, code int, text string) []byte {
	start := len(dst)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	// Room for the worst case of one more byte (a doubled 0xFF) and CRLF.
	limit := start + DefaultMaxLine - 4
	for i := 0; i < len(text) && len(dst) <= limit; i++ {
		switch c := text[i]; c {
		case '\r', '\n':
			dst = append(dst, ' ')
		case telnetIAC:
			dst = append(dst, telnetIAC, telnetIAC)
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '\r', '\n')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
