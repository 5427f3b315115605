package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"
)

// Packet is one captured IPv4 or IPv6 TCP segment.
type Packet struct {
	// Time is when the kernel saw the frame.
	Time time.Time
	// Src and Dst are the segment's endpoints.
	Src, Dst netip.AddrPort
	// SYN, ACK, FIN, RST are the segment's flags.
	SYN, ACK, FIN, RST bool
	// Seq is the segment's sequence number: what tells a retransmitted
	// payload from new bytes (see StreamOnce).
	Seq uint32
	// Payload is the TCP payload (nil for a bare ACK).
	Payload []byte
}

// Capture records the TCP segments seen on one interface of one namespace.
// It is a pure-Go AF_PACKET capture (gopacket pcapgo), so tests need neither
// cgo nor libpcap nor tcpdump.
type Capture struct {
	handle *pcapgo.EthernetHandle
	ns     string
	iface  string
	hw     net.HardwareAddr

	marker []byte // payload of this capture's stop frames
	done   chan struct{}

	mu      sync.Mutex
	packets []Packet
	readErr error
	drops   uint32

	stopOnce sync.Once
}

// stopEtherType marks the frames Stop sends to end the reader. 0x88B5 is
// IEEE 802's "local experimental" type, so no stack on the peer acts on it.
const stopEtherType = 0x88B5

var captureSeq atomic.Int64

// Capture starts capturing on iface inside namespace ns. The capture runs
// until Stop (or the lab's Close).
func (l *Lab) Capture(ns, iface string) (*Capture, error) {
	var h *pcapgo.EthernetHandle
	var hw net.HardwareAddr
	// The interface lookup and the packet socket must both happen inside
	// ns; the socket then stays bound to that namespace's interface.
	err := l.Do(ns, func() error {
		var err error
		h, err = pcapgo.NewEthernetHandle(iface)
		if err != nil {
			return err
		}
		if ifc, err := net.InterfaceByName(iface); err == nil {
			hw = ifc.HardwareAddr
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lab: capture on %s in %s: %w", iface, ns, err)
	}
	// The default capture length is the MTU; veth hands the tap GSO super
	// frames of up to 64 KiB, which would be cut.
	if err := h.SetCaptureLength(262144); err != nil {
		h.Close()
		return nil, fmt.Errorf("lab: capture length: %w", err)
	}
	if err := growReceiveBuffer(h, 32<<20); err != nil {
		h.Close()
		return nil, fmt.Errorf("lab: capture buffer: %w", err)
	}
	c := &Capture{
		handle: h, ns: ns, iface: iface, hw: hw, done: make(chan struct{}),
		marker: fmt.Appendf(nil, "pglab capture stop %d %d", os.Getpid(), captureSeq.Add(1)),
	}
	if err := l.track(c); err != nil {
		h.Close()
		return nil, err
	}
	go c.read()
	return c, nil
}

// read is the capture's one goroutine; Stop waits for it.
func (c *Capture) read() {
	defer close(c.done)
	var (
		eth     layers.Ethernet
		ip4     layers.IPv4
		ip6     layers.IPv6
		tcp     layers.TCP
		payload gopacket.Payload
	)
	parser := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &eth, &ip4, &ip6, &tcp, &payload)
	parser.IgnoreUnsupported = true
	decoded := make([]gopacket.LayerType, 0, 8)
	for {
		data, ci, err := c.handle.ReadPacketData()
		if err == nil && c.isStopFrame(data) {
			return
		}
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		if err := parser.DecodeLayers(data, &decoded); err != nil {
			continue
		}
		var p Packet
		var isTCP bool
		for _, lt := range decoded {
			switch lt {
			case layers.LayerTypeIPv4:
				src, _ := netip.AddrFromSlice(ip4.SrcIP.To4())
				dst, _ := netip.AddrFromSlice(ip4.DstIP.To4())
				p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
			case layers.LayerTypeIPv6:
				src, _ := netip.AddrFromSlice(ip6.SrcIP)
				dst, _ := netip.AddrFromSlice(ip6.DstIP)
				p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
			case layers.LayerTypeTCP:
				isTCP = true
			}
		}
		if !isTCP {
			continue
		}
		p.Time = ci.Timestamp
		p.Src = netip.AddrPortFrom(p.Src.Addr(), uint16(tcp.SrcPort))
		p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(tcp.DstPort))
		p.SYN, p.ACK, p.FIN, p.RST = tcp.SYN, tcp.ACK, tcp.FIN, tcp.RST
		p.Seq = tcp.Seq
		if len(tcp.Payload) > 0 {
			p.Payload = bytes.Clone(tcp.Payload)
		}
		c.mu.Lock()
		c.packets = append(c.packets, p)
		c.mu.Unlock()
	}
}

