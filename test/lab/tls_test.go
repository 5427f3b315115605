package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

// TestStreamOnce: a retransmitted segment, whole or overlapping, adds no
// byte twice; sequence numbers wrap; other connections are left out; a
// hole ends the stream.
func TestStreamOnce(t *testing.T) {
	a, b := netip.MustParseAddrPort("203.0.113.10:5000"), netip.MustParseAddrPort("203.0.113.1:21")
	seg := func(seq uint32, s string) Packet { return Packet{Src: a, Dst: b, Seq: seq, Payload: []byte(s)} }
	var base uint32 = 1<<32 - 3 // the sequence numbers wrap inside "hello"
	pkts := []Packet{
		{Src: a, Dst: b, SYN: true, Seq: base - 1},
		seg(base, "hello "),
		seg(base, "hello "), // retransmitted whole
		{Src: b, Dst: a, Seq: 7, Payload: []byte("other way")},
		seg(base+3, "lo world"), // overlapping the first
		seg(base+11, "!"),       // after the overlap
		{Src: netip.MustParseAddrPort("203.0.113.10:5001"), Dst: b, Payload: []byte("another connection")},
	}
	if got := StreamOnce(pkts, a, b); got != "hello world!" {
		t.Errorf("StreamOnce = %q, want %q", got, "hello world!")
	}
	// A segment the capture lost ends the stream: what follows cannot be
	// placed, even when a retransmission fills the hole later.
	holed := append(pkts[:len(pkts):len(pkts)], seg(base+20, "past a hole"), seg(base+12, "filled"))
	if got := StreamOnce(holed, a, b); got != "hello world!" {
		t.Errorf("StreamOnce with a hole = %q, want %q", got, "hello world!")
	}
	if got := Stream(pkts, a, b); got != "hello hello lo world!" {
		t.Errorf("Stream = %q: the case does not retransmit", got)
	}
}

// TestWireCertificate: the leaf of a TLS 1.2 Certificate message is
// found across records and after other handshake messages; none is found
// once the records are encrypted, nor in a stream that is not TLS.
func TestWireCertificate(t *testing.T) {
	leaf, inter := strings.Repeat("L", 300), strings.Repeat("I", 200)
	u24 := func(n int) string { return string([]byte{byte(n >> 16), byte(n >> 8), byte(n)}) }
	msg := func(typ byte, body string) string { return string([]byte{typ}) + u24(len(body)) + body }
	list := u24(len(leaf)) + leaf + u24(len(inter)) + inter
	handshake := msg(2, strings.Repeat("h", 70)) + msg(11, u24(len(list))+list) + msg(14, "")
	record := func(typ byte, body string) string {
		return string([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}) + body
	}
	// The handshake split over two records, as servers may send it.
	cut := 100
	stream := "220 hi\r\n234 go\r\n" + record(22, handshake[:cut]) + record(22, handshake[cut:]) + record(20, "\x01") + record(22, "encrypted")
	sum := sha256.Sum256([]byte(leaf))
	got, err := WireCertificate(stream, "234 ")
	if err != nil || got != hex.EncodeToString(sum[:]) {
		t.Errorf("WireCertificate = %q, %v; want the leaf's %x", got, err, sum)
	}
	tls13 := "234 go\r\n" + record(22, msg(2, strings.Repeat("h", 70))) + record(20, "\x01") + record(23, "encrypted certificate")
	if got, err := WireCertificate(tls13, "234 "); err == nil {
		t.Errorf("TLS 1.3: WireCertificate = %q, want an error", got)
	}
	if got, err := WireCertificate("234 go\r\n227 Entering Passive Mode (192,0,2,10,4,1)\r\n", "234 "); err == nil {
		t.Errorf("clear text: WireCertificate = %q, want an error", got)
	}
}
