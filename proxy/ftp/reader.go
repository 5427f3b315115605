package ftp

import (
	"bytes"
	"errors"
	"io"
)

// DefaultMaxLine is the line limit when NewReader is given none. RFC 959
// sets no limit; real commands and replies stay far below it, and each
// direction of each session keeps a buffer this size.
const DefaultMaxLine = 4096

// ErrLineTooLong is returned by ReadLine as soon as a line has passed the
// limit, before its end has arrived, so that a session can answer 500 at
// once rather than when (or if) the line ends. Nothing of the line is
// kept: the next ReadLine discards the rest of it through its terminator
// and continues with the following line.
var ErrLineTooLong = errors.New("ftp: line too long")

// ErrLineEndless is returned by ReadLine, once per line and after
// ErrLineTooLong, when an over-long line has gone on for more than twice
// the limit without ending. A peer sending such a line is not a client
// with a long path name: the proxy ends the session. A caller that goes on
// reading gets the rest of the line discarded through its terminator, as
// after ErrLineTooLong.
var ErrLineEndless = errors.New("ftp: line too long, no end within twice the limit")

// ErrMalformed is wrapped by every parse error in this package, so callers
// can tell hostile or broken input (errors.Is) from their own mistakes.
var ErrMalformed = errors.New("ftp: malformed")

// Telnet bytes (RFC 854) that an FTP control connection may carry.
const (
	telnetSE   = 240 // end of subnegotiation; 240-249 are two-byte commands
	telnetSB   = 250 // subnegotiation, up to IAC SE (RFC 855)
	telnetWILL = 251 // WILL, WONT, DO and DONT (251-254) take an option byte
	telnetIAC  = 255
)

// maxEmptyReads bounds how often a broken io.Reader may return 0, nil
// before ReadLine gives up, as bufio does.
const maxEmptyReads = 100

// errBadRead reports an io.Reader that returned an impossible count; it is
// an error rather than a panic because the reader may be anything.
var errBadRead = errors.New("ftp: reader returned invalid count")

// Reader splits a control connection into lines. It never holds more than
// one line's limit of bytes, and in steady state it does not allocate: it
// hands out slices of its own buffers.
//
// A line ends at every LF byte in the stream, whatever Telnet sequence it
// may look like part of. Servers differ in how they read Telnet, so this
// is the only framing under which no peer can make the proxy see fewer
// line ends than the server behind it: a command can be hidden from the
// proxy only by being joined to another line, never by being split off.
type Reader struct {
	rd      io.Reader
	max     int
	buf     []byte // buf[r:w] is read from rd and not yet returned
	r, w    int
	text    []byte // the text of the last line when it had Telnet sequences
	err     error  // read error to return once the buffer has no line left
	discard bool   // skipping the rest of an over-long line
	dropped int    // bytes of the over-long line skipped so far
	endless bool   // ErrLineEndless was returned for the line being skipped
}

// NewReader reads lines from rd. max bounds the raw bytes of one line,
// including its terminator and any Telnet sequences; max <= 0 means
// DefaultMaxLine. The buffer starts small (initialBuffer) and grows to max
// only for a line that needs it, so a generous limit costs memory only
// when it is used.
func NewReader(rd io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxLine
	}
	return &Reader{rd: rd, max: max, buf: make([]byte, min(max, initialBuffer))}
}

// initialBuffer is a new Reader's buffer size. Every session has two
// Readers, so this is most of an idle session's heap: at 512 bytes, which
// holds any ordinary command or reply line (RFC 1123 asks for 512), 10,000
// idle sessions take about 7 KiB less each than at 4 KiB (test/scale).
const initialBuffer = 512

// ReadLine returns the next line.
//
// raw is the exact bytes received for the line, including Telnet sequences
// and the terminator (CRLF or a bare LF): what the proxy forwards when it
// passes the line on unchanged. text is the line's content for parsing:
// Telnet commands removed (RFC 854), IAC IAC unescaped to one 0xFF byte,
// the terminator removed, and a CR just before the LF too. text never
// contains LF; it may contain a CR or NUL that was not part of the
// terminator. Both are valid only until the next call, may share memory,
// and must not be modified.
//
// A line longer than the limit gives ErrLineTooLong (raw and text nil) as
// soon as the limit is passed; the next call discards the rest of it
// through its terminator, keeping none of it, and returns the line after.
// If the over-long line has not ended within twice the limit, a call
// returns ErrLineEndless, once, and the next goes on discarding. At EOF
// with nothing pending ReadLine returns io.EOF; at EOF after part of a
// line, it drops that part and returns io.ErrUnexpectedEOF (io.EOF if the
// part was over the limit, which has been reported). Other read errors
// are returned as they are, and a later call resumes where the failed one
// stopped.
func (r *Reader) ReadLine() (raw, text []byte, err error) {
	scanned := 0 // buf[r.r:r.r+scanned] holds no LF
	for {
		if r.discard {
			if err := r.skip(); err != nil {
				return nil, nil, err
			}
			if r.discard {
				if r.err != nil {
					return nil, nil, r.readErr()
				}
				r.fill()
			}
			continue
		}
		if i := bytes.IndexByte(r.buf[r.r+scanned:r.w], '\n'); i >= 0 {
			start, end := r.r, r.r+scanned+i+1
			r.r = end
			raw = r.buf[start:end:end]
			return raw, r.decode(raw), nil
		}
		scanned = r.w - r.r
		if scanned >= r.max {
			// Keep nothing of an over-long line, so that it costs no
			// more memory than a line at the limit, and say so now.
			r.discard, r.dropped, r.endless = true, scanned, false
			r.r, r.w = 0, 0
			return nil, nil, ErrLineTooLong
		}
		if r.err != nil {
			return nil, nil, r.readErr()
		}
		r.fill()
	}
}

