package sniff

import (
	"fmt"
	"net/netip"
	"time"
)

// Report is what an audit found in one capture. It marshals to the JSON
// that `pasvgate audit --json` prints; WriteText prints it for people.
type Report struct {
	// Source names the capture: a file name, or "live:IFACE".
	Source string `json:"source,omitempty"`
	// Ports are the control ports followed.
	Ports []uint16 `json:"control_ports"`
	// Stats count what was read and what was not followed.
	Stats Stats `json:"stats"`
	// Sessions are the control sessions, in the order their first packet
	// was seen, at most Limits.MaxSessions of them.
	Sessions []*Session `json:"sessions"`
	// SessionsOmitted counts sessions beyond Limits.MaxSessions. They are
	// still counted in Servers.
	SessionsOmitted int `json:"sessions_omitted,omitempty"`
	// Servers sums the sessions up per server control address: the
	// answer to "which servers advertise bad addresses".
	Servers []*ServerSummary `json:"servers"`
	// SessionsNotSummarized counts sessions of servers beyond
	// Limits.MaxServers, which Servers leaves out.
	SessionsNotSummarized int `json:"sessions_not_summarized,omitempty"`
	// Problems counts the problems of every session, listed or not: the
	// number a script checks.
	Problems int `json:"problems"`
	// Warnings say why the report may be incomplete: a truncated file,
	// frames the kernel dropped, limits reached.
	Warnings []string `json:"warnings,omitempty"`
}

// Stats counts what a capture held.
type Stats struct {
	// Packets is the number of frames read.
	Packets uint64 `json:"packets"`
	// First and Last are the capture times of the first and last frame.
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
	// NotTCP counts frames that were not IPv4 or IPv6 TCP (ARP, ICMP,
	// fragments after the first, link types not understood).
	NotTCP uint64 `json:"not_tcp"`
	// ControlSegments counts TCP segments to or from a control port.
	ControlSegments uint64 `json:"control_segments"`
	// SegmentsNotFollowed counts control segments that were dropped
	// because Limits.MaxOpen connections were already being followed.
	SegmentsNotFollowed uint64 `json:"segments_not_followed,omitempty"`
	// LostBytes counts control-channel bytes missing from the capture
	// (gaps in the sequence space that were skipped).
	LostBytes uint64 `json:"lost_bytes,omitempty"`
	// KernelDrops counts frames a live capture lost because it fell
	// behind.
	KernelDrops uint64 `json:"kernel_drops,omitempty"`
}

// Session is one FTP control connection.
type Session struct {
	// ID numbers sessions from 1 in the order they were first seen.
	ID int `json:"id"`
	// Client and Server are the control connection's endpoints as the
	// capture saw them.
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	// Start and End are the times of its first and last segment.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Ended says how the session ended, as far as the capture shows.
	Ended EndReason `json:"ended"`
	// FromStart reports whether the capture holds the connection's
	// handshake; false means it was picked up mid-session, so its first
	// replies may be missing.
	FromStart bool `json:"from_start"`
	// Banner is the first line of the server's 220 greeting.
	Banner string `json:"banner,omitempty"`
	// ClientBytes and ServerBytes count the payload each side sent.
	ClientBytes uint64 `json:"client_bytes"`
	ServerBytes uint64 `json:"server_bytes"`
	// Commands and Replies count complete commands and final replies.
	Commands int `json:"commands"`
	Replies  int `json:"replies"`
	// DataAddrs are the 227, 229, PORT and EPRT seen, in order, at most
	// Limits.MaxEvents of them.
	DataAddrs []*DataAddr `json:"data_addresses"`
	// DataAddrsOmitted counts those beyond Limits.MaxEvents.
	DataAddrsOmitted int `json:"data_addresses_omitted,omitempty"`
	// TLS is set when the session switched to TLS: nothing after that
	// point can be read.
	TLS *TLSStart `json:"tls,omitempty"`
	// LongLines counts lines over the line limit, dropped as the proxy
	// drops them.
	LongLines int `json:"long_lines,omitempty"`
	// MalformedReplies counts server lines that were no reply.
	MalformedReplies int `json:"malformed_replies,omitempty"`
	// LostBytes counts bytes of this connection missing from the capture.
	LostBytes uint64 `json:"lost_bytes,omitempty"`
	// Problems counts the problems of its data addresses.
	Problems int `json:"problems"`
}

