package sniff

import (
	"net/netip"
	"slices"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/reassembly"
)

// Config says what to follow in a capture.
type Config struct {
	// Ports are the FTP control ports; empty means 21.
	Ports []uint16
	// Limits bound memory; the zero value means the defaults.
	Limits Limits
}

func (c Config) ports() []uint16 {
	if len(c.Ports) == 0 {
		return []uint16{21}
	}
	return c.Ports
}

// Reassembly tuning. A capture that lost a segment (not the network: the
// sender retransmits within a second or two) leaves a hole that would hold
// the rest of its direction back; after gapTimeout of capture time the
// hole is skipped and the line around it dropped. Out-of-order data is
// buffered in the assembler's pages of 1900 bytes, bounded per connection
// and in all.
const (
	gapTimeout      = 3 * time.Second
	flushEvery      = time.Second
	squeezeIdle     = 30 * time.Second
	maxPagesPerConn = 64
	maxPagesInAll   = 4096
	maxSnapLen      = 262144 // tcpdump's largest; veth GSO frames reach 64 KiB
)

// tracker is the packet side of an audit. It decodes frames, tells the
// Extractor of every handshake (data connections are recognised by their
// SYNs alone), and puts the control connections back together with
// gopacket's reassembly, one Stream per connection, whose bytes go
// straight into the Extractor: nothing is buffered beyond the line being
// read, so a stream can never block the assembler, and a stream that is
// no longer readable (TLS) is drained by dropping its bytes.
type tracker struct {
	ex      *Extractor
	ports   []uint16
	lim     Limits
	asm     *reassembly.Assembler
	streams map[connKey]*stream
	// next is the stream the factory hands out when the assembler asks
	// for one: the tracker decides what to follow, not the assembler,
	// so streams and the assembler's pool stay in step.
	next    *stream
	ac      captureContext
	dec     decoder
	stats   Stats
	now     time.Time // the latest capture time seen
	flushed time.Time
	squeeze time.Time
	closing bool
}

func newTracker(cfg Config) *tracker {
	t := &tracker{
		ex:      NewExtractor(cfg.Limits),
		ports:   slices.Clone(cfg.ports()),
		streams: make(map[connKey]*stream),
	}
	t.lim = t.ex.Limits()
	t.asm = reassembly.NewAssembler(reassembly.NewStreamPool(t))
	t.asm.MaxBufferedPagesPerConnection = maxPagesPerConn
	t.asm.MaxBufferedPagesTotal = maxPagesInAll
	t.dec.init()
	return t
}

// packet takes one captured frame of the given link type. data is not
// retained once packet returns: the assembler copies what it must keep.
func (t *tracker) packet(data []byte, ci gopacket.CaptureInfo, link layers.LinkType) {
	t.stats.Packets++
	ts := ci.Timestamp
	if t.stats.First.IsZero() || ts.Before(t.stats.First) {
		t.stats.First = ts
	}
	if ts.After(t.stats.Last) {
		t.stats.Last = ts
	}
	defer t.advance(ts)
	netFlow, src, dst, ok := t.dec.decode(data, link)
	if !ok {
		t.stats.NotTCP++
		return
	}
	tcp := &t.dec.tcp
	switch {
	case tcp.RST:
		t.ex.Handshake(RST, src, dst, ts)
	case tcp.SYN && tcp.ACK:
		t.ex.Handshake(SYNACK, src, dst, ts)
	case tcp.SYN:
		t.ex.Handshake(SYN, src, dst, ts)
	}
	if !slices.Contains(t.ports, dst.Port()) && !slices.Contains(t.ports, src.Port()) {
		return
	}
	t.stats.ControlSegments++
	key := keyOf(src, dst)
	if _, ok := t.streams[key]; !ok {
		if tcp.RST || (!tcp.SYN && len(tcp.Payload) == 0) {
			// A late ACK, FIN or RST of a connection that is not (or no
			// longer) followed: nothing to read, and following it would
			// report an empty session.
			return
		}
		if len(t.streams) >= t.lim.MaxOpen && !t.makeRoom() {
			t.stats.SegmentsNotFollowed++
			return
		}
		c := t.orient(src, dst, tcp)
		st := &stream{t: t, key: key, conn: c, firstIsClient: src == c.Client, last: ts}
		if !t.ex.Begin(c, ts, tcp.SYN) {
			t.stats.SegmentsNotFollowed++
			return
		}
		t.streams[key] = st
		t.next = st
	}
	t.ac.ci = ci
	t.asm.AssembleWithContext(netFlow, tcp, &t.ac)
	t.next = nil
}

