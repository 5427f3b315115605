package ftp

import (
	"strconv"
)

// Verb is a command the proxy tells apart from the others. Commands it has
// no business with are VerbOther and pass through as they are.
type Verb uint8

// The verbs, by their RFC names. VerbOther is the zero value: an unknown
// verb, or none.
const (
	VerbOther Verb = iota
	VerbUSER
	VerbPASS
	VerbACCT
	VerbPASV
	VerbEPSV
	VerbPORT
	VerbEPRT
	VerbLPRT
	VerbLPSV
	VerbAUTH
	VerbPBSZ
	VerbPROT
	VerbCCC
	VerbRETR
	VerbSTOR
	VerbSTOU
	VerbAPPE
	VerbLIST
	VerbNLST
	VerbMLSD
	VerbABOR
	VerbQUIT
	VerbREIN
	VerbREST
	VerbNOOP
	VerbFEAT
	VerbTYPE
	numVerbs
)

var verbNames = [numVerbs]string{
	VerbOther: "OTHER",
	VerbUSER:  "USER", VerbPASS: "PASS", VerbACCT: "ACCT",
	VerbPASV: "PASV", VerbEPSV: "EPSV", VerbPORT: "PORT", VerbEPRT: "EPRT",
	VerbLPRT: "LPRT", VerbLPSV: "LPSV",
	VerbAUTH: "AUTH", VerbPBSZ: "PBSZ", VerbPROT: "PROT", VerbCCC: "CCC",
	VerbRETR: "RETR", VerbSTOR: "STOR", VerbSTOU: "STOU", VerbAPPE: "APPE",
	VerbLIST: "LIST", VerbNLST: "NLST", VerbMLSD: "MLSD",
	VerbABOR: "ABOR", VerbQUIT: "QUIT", VerbREIN: "REIN", VerbREST: "REST",
	VerbNOOP: "NOOP", VerbFEAT: "FEAT", VerbTYPE: "TYPE",
}

// verbByName is keyed by the upper-case name padded with zero bytes; a
// fixed-size key makes the lookup free of allocation. Read-only after init.
var verbByName = func() map[[4]byte]Verb {
	m := make(map[[4]byte]Verb, numVerbs)
	for v := VerbOther + 1; v < numVerbs; v++ {
		var k [4]byte
		copy(k[:], verbNames[v])
		m[k] = v
	}
	return m
}()

// String returns the verb's name as sent on the wire, "OTHER" for
// VerbOther.
func (v Verb) String() string {
	if v < numVerbs {
		return verbNames[v]
	}
	return "Verb(" + strconv.Itoa(int(v)) + ")"
}

// IsTransfer reports whether the verb opens a data connection (RETR STOR
// STOU APPE LIST NLST MLSD): its final reply ends the mapping made for it.
func (v Verb) IsTransfer() bool {
	switch v {
	case VerbRETR, VerbSTOR, VerbSTOU, VerbAPPE, VerbLIST, VerbNLST, VerbMLSD:
		return true
	}
	return false
}

// Command is one command line from a client, parsed once: what the proxy
// decides on (Verb, Arg) and what it came from (Word, Sep, Text, Raw). The
// slices are those of Reader.ReadLine and valid as long as they are.
type Command struct {
	Verb Verb
	// Arg is the argument (see ParseCommand), nil if there is none.
	Arg []byte
	// Word is the verb as the client wrote it: Text up to the first
	// whitespace byte. Empty when the line is empty or starts with
	// whitespace.
	Word []byte
	// Sep is the whitespace byte that ended Word, 0 if none did.
	Sep byte
	// Text is the line's text, Telnet and terminator removed.
	Text []byte
	// Raw is the line's bytes as received.
	Raw []byte
}

// ParseLine parses a line as Reader.ReadLine returns it.
func ParseLine(raw, text []byte) Command {
	word, sep, arg := splitCommand(text)
	return Command{Verb: lookupVerb(word), Arg: arg, Word: word, Sep: sep, Text: text, Raw: raw}
}

// NoVerb reports whether the line is empty or starts with whitespace, and
// so has no verb. ProFTPD (and pure-ftpd 1.0.50) drop such a line without
// a reply, vsftpd answers 500: a proxy that forwarded it could not know
// whether a reply is owed.
func (c Command) NoVerb() bool { return len(c.Word) == 0 }

// BadVerb reports whether the verb holds a byte other than an ASCII letter
// or digit. No FTP command has one; vsftpd and ProFTPD answer such a line
// 500, and pure-ftpd 1.0.50 drops it without a reply (its "P@SW" alias of
// PASV aside).
func (c Command) BadVerb() bool {
	for _, b := range c.Word {
		switch {
		case 'A' <= b && b <= 'Z', 'a' <= b && b <= 'z', '0' <= b && b <= '9':
		default:
			return true
		}
	}
	return false
}

// Canonical reports whether the line is already as AppendCanonical would
// write it, but for the case of the verb (which every server ignores) and
// Telnet commands: its verb, if followed by anything, is followed by one
// space.
func (c Command) Canonical() bool { return c.Sep == 0 || (c.Sep == ' ' && len(c.Arg) > 0) }