// TLSStart records where a session stopped being readable.
type TLSStart struct {
	// Time is when the server accepted AUTH (its 234 reply), or when the
	// first TLS record was seen.
	Time time.Time `json:"time"`
	// Command is the AUTH command accepted ("AUTH TLS"); empty when TLS
	// records were seen without one.
	Command string `json:"command,omitempty"`
	// Implicit is set when the connection carried TLS from its first
	// byte (implicit FTPS). Without it and without Command, the session
	// was picked up mid-session, already encrypted.
	Implicit bool `json:"implicit,omitempty"`
}

// Kinds of DataAddr.
const (
	KindPASV = "227"  // a 227 reply: the server's passive address
	KindEPSV = "229"  // a 229 reply: the server's passive port
	KindPORT = "PORT" // a PORT command: the client's active address
	KindEPRT = "EPRT" // an EPRT command: the client's active address
)

// DataAddr is one data address a side announced: a 227 or 229 reply from
// the server, or a PORT or EPRT command from the client.
type DataAddr struct {
	// Time is when the reply's last line or the command was seen.
	Time time.Time `json:"time"`
	// Kind is KindPASV, KindEPSV, KindPORT or KindEPRT.
	Kind string `json:"kind"`
	// Command is, for a reply, the command it answered (PASV, EPSV, or
	// OTHER); empty when no command was waiting for a reply.
	Command string `json:"command,omitempty"`
	// Line is the reply (its first and, if different, last line) or the
	// command, printable ASCII only, cut at 200 bytes.
	Line string `json:"line"`
	// Reply is, for PORT and EPRT, the code of the server's reply.
	Reply int `json:"reply,omitempty"`
	// Addr is the announced address. For a 229, which carries only a
	// port, it is the control connection's server address with that
	// port. Invalid when Error is set.
	Addr netip.AddrPort `json:"address,omitzero"`
	// Error says why the address could not be parsed.
	Error string `json:"error,omitempty"`
	// Own reports whether Addr is the announcing side's own address on
	// the control connection (the server's for 227/229, the client's for
	// PORT/EPRT), or 0.0.0.0 in a 227, which means exactly that.
	Own bool `json:"own_address"`
	// Private reports a private address (RFC 1918, RFC 6598, unique
	// local IPv6).
	Private bool `json:"private,omitempty"`
	// Unroutable reports an address no peer can connect to (loopback,
	// link-local, multicast, broadcast, unspecified).
	Unroutable bool `json:"unroutable,omitempty"`
	// Data is what the capture shows of the data connection to Addr.
	Data DataConn `json:"data_connection"`
	// Transfer is the first transfer command (LIST, RETR, ...) sent after
	// the address, and TransferReply its final reply code.
	Transfer      string `json:"transfer,omitempty"`
	TransferReply int    `json:"transfer_reply,omitempty"`
	// Problems are what is wrong with this address, if anything.
	Problems []Problem `json:"problems,omitempty"`
}

// DataConn is what a capture shows of one data connection.
type DataConn struct {
	// SYNs counts connection attempts (SYN without ACK) to the address,
	// retransmissions included.
	SYNs int `json:"syns"`
	// From and To are the first attempt's endpoints.
	From netip.AddrPort `json:"from,omitzero"`
	To   netip.AddrPort `json:"to,omitzero"`
	// ToControlAddress reports that the attempt went to the control
	// connection's address with the announced port, not to the address
	// a 227 announced: the client ignored the 227 address, as curl does
	// by default.
	ToControlAddress bool `json:"to_control_address,omitempty"`
	// SYNACK reports that the attempt was answered: the connection
	// opened.
	SYNACK bool `json:"syn_ack"`
	// Reset reports that the attempt was refused with a RST.
	Reset bool `json:"reset,omitempty"`
}

// ProblemCode names a kind of problem, for scripts reading the JSON.
type ProblemCode string