// advance moves capture time on, flushing on its ticks: holes older than
// gapTimeout are skipped and connections idle for Limits.IdleTimeout are
// closed. Capture time, not the wall clock, so that a file read in a
// second behaves as the live capture it was.
func (t *tracker) advance(now time.Time) {
	if now.After(t.now) {
		t.now = now
	}
	if t.now.Sub(t.flushed) < flushEvery {
		return
	}
	t.flushed = t.now
	t.asm.FlushWithOptions(reassembly.FlushOptions{T: t.now.Add(-gapTimeout), TC: t.now.Add(-t.lim.IdleTimeout)})
}

// makeRoom is called when Limits.MaxOpen connections are followed and
// another one starts: it closes those idle for squeezeIdle, at most once
// a second of capture time (a flood of SYNs must not make every packet
// walk every stream). It reports whether there is room now.
func (t *tracker) makeRoom() bool {
	if !t.squeeze.IsZero() && t.now.Sub(t.squeeze) < flushEvery {
		return false
	}
	t.squeeze = t.now
	t.asm.FlushWithOptions(reassembly.FlushOptions{T: t.now.Add(-gapTimeout), TC: t.now.Add(-squeezeIdle)})
	return len(t.streams) < t.lim.MaxOpen
}

// finish closes every stream and returns the report.
func (t *tracker) finish() *Report {
	t.closing = true
	t.asm.FlushAll()
	r := t.ex.Report()
	r.Ports = slices.Clone(t.ports)
	notFollowed := r.Stats.SegmentsNotFollowed + t.stats.SegmentsNotFollowed
	lost := r.Stats.LostBytes
	r.Stats = t.stats
	r.Stats.SegmentsNotFollowed = notFollowed
	r.Stats.LostBytes = lost
	if t.stats.SegmentsNotFollowed > 0 {
		r.Warnings = append(r.Warnings, pluralf(int(min(t.stats.SegmentsNotFollowed, 1<<31)), "control segment",
			"not followed: more than "+itoa(t.lim.MaxOpen)+" connections at once"))
	}
	return r
}

// orient tells client from server: the side on a control port is the
// server; if both or neither are, the handshake says who called.
func (t *tracker) orient(src, dst netip.AddrPort, tcp *layers.TCP) Conn {
	srcCtl, dstCtl := slices.Contains(t.ports, src.Port()), slices.Contains(t.ports, dst.Port())
	switch {
	case dstCtl && !srcCtl, tcp.SYN && !tcp.ACK:
		return Conn{Client: src, Server: dst}
	case srcCtl && !dstCtl, tcp.SYN && tcp.ACK:
		return Conn{Client: dst, Server: src}
	}
	return Conn{Client: src, Server: dst}
}

// New is the reassembly.StreamFactory: it hands out the stream the
// tracker just decided to follow.
func (t *tracker) New(_, _ gopacket.Flow, _ *layers.TCP, _ reassembly.AssemblerContext) reassembly.Stream {
	if st := t.next; st != nil {
		t.next = nil
		return st
	}
	// The assembler asked for a stream the tracker did not announce,
	// which its bookkeeping rules out; an inert one keeps it whole.
	return inert{}
}

// connKey names a connection whichever way a segment travels.
type connKey struct{ a, b netip.AddrPort }

func keyOf(x, y netip.AddrPort) connKey {
	if x.Compare(y) > 0 {
		x, y = y, x
	}
	return connKey{x, y}
}

// stream is one followed control connection: a reassembly.Stream that
// passes its bytes to the Extractor.
type stream struct {
	t    *tracker
	key  connKey
	conn Conn
	// firstIsClient says the assembler's "client to server" direction
	// (that of the first segment it saw) is the client's; it is not
	// when the capture starts mid-session with a reply.
	firstIsClient bool
	started       [2]bool
	fin, rst      bool
	last          time.Time
}

func (s *stream) dir(d reassembly.TCPFlowDirection) Dir {
	if (d == reassembly.TCPDirClientToServer) == s.firstIsClient {
		return ClientToServer
	}
	return ServerToClient
}

// Accept takes every segment. A direction whose first segment is not its
// SYN (the capture started mid-session, or missed the SYN) is started
// there, so that a session picked up late is still read.
func (s *stream) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, dir reassembly.TCPFlowDirection, _ reassembly.Sequence, start *bool, _ reassembly.AssemblerContext) bool {
	d := s.dir(dir)
	if !s.started[d] {
		s.started[d] = true
		if !tcp.SYN {
			*start = true
		}
	}
	s.fin = s.fin || tcp.FIN
	s.rst = s.rst || tcp.RST
	if ci.Timestamp.After(s.last) {
		s.last = ci.Timestamp
	}
	return true
}

