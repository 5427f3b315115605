package sniff

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// wire writes a synthetic capture: Ethernet frames of TCP segments with
// consistent sequence numbers, as a pcap stream. Tests build control
// conversations with it instead of shipping binary files.
type wire struct {
	tb  testing.TB
	w   *pcapgo.Writer
	now time.Time
	buf gopacket.SerializeBuffer
	n   int
}

func newWire(tb testing.TB, out io.Writer) *wire {
	tb.Helper()
	w := pcapgo.NewWriterNanos(out)
	if err := w.WriteFileHeader(maxSnapLen, layers.LinkTypeEthernet); err != nil {
		tb.Fatal(err)
	}
	return &wire{tb: tb, w: w, now: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC), buf: gopacket.NewSerializeBuffer()}
}

// tick moves the capture clock on.
func (w *wire) tick(d time.Duration) { w.now = w.now.Add(d) }

type tcpFlags struct{ syn, ack, fin, rst bool }

// frame writes one segment from src to dst.
func (w *wire) frame(src, dst netip.AddrPort, seq, ack uint32, f tcpFlags, payload []byte) {
	w.tb.Helper()
	w.frameAt(w.now, src, dst, seq, ack, f, payload)
	w.tick(time.Millisecond)
}

func (w *wire) frameAt(at time.Time, src, dst netip.AddrPort, seq, ack uint32, f tcpFlags, payload []byte) {
	w.tb.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, SYN: f.syn, ACK: f.ack, FIN: f.fin, RST: f.rst, Window: 65535}
	var netLayer gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		netLayer = ip
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		netLayer = ip
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(w.buf, opts, eth, netLayer, tcp, gopacket.Payload(payload)); err != nil {
		w.tb.Fatal(err)
	}
	b := w.buf.Bytes()
	if err := w.w.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(b), Length: len(b)}, b); err != nil {
		w.tb.Fatal(err)
	}
	w.n++
}

// conn is one synthetic TCP connection on a wire.
type conn struct {
	w          *wire
	c, s       netip.AddrPort
	cseq, sseq uint32
}

// dial writes the three-way handshake.
func (w *wire) dial(client, server netip.AddrPort) *conn {
	k := &conn{w: w, c: client, s: server, cseq: 1000, sseq: 5000}
	w.frame(client, server, k.cseq, 0, tcpFlags{syn: true}, nil)
	w.frame(server, client, k.sseq, k.cseq+1, tcpFlags{syn: true, ack: true}, nil)
	k.cseq++
	k.sseq++
	w.frame(client, server, k.cseq, k.sseq, tcpFlags{ack: true}, nil)
	return k
}

// pickUp is a connection whose handshake the capture missed.
func (w *wire) pickUp(client, server netip.AddrPort) *conn {
	return &conn{w: w, c: client, s: server, cseq: 77000, sseq: 99000}
}

// cmd sends payload from the client; the server acks it.
func (k *conn) cmd(payload string) { k.send(true, payload) }

// reply sends payload from the server; the client acks it.
func (k *conn) reply(payload string) { k.send(false, payload) }

func (k *conn) send(fromClient bool, payload string) {
	src, dst, seq, ack := k.s, k.c, &k.sseq, k.cseq
	if fromClient {
		src, dst, seq, ack = k.c, k.s, &k.cseq, k.sseq
	}
	k.w.frame(src, dst, *seq, ack, tcpFlags{ack: true}, []byte(payload))
	*seq += uint32(len(payload))
	k.w.frame(dst, src, ack, *seq, tcpFlags{ack: true}, nil)
}

// close writes FIN, FIN and the last ACK.
func (k *conn) close() {
	k.w.frame(k.c, k.s, k.cseq, k.sseq, tcpFlags{fin: true, ack: true}, nil)
	k.cseq++
	k.w.frame(k.s, k.c, k.sseq, k.cseq, tcpFlags{fin: true, ack: true}, nil)
	k.sseq++
	k.w.frame(k.c, k.s, k.cseq, k.sseq, tcpFlags{ack: true}, nil)
}

// reset writes a RST from the client.
func (k *conn) reset() {
	k.w.frame(k.c, k.s, k.cseq, 0, tcpFlags{rst: true}, nil)
}

// dataDial writes a data connection attempt from src to dst and, when
// answered, the SYN-ACK; refused gives a RST instead.
func (w *wire) dataDial(src, dst netip.AddrPort, answered, refused bool) {
	w.frame(src, dst, 1, 0, tcpFlags{syn: true}, nil)
	switch {
	case answered:
		w.frame(dst, src, 1, 2, tcpFlags{syn: true, ack: true}, nil)
		w.frame(src, dst, 2, 2, tcpFlags{ack: true}, nil)
	case refused:
		w.frame(dst, src, 0, 2, tcpFlags{rst: true, ack: true}, nil)
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
