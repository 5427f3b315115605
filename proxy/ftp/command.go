package ftp

import (
	"bytes"
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
// decides on (Verb, Arg) and what it came from (Text, Raw). The slices are
// those of Reader.ReadLine and valid as long as they are.
type Command struct {
	Verb Verb
	// Arg is the argument (see ParseCommand), nil if there is none.
	Arg []byte
	// Text is the line's text, Telnet and terminator removed.
	Text []byte
	// Raw is the line's bytes as received.
	Raw []byte
}

// ParseLine parses a line as Reader.ReadLine returns it.
func ParseLine(raw, text []byte) Command {
	verb, arg := ParseCommand(text)
	return Command{Verb: verb, Arg: arg, Text: text, Raw: raw}
}

// ParseCommand splits a command line's text into its verb and argument.
// The verb is everything before the first space, matched without regard
// to case; the argument is what follows the first run of spaces after it,
// nil if nothing does. Only a space separates, as in the servers, so that
// "PORT\t..." is not a PORT here when it is not one there. An unknown verb
// gives VerbOther and still its argument. It does not allocate.
func ParseCommand(text []byte) (Verb, []byte) {
	word, rest := text, []byte(nil)
	if i := bytes.IndexByte(text, ' '); i >= 0 {
		word, rest = text[:i], text[i:]
	}
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		rest = nil
	}
	return lookupVerb(word), rest
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