// ReassembledSG passes the bytes on in order, and says how many the
// capture lacks where the assembler had to skip.
func (s *stream) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	rdir, _, _, skip := sg.Info()
	d := s.dir(rdir)
	ts := s.last
	if ac != nil {
		ts = ac.GetCaptureInfo().Timestamp
	}
	if skip > 0 {
		s.t.ex.Lost(s.conn, d, skip, ts)
	}
	if n, _ := sg.Lengths(); n > 0 {
		s.t.ex.Data(s.conn, d, sg.Fetch(n), ts)
	}
}

// ReassemblyComplete ends the session; the assembler then forgets the
// connection, as the tracker does.
func (s *stream) ReassemblyComplete(_ reassembly.AssemblerContext) bool {
	why := EndIdle
	switch {
	case s.rst:
		why = EndRST
	case s.fin:
		why = EndFIN
	case s.t.closing:
		why = EndCapture
	}
	s.t.ex.End(s.conn, s.last, why)
	delete(s.t.streams, s.key)
	return true
}

// inert is a stream that reads nothing.
type inert struct{}

func (inert) Accept(*layers.TCP, gopacket.CaptureInfo, reassembly.TCPFlowDirection, reassembly.Sequence, *bool, reassembly.AssemblerContext) bool {
	return false
}
func (inert) ReassembledSG(reassembly.ScatterGather, reassembly.AssemblerContext) {}
func (inert) ReassemblyComplete(reassembly.AssemblerContext) bool                 { return true }

// captureContext is the reassembly.AssemblerContext of the segment being
// assembled; one is reused, so assembling allocates nothing for it.
type captureContext struct{ ci gopacket.CaptureInfo }

func (c *captureContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// decoder turns a frame into the TCP segment it carries, with gopacket's
// DecodingLayerParser: layers are decoded into reused values, so decoding
// does not allocate.
type decoder struct {
	eth     layers.Ethernet
	sll     layers.LinuxSLL
	loop    layers.Loopback
	dot1q   layers.Dot1Q
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	parsers map[gopacket.LayerType]*gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
}

func (d *decoder) init() {
	d.parsers = make(map[gopacket.LayerType]*gopacket.DecodingLayerParser)
	for _, first := range []gopacket.LayerType{layers.LayerTypeEthernet, layers.LayerTypeLinuxSLL,
		layers.LayerTypeLoopback, layers.LayerTypeIPv4, layers.LayerTypeIPv6} {
		p := gopacket.NewDecodingLayerParser(first, &d.eth, &d.sll, &d.loop, &d.dot1q, &d.ip4, &d.ip6, &d.tcp)
		// The payload, and anything not listed (UDP, ICMP, fragments),
		// ends decoding without an error.
		p.IgnoreUnsupported = true
		d.parsers[first] = p
	}
	d.decoded = make([]gopacket.LayerType, 0, 8)
}

// decode returns the network flow and endpoints of the TCP segment in
// data, which is then in d.tcp; ok is false for anything else.
func (d *decoder) decode(data []byte, link layers.LinkType) (netFlow gopacket.Flow, src, dst netip.AddrPort, ok bool) {
	var first gopacket.LayerType
	switch link {
	case layers.LinkTypeEthernet:
		first = layers.LayerTypeEthernet
	case layers.LinkTypeLinuxSLL:
		first = layers.LayerTypeLinuxSLL
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		first = layers.LayerTypeLoopback
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, 12, 14:
		// Raw IP (DLT_RAW is 12 or 14 on some systems): the version
		// nibble says which.
		if len(data) == 0 {
			return
		}
		first = layers.LayerTypeIPv4
		if data[0]>>4 == 6 {
			first = layers.LayerTypeIPv6
		}
	default:
		return
	}
	d.decoded = d.decoded[:0]
	if err := d.parsers[first].DecodeLayers(data, &d.decoded); err != nil {
		return
	}
	var sa, da netip.Addr
	var haveIP, haveTCP bool
	for _, lt := range d.decoded {
		switch lt {
		case layers.LayerTypeIPv4:
			sa, _ = netip.AddrFromSlice(d.ip4.SrcIP.To4())
			da, _ = netip.AddrFromSlice(d.ip4.DstIP.To4())
			netFlow, haveIP = d.ip4.NetworkFlow(), true
		case layers.LayerTypeIPv6:
			sa, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			da, _ = netip.AddrFromSlice(d.ip6.DstIP)
			netFlow, haveIP = d.ip6.NetworkFlow(), true
		case layers.LayerTypeTCP:
			haveTCP = true
		}
	}
	if !haveIP || !haveTCP || !sa.IsValid() || !da.IsValid() {
		return
	}
	return netFlow, netip.AddrPortFrom(sa, uint16(d.tcp.SrcPort)), netip.AddrPortFrom(da, uint16(d.tcp.DstPort)), true
}