// Packets returns the TCP segments captured so far, in capture order.
func (c *Capture) Packets() []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Packet(nil), c.packets...)
}

// Payloads returns the non-empty TCP payloads captured so far.
func (c *Capture) Payloads() [][]byte {
	return Payloads(c.Packets())
}

// Stop ends the capture, waits for its goroutine, and returns every segment
// captured. The error reports a failed read, or frames the kernel dropped
// because the reader fell behind (then a check for absence, such as Leaks,
// is not conclusive).
func (c *Capture) Stop() ([]Packet, error) {
	c.stopOnce.Do(func() {
		// Closing the socket does not interrupt a recvmsg already blocked
		// in it, and pcapgo gives no way to set a read timeout. So send a
		// marked frame out of the captured interface: the packet tap
		// delivers outgoing frames too, in order, so when the reader meets
		// the marker it has read everything captured before Stop, which a
		// reader that stopped at the next frame would lose (it may lag far
		// behind a fast transfer). Resent in case one is dropped; bounded.
	wait:
		for i := range 100 {
			if err := c.sendStop(); err != nil && i == 0 {
				c.mu.Lock()
				c.readErr = errors.Join(c.readErr, fmt.Errorf("lab: stopping capture: %w", err))
				c.mu.Unlock()
			}
			select {
			case <-c.done:
				break wait
			case <-time.After(50 * time.Millisecond):
			}
		}
		select {
		case <-c.done:
		default:
			c.mu.Lock()
			c.readErr = errors.Join(c.readErr, errors.New("lab: capture reader did not stop"))
			c.mu.Unlock()
		}
		if st, err := c.handle.Stats(); err == nil {
			c.mu.Lock()
			c.drops = st.Drops
			c.mu.Unlock()
		}
		c.handle.Close()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.readErr
	if c.drops > 0 {
		err = errors.Join(err, fmt.Errorf("lab: capture on %s dropped %d frames", c.iface, c.drops))
	}
	return append([]Packet(nil), c.packets...), err
}

// isStopFrame reports whether data is one of this capture's stop frames.
func (c *Capture) isStopFrame(data []byte) bool {
	return len(data) >= 14+len(c.marker) &&
		data[12] == stopEtherType>>8 && data[13] == stopEtherType&0xff &&
		bytes.Equal(data[14:14+len(c.marker)], c.marker)
}

// sendStop sends one broadcast frame of stopEtherType carrying c.marker out
// of the captured interface, from inside its namespace.
func (c *Capture) sendStop() error {
	return doInNS(c.ns, func() error {
		ifc, err := net.InterfaceByName(c.iface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		frame := make([]byte, max(60, 14+len(c.marker)))
		copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(frame[6:12], c.hw)
		frame[12], frame[13] = stopEtherType>>8, stopEtherType&0xff
		copy(frame[14:], c.marker)
		sa := &unix.SockaddrLinklayer{
			Protocol: htons(stopEtherType),
			Ifindex:  ifc.Index,
			Halen:    6,
			Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		}
		return unix.Sendto(fd, frame, 0, sa)
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// growReceiveBuffer sets the packet socket's receive buffer to size bytes.
// The default (net.core.rmem_default, ~200 KiB) holds only a few of the
// 64 KiB GSO frames veth delivers, so a fast transfer overflows it and the
// kernel drops frames, the control channel's among them. pcapgo v1.1.19
// keeps the socket in an unexported field and offers no setter; reflect
// may read (not write) it. SO_RCVBUFFORCE, as root, ignores rmem_max.
func growReceiveBuffer(h *pcapgo.EthernetHandle, size int) error {
	f := reflect.ValueOf(h).Elem().FieldByName("fd")
	if !f.IsValid() || f.Kind() != reflect.Int {
		return errors.New("pcapgo.EthernetHandle has no fd field (gopacket changed?)")
	}
	return unix.SetsockoptInt(int(f.Int()), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
}

// Payloads returns the non-empty payloads of pkts.
func Payloads(pkts []Packet) [][]byte {
	var out [][]byte
	for _, p := range pkts {
		if len(p.Payload) > 0 {
			out = append(out, p.Payload)
		}
	}
	return out
}

// Leaks returns an excerpt around every place where an address starting
// with prefix (dotted, such as "192.0.2.") appears in payloads, in dotted
// form or in the comma form a 227 reply or PORT command uses ("192,0,2,").
// An IPv6 prefix (such as "2001:db8:2:") is matched without regard to
// case, as an EPRT command may write hex digits either way. An empty
// result means no payload mentions the prefix.
func Leaks(payloads [][]byte, prefix string) []string {
	fold := strings.Contains(prefix, ":")
	if fold {
		prefix = strings.ToLower(prefix)
	}
	forms := [][]byte{[]byte(prefix)}
	if comma := strings.ReplaceAll(prefix, ".", ","); comma != prefix {
		forms = append(forms, []byte(comma))
	}
	var found []string
	for _, orig := range payloads {
		p := orig
		if fold {
			p = asciiLower(orig)
		}
		for _, f := range forms {
			rest, off := p, 0
			for {
				i := bytes.Index(rest, f)
				if i < 0 {
					break
				}
				at := off + i
				lo, hi := max(0, at-40), min(len(p), at+len(f)+40)
				found = append(found, fmt.Sprintf("%q", orig[lo:hi]))
				off = at + len(f)
				rest = p[off:]
			}
		}
	}
	return found
}

// asciiLower returns a copy of b with ASCII upper-case letters lowered and
// every other byte (data is binary) left alone, so offsets stay the same.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// Stream concatenates, in capture order, the payloads of segments sent from
// src to dst; a zero port or address matches any. Used to read a control
// channel back as text (commands: Stream(pkts, any, server:21); replies:
// Stream(pkts, server:21, any)).
func Stream(pkts []Packet, src, dst netip.AddrPort) string {
	match := func(want, got netip.AddrPort) bool {
		if want.Addr().IsValid() && want.Addr() != got.Addr() {
			return false
		}
		return want.Port() == 0 || want.Port() == got.Port()
	}
	var b strings.Builder
	for _, p := range pkts {
		if len(p.Payload) > 0 && match(src, p.Src) && match(dst, p.Dst) {
			b.Write(p.Payload)
		}
	}
	return b.String()
}

// StreamOnce is the bytes one TCP connection carried from src to dst (both
// exact), in sequence order, each byte once: a retransmitted segment,
// which Stream would append again, adds only what was not there before.
// A hole (a segment the capture lost: a busy machine's packet socket
// drops some) ends it there: the bytes past it could not be placed, and
// records read across it would be misread (a TLS check failed so, on a
// transfer that was whole). So the stream may be a prefix of what the
// connection carried. Reading a byte stream as records (TLS) needs this;
// a search for text does not.
func StreamOnce(pkts []Packet, src, dst netip.AddrPort) string {
	var (
		b       strings.Builder
		next    uint32 // sequence number of the next new byte
		started bool
	)
	for _, p := range pkts {
		if p.Src != src || p.Dst != dst {
			continue
		}
		if p.SYN {
			next, started = p.Seq+1, true
			continue
		}
		if len(p.Payload) == 0 {
			continue
		}
		if !started {
			next, started = p.Seq, true
		}
		data := p.Payload
		// Serial-number arithmetic (RFC 1982): behind is how far the
		// segment starts before next, modulo 2^32; negative, after it.
		behind := int32(next - p.Seq)
		if behind < 0 {
			// Later packets of the capture may fill the hole (a
			// retransmission), but the stream would then be out of
			// order: stop at it.
			break
		}
		if behind > 0 {
			if int(behind) >= len(data) {
				continue // all of it seen already
			}
			data = data[behind:]
		}
		b.Write(data)
		next = p.Seq + uint32(len(p.Payload))
	}
	return b.String()
}

// SYNs returns the destinations of connection attempts (SYN without ACK)
// in pkts, in order: where a client actually tried to connect.
func SYNs(pkts []Packet) []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range pkts {
		if p.SYN && !p.ACK {
			out = append(out, p.Dst)
		}
	}
	return out
}