// skip discards buffered bytes of an over-long line, through its LF if it
// is there, and returns ErrLineEndless the first time the line passes
// twice the limit. r.discard stays set while the line's end is still to
// come.
func (r *Reader) skip() error {
	n := r.w - r.r
	i := bytes.IndexByte(r.buf[r.r:r.w], '\n')
	if i >= 0 {
		n = i + 1
	}
	r.r += n
	r.dropped += n
	over := r.dropped > 2*r.max && !r.endless
	if i >= 0 {
		r.discard, r.dropped, r.endless = false, 0, false
	} else {
		r.r, r.w = 0, 0
		r.endless = r.endless || over
	}
	if over {
		return ErrLineEndless
	}
	return nil
}

// Buffered reports how many bytes have been read from the underlying
// reader and not yet returned. The proxy flushes its output when this is
// zero: then the peer is waiting for an answer, not still sending.
func (r *Reader) Buffered() int { return r.w - r.r }

// readErr returns the pending read error, turning EOF into what it means
// for the bytes left over.
func (r *Reader) readErr() error {
	if r.err != io.EOF {
		// Not necessarily fatal (a deadline, say): return it once and
		// keep the partial line for the next call.
		err := r.err
		r.err = nil
		return err
	}
	switch {
	case r.discard:
		// The line was reported when it passed the limit.
		r.discard = false
		return io.EOF
	case r.w > r.r:
		r.r = r.w
		return io.ErrUnexpectedEOF
	}
	return io.EOF
}

// fill reads at least one byte, or records why it could not.
func (r *Reader) fill() {
	if r.r > 0 {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	if r.w == len(r.buf) {
		// Only reached below the limit: ReadLine discards a full one.
		b := make([]byte, min(2*len(r.buf), r.max))
		r.w = copy(b, r.buf[:r.w])
		r.buf = b
	}
	for range maxEmptyReads {
		n, err := r.rd.Read(r.buf[r.w:])
		if n < 0 || n > len(r.buf)-r.w {
			r.err = errBadRead
			return
		}
		r.w += n
		if err != nil {
			r.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	r.err = io.ErrNoProgress
}

// decode returns the text of raw, a whole line with its LF.
func (r *Reader) decode(raw []byte) []byte {
	line := raw[:len(raw)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if bytes.IndexByte(line, telnetIAC) < 0 {
		// The common case: text is a view of raw, capped so that an
		// append by the caller cannot overwrite the terminator.
		return line[:len(line):len(line)]
	}
	r.text = appendTelnetData(r.text[:0], line)
	return r.text
}

// appendTelnetData appends the data bytes of line (without its terminator)
// to dst, dropping Telnet commands. A command cut off by the end of the
// line is dropped too: it cannot go on into the next line, because lines
// are split before Telnet is read.
func appendTelnetData(dst, line []byte) []byte {
	for i := 0; i < len(line); {
		j := bytes.IndexByte(line[i:], telnetIAC)
		if j < 0 {
			return append(dst, line[i:]...)
		}
		dst = append(dst, line[i:i+j]...)
		i += j + 1
		if i == len(line) {
			break
		}
		switch c := line[i]; {
		case c == telnetIAC:
			dst = append(dst, telnetIAC)
			i++
		case c >= telnetWILL:
			i += 2
		case c == telnetSB:
			i = subnegEnd(line, i+1)
		case c >= telnetSE:
			i++
		default:
			// An IAC before plain data: the kernel took the urgent DM
			// that followed it out of band (Telnet "synch" before ABOR).
			// The data byte is the next command's first letter.
		}
	}
	return dst
}

// subnegEnd returns the index just past the IAC SE that closes the
// subnegotiation whose body starts at i, or len(line) if none does.
// IAC IAC inside the body is data and cannot close it.
func subnegEnd(line []byte, i int) int {
	for i < len(line) {
		j := bytes.IndexByte(line[i:], telnetIAC)
		if j < 0 || i+j+1 == len(line) {
			break
		}
		i += j + 2
		if line[i-1] == telnetSE {
			return i
		}
	}
	return len(line)
}

// AppendLine appends text as one Telnet-clean line: 0xFF doubled and CRLF
// after it, so that ReadLine gives text back. The proxy can forward this
// instead of raw when raw held Telnet commands: peers read Telnet in
// different ways, and a line the proxy has normalized means to the next
// peer exactly what it meant to the proxy. An LF in text (which ReadLine
// never returns) becomes a space, so the result is always one line.
func AppendLine(dst, text []byte) []byte {
	for _, c := range text {
		switch c {
		case '\n':
			dst = append(dst, ' ')
		case telnetIAC:
			dst = append(dst, telnetIAC, telnetIAC)
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '\r', '\n')
}

// HasTelnetNegotiation reports whether raw carries Telnet option
// negotiation (IAC WILL, WONT, DO, DONT) or subnegotiation (IAC SB). An FTP
// control connection has no use for either: RFC 959 uses only Telnet's
// two-byte commands (IP, DM, AYT, ...). Peers skip option bytes in
// different ways, so such a line could read as one command to the proxy and
// another to the server; the proxy refuses it instead of guessing.
func HasTelnetNegotiation(raw []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(raw[i:], telnetIAC)
		if j < 0 || i+j+1 >= len(raw) {
			return false
		}
		if c := raw[i+j+1]; c == telnetSB || (c >= telnetWILL && c != telnetIAC) {
			return true
		}
		i += j + 2 // past IAC IAC, or IAC and a two-byte command
	}
}
