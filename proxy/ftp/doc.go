// Package ftp is pasvgate's FTP control-channel codec: it turns the bytes
// of a control connection into lines, commands and replies, and parses and
// formats the four things that carry a data address (227 PASV, 229 EPSV,
// PORT, EPRT).
//
// Package proxy relays every line of every session through a Reader and
// decides from the parsed forms whether to pass a line on, rewrite it or
// refuse it; proxy/sniff and the probe and audit commands use the same
// code on captured streams, so what they report is what the proxy would
// have done.
//
// Everything here reads bytes sent by a peer that may be hostile, and
// knows nothing of sockets or the kernel. Parsers are pure functions that
// fail closed with an error wrapping ErrMalformed: a value they return has
// passed every bounds check, so a caller never has to re-check an octet or
// a port. They never panic, and they are fuzzed.
package ftp