// The problems an audit reports.
const (
	// ProblemOtherHost: the address is not the announcing side's own.
	// For a 227 this is the classic misconfiguration (a wrong
	// pasv_address or masquerade address, or a server behind NAT that
	// does not know it).
	ProblemOtherHost ProblemCode = "other-host"
	// ProblemPrivate: a private address sent to a peer that is not
	// itself on a private address, which cannot reach it.
	ProblemPrivate ProblemCode = "private-address"
	// ProblemUnroutable: an address nobody can connect to.
	ProblemUnroutable ProblemCode = "unroutable-address"
	// ProblemMalformed: the reply or command does not parse.
	ProblemMalformed ProblemCode = "malformed"
	// ProblemNoAnswer: a data connection was attempted and nothing
	// answered (a firewall dropped it, or no host has the address).
	ProblemNoAnswer ProblemCode = "no-answer"
	// ProblemRefused: the data connection was refused (RST).
	ProblemRefused ProblemCode = "refused"
	// ProblemNoConnection: a transfer command was sent, but no data
	// connection to the address appeared in the capture.
	ProblemNoConnection ProblemCode = "no-data-connection"
	// ProblemTransferFailed: the transfer's final reply says the data
	// connection failed (425, 426).
	ProblemTransferFailed ProblemCode = "transfer-failed"
	// ProblemRejected: the server refused a PORT or EPRT.
	ProblemRejected ProblemCode = "rejected"
)

// Problem is one thing wrong with a data address.
type Problem struct {
	Code ProblemCode `json:"code"`
	// Detail says it in a sentence, with the addresses involved.
	Detail string `json:"detail"`
}

// EndReason is how a session ended, as far as the capture shows.
type EndReason uint8

// The ways a session ends.
const (
	EndCapture EndReason = iota // still open when the capture ended
	EndFIN                      // closed (FIN)
	EndRST                      // reset (RST)
	EndIdle                     // no segment for Limits.IdleTimeout: stopped following
	EndEvicted                  // stopped following to make room (Limits.MaxOpen)
)

var endNames = [...]string{
	EndCapture: "capture-end",
	EndFIN:     "fin",
	EndRST:     "rst",
	EndIdle:    "idle",
	EndEvicted: "evicted",
}

// String returns the reason's JSON name.
func (r EndReason) String() string {
	if int(r) < len(endNames) {
		return endNames[r]
	}
	return fmt.Sprintf("EndReason(%d)", r)
}

// MarshalText makes the JSON carry the name.
func (r EndReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a name back, so a report can be read from JSON.
func (r *EndReason) UnmarshalText(b []byte) error {
	for i, n := range endNames {
		if n == string(b) {
			*r = EndReason(i)
			return nil
		}
	}
	return fmt.Errorf("unknown end reason %q", b)
}

// Verdicts of a ServerSummary.
const (
	VerdictBadAddress      = "bad-address"      // it advertised addresses its clients cannot use
	VerdictDataUnreachable = "data-unreachable" // its addresses were right, but data connections to them failed
	VerdictOK              = "ok"               // every passive reply seen was usable
	VerdictNoPassive       = "no-passive"       // no passive reply seen
	VerdictEncrypted       = "encrypted"        // its sessions were TLS: nothing to judge
)

// ServerSummary sums up the sessions of one server control address.
type ServerSummary struct {
	// Server is the control address clients connected to.
	Server netip.AddrPort `json:"server"`
	// Sessions counts its sessions, Encrypted those that went TLS.
	Sessions  int `json:"sessions"`
	Encrypted int `json:"encrypted"`
	// Passive counts its 227 and 229 replies.
	Passive int `json:"passive_replies"`
	// BadAddress counts replies whose address has an address problem
	// (other-host, private-address, unroutable-address, malformed).
	BadAddress int `json:"bad_addresses"`
	// Advertised lists the distinct addresses other than its own that it
	// advertised in 227 replies (at most 8).
	Advertised []netip.Addr `json:"advertised_other,omitempty"`
	// Unanswered and Refused count passive data connections that got no
	// answer, or a RST.
	Unanswered int `json:"data_unanswered"`
	Refused    int `json:"data_refused"`
	// Verdict is one of the Verdict constants.
	Verdict string `json:"verdict"`
}

// maxAdvertised bounds ServerSummary.Advertised: the point is to name the
// wrong address, not to list a hostile server's every invention.
const maxAdvertised = 8