// AppendCanonical appends the command as one canonical line: the verb in
// upper case, and if there is an argument one space and the argument byte
// for byte, then CRLF (written as AppendLine writes text). A canonical
// line reads the same to every server, whatever separator or case the
// client used.
func (c Command) AppendCanonical(dst []byte) []byte {
	for _, b := range c.Word {
		if 'a' <= b && b <= 'z' {
			b -= 'a' - 'A'
		}
		dst = append(dst, b)
	}
	if len(c.Arg) == 0 {
		return append(dst, '\r', '\n')
	}
	return AppendLine(append(dst, ' '), c.Arg)
}

// How servers split a command line into verb and argument. Read in their
// sources (vsftpd 3.0 ftpcmdio.c vsf_cmdio_get_cmd_and_arg and str.c
// str_split_char; ProFTPD 1.3 src/main.c pr_cmd_read and make_ftp_cmd,
// src/str.c pr_str_get_word; pure-ftpd 1.0.50, Debian's, src/ftp_parser.c
// sfgets and parser) and checked against the Debian packages in the lab
// (test/interop TestVerbSmuggling). All three end a line at LF and drop
// the CR before it.
//
//   - vsftpd: the verb ends at the first space, and only a space: a TAB,
//     VT, FF or CR stays in the verb, which is then unknown (500). The
//     verb is upper-cased. The argument is everything after that one
//     space, as is (leading and trailing spaces kept). A leading space
//     makes the verb empty (500). Every NUL in the line becomes LF in the
//     text, before the split.
//   - ProFTPD: a line that starts with whitespace (isspace: SP HT LF VT FF
//     CR), or is empty, is dropped with no reply at all; one leading CR is
//     skipped first. The verb ends at the first whitespace byte of any of
//     those kinds, and its letters are upper-cased before dispatch. The
//     argument is everything after that one byte, as is (cmd->arg, which
//     RETR, STOR and the like use); its words, split at runs of
//     whitespace, are argv, and PORT and EPRT take exactly one word, so
//     "PORT\t\t1,2,3,4,5,6 " is a PORT. CR NUL in the argument loses its
//     NUL (RFC 2640); a NUL elsewhere ends the string there.
//   - pure-ftpd: while reading, every control byte but CR (C0, DEL, and by
//     default C1 too) is replaced by '_', so a TAB, VT or FF never
//     separates. The verb is the letters, digits and '@' (its "P@SW"
//     alias of PASV) at the start, lower-cased; it must be followed by the
//     end of the line or one whitespace byte, which is a space or a bare
//     CR. The argument is everything after that byte, as is (a build
//     option trims runs of whitespace on both sides instead). A line with
//     no verb, or a verb followed by anything else ("PORT\t1,2,3,4,5,6"
//     reads as "PORT_1,2,3,4,5,6"), is dropped without a reply in 1.0.50,
//     and answered 500 by later versions.
//
// So no server reads a verb across whitespace, every server reads it in
// any case, and for all three the argument starts one byte after the verb.
// ParseCommand reads the verb the widest way (ProFTPD's: any whitespace),
// so that every line any of them takes as a PORT is a PORT here too. The
// proxy refuses itself the lines some server would drop without a reply
// (no verb, a verb of other bytes than letters and digits, a bare CR or a
// NUL), and sends the lines it acts on, and every line whose verb ends at
// whitespace other than a space, in the canonical form, which all of them
// read alike.

// IsSpace reports whether c is whitespace to an FTP server reading a
// command: ASCII SP, HT, LF, VT, FF or CR (C isspace in the C locale).
func IsSpace(c byte) bool {
	return c == ' ' || ('\t' <= c && c <= '\r')
}

// TrimSpace returns b without the whitespace (IsSpace) at either end: a
// one-word argument as ProFTPD takes it ("EPSV ALL "). Unlike
// bytes.TrimSpace it leaves non-ASCII spaces, which no server trims.
func TrimSpace(b []byte) []byte {
	for len(b) > 0 && IsSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && IsSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// ParseCommand splits a command line's text into its verb and argument, as
// servers do (see above). The verb is everything before the first
// whitespace byte (IsSpace), matched without regard to ASCII case; the
// argument is everything after that one byte, as is, and nil if that is
// nothing. A line that starts with whitespace has no verb: VerbOther (see
// Command.NoVerb). An unknown verb gives VerbOther and still its argument.
// It does not allocate.
func ParseCommand(text []byte) (Verb, []byte) {
	word, _, arg := splitCommand(text)
	return lookupVerb(word), arg
}

// splitCommand splits text at its first whitespace byte: the verb before
// it, the byte (0 if none), and the argument after it (nil if empty).
func splitCommand(text []byte) (word []byte, sep byte, arg []byte) {
	for i, c := range text {
		if IsSpace(c) {
			if arg = text[i+1:]; len(arg) == 0 {
				arg = nil
			}
			return text[:i], c, arg
		}
	}
	return text, 0, nil
}

func lookupVerb(word []byte) Verb {
	if len(word) < 3 || len(word) > 4 {
		return VerbOther
	}
	var k [4]byte
	for i, c := range word {
		// Clearing bit 5 upper-cases ASCII letters; anything that is not
		// then A-Z was no letter, and cannot alias one (or the padding).
		if c &^= 0x20; c < 'A' || c > 'Z' {
			return VerbOther
		}
		k[i] = c
	}
	return verbByName[k]
}
