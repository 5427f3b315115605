package sniff

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

var (
	client = ap("203.0.113.10:40000")
	server = ap("192.0.2.10:21")
)

// login writes the start of a session every scenario shares.
func login(k *conn) {
	k.reply("220 (vsFTPd 3.0.3)\r\n")
	k.cmd("USER anonymous\r\n")
	k.reply("331 Please specify the password.\r\n")
	k.cmd("PASS secret\r\n")
	k.reply("230 Login successful.\r\n")
}

func readPcap(t *testing.T, b []byte, cfg Config) *Report {
	t.Helper()
	r, err := ReadPcap(bytes.NewReader(b), cfg)
	if err != nil {
		t.Fatalf("ReadPcap: %v", err)
	}
	return r
}

func oneSession(t *testing.T, r *Report) *Session {
	t.Helper()
	if len(r.Sessions) != 1 {
		t.Fatalf("got %d sessions, want 1:\n%s", len(r.Sessions), dump(r))
	}
	return r.Sessions[0]
}

func dump(r *Report) string {
	var b strings.Builder
	_ = r.WriteText(&b)
	return b.String()
}

func codes(ev *DataAddr) []ProblemCode {
	var c []ProblemCode
	for _, p := range ev.Problems {
		c = append(c, p.Code)
	}
	return c
}

func TestHealthyPassiveSession(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	login(k)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,10,117,48).\r\n")
	w.dataDial(ap("203.0.113.10:50000"), ap("192.0.2.10:30000"), true, false)
	k.cmd("LIST\r\n")
	k.reply("150 Here comes the directory listing.\r\n")
	k.reply("226 Directory send OK.\r\n")
	k.cmd("EPSV\r\n")
	k.reply("229 Entering Extended Passive Mode (|||30001|)\r\n")
	w.dataDial(ap("203.0.113.10:50001"), ap("192.0.2.10:30001"), true, false)
	k.cmd("RETR x\r\n")
	k.reply("150 Opening\r\n226 Done\r\n")
	k.cmd("QUIT\r\n")
	k.reply("221 Goodbye.\r\n")
	k.close()

	r := readPcap(t, buf.Bytes(), Config{})
	s := oneSession(t, r)
	if s.Client != client || s.Server != server || !s.FromStart || s.Ended != EndFIN {
		t.Errorf("session %+v", s)
	}
	if s.Banner != "220 (vsFTPd 3.0.3)" {
		t.Errorf("banner %q", s.Banner)
	}
	if len(s.DataAddrs) != 2 {
		t.Fatalf("data addresses: %d\n%s", len(s.DataAddrs), dump(r))
	}
	p, e := s.DataAddrs[0], s.DataAddrs[1]
	if p.Kind != KindPASV || p.Command != "PASV" || p.Addr != ap("192.0.2.10:30000") || !p.Own ||
		p.Data.SYNs != 1 || !p.Data.SYNACK || p.Transfer != "LIST" || p.TransferReply != 226 || len(p.Problems) != 0 {
		t.Errorf("227: %+v", p)
	}
	if e.Kind != KindEPSV || e.Command != "EPSV" || e.Addr != ap("192.0.2.10:30001") || !e.Own ||
		!e.Data.SYNACK || e.Transfer != "RETR" || e.TransferReply != 226 || len(e.Problems) != 0 {
		t.Errorf("229: %+v", e)
	}
	if len(r.Servers) != 1 || r.Servers[0].Verdict != VerdictOK || r.Servers[0].Passive != 2 {
		t.Errorf("summary %+v", r.Servers)
	}
	if r.Stats.Packets != uint64(w.n) || r.Stats.NotTCP != 0 {
		t.Errorf("stats %+v, wrote %d", r.Stats, w.n)
	}
	if strings.Contains(dump(r), "secret") {
		t.Error("the report shows the password")
	}
}

func TestMisconfiguredServer(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	// A client that trusts the 227 address: nothing answers it.
	k := w.dial(client, server)
	login(k)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,99,117,48).\r\n")
	w.dataDial(ap("203.0.113.10:50000"), ap("192.0.2.99:30000"), false, false)
	w.tick(time.Second)
	w.dataDial(ap("203.0.113.10:50000"), ap("192.0.2.99:30000"), false, false)
	k.cmd("QUIT\r\n")
	k.reply("221 Goodbye.\r\n")
	k.close()
	// A client that ignores it (curl's default) and connects to the
	// control address with the announced port.
	k2 := w.dial(ap("203.0.113.10:40001"), server)
	login(k2)
	k2.cmd("PASV\r\n")
	k2.reply("227 Entering Passive Mode (192,0,2,99,117,49).\r\n")
	w.dataDial(ap("203.0.113.10:50002"), ap("192.0.2.10:30001"), true, false)
	k2.cmd("LIST\r\n")
	k2.reply("150 Here.\r\n226 OK.\r\n")
	k2.close()

	r := readPcap(t, buf.Bytes(), Config{})
	if len(r.Sessions) != 2 {
		t.Fatalf("%d sessions\n%s", len(r.Sessions), dump(r))
	}
	ev := r.Sessions[0].DataAddrs[0]
	if ev.Own || ev.Data.SYNs != 2 || ev.Data.SYNACK || ev.Data.ToControlAddress ||
		!slices.Equal(codes(ev), []ProblemCode{ProblemOtherHost, ProblemNoAnswer}) {
		t.Errorf("trusting client: %+v %v\n%s", ev, codes(ev), dump(r))
	}
	ev = r.Sessions[1].DataAddrs[0]
	if ev.Own || !ev.Data.SYNACK || !ev.Data.ToControlAddress || ev.Data.To != ap("192.0.2.10:30001") ||
		!slices.Equal(codes(ev), []ProblemCode{ProblemOtherHost}) {
		t.Errorf("ignoring client: %+v %v", ev, codes(ev))
	}
	sum := r.Servers[0]
	if sum.Verdict != VerdictBadAddress || sum.BadAddress != 2 || sum.Passive != 2 || sum.Unanswered != 1 ||
		!slices.Equal(sum.Advertised, []netip.Addr{netip.MustParseAddr("192.0.2.99")}) {
		t.Errorf("summary %+v", sum)
	}
	text := dump(r)
	for _, want := range []string{"advertises 192.0.2.99, not its own address", "BAD ADDRESS", "ignoring the one advertised"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
}

// TestSplitAndMultiLine227 covers the two shapes the kernel's helper gets
// wrong: a 227 split across segments, and a multi-line 227.
func TestSplitAndMultiLine227(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	login(k)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Pass")
	k.reply("ive Mode (192,0,2,10,117,48).\r\n")
	k.cmd("PASV\r\n")
	k.reply("227-Entering Passive Mode\r\n")
	k.reply("227 (192,0,2,10,117,49)\r\n")
	k.close()

	s := oneSession(t, readPcap(t, buf.Bytes(), Config{}))
	if len(s.DataAddrs) != 2 {
		t.Fatalf("%+v", s.DataAddrs)
	}
	if a := s.DataAddrs[0]; a.Addr != ap("192.0.2.10:30000") || a.Line != "227 Entering Passive Mode (192,0,2,10,117,48)." {
		t.Errorf("split: %+v", a)
	}
	if a := s.DataAddrs[1]; a.Addr != ap("192.0.2.10:30001") || a.Line != "227-Entering Passive Mode / 227 (192,0,2,10,117,49)" {
		t.Errorf("multi-line: %+v", a)
	}
}

func TestAuthTLSStopsParsing(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.reply("220 ready\r\n")
	k.cmd("AUTH TLS\r\n")
	k.reply("234 Proceed with negotiation.\r\n")
	// Inside TLS: records that happen to look like FTP must not count.
	k.cmd("\x16\x03\x01\x00\x10PASV\r\n")
	k.reply("\x16\x03\x03\x00\x10227 Entering Passive Mode (10,0,0,1,1,1)\r\n")
	k.close()

	r := readPcap(t, buf.Bytes(), Config{})
	s := oneSession(t, r)
	if s.TLS == nil || s.TLS.Command != "AUTH TLS" || s.TLS.Implicit || len(s.DataAddrs) != 0 || s.Commands != 1 {
		t.Errorf("session %+v tls %+v", s, s.TLS)
	}
	if r.Servers[0].Verdict != VerdictEncrypted {
		t.Errorf("verdict %q", r.Servers[0].Verdict)
	}
	if !strings.Contains(dump(r), "AUTH TLS accepted (234): the rest of the session is encrypted and cannot be inspected") {
		t.Error(dump(r))
	}
}

func TestActiveMode(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	login(k)
	k.cmd("PORT 203,0,113,10,195,80\r\n")
	k.reply("200 PORT command successful.\r\n")
	k.cmd("LIST\r\n")
	w.dataDial(ap("192.0.2.10:20"), ap("203.0.113.10:50000"), true, false)
	k.reply("150 Here.\r\n226 OK.\r\n")
	// A client behind NAT names its private address; the server refuses
	// the data connection it cannot make.
	k.cmd("EPRT |1|10.0.0.5|50001|\r\n")
	k.reply("200 EPRT command successful.\r\n")
	k.cmd("RETR f\r\n")
	k.reply("425 Can't open data connection.\r\n")
	k.cmd("PORT 1,2,3\r\n")
	k.reply("501 Illegal PORT command.\r\n")
	k.close()

	s := oneSession(t, readPcap(t, buf.Bytes(), Config{}))
	if len(s.DataAddrs) != 3 {
		t.Fatalf("%d", len(s.DataAddrs))
	}
	if a := s.DataAddrs[0]; a.Kind != KindPORT || a.Reply != 200 || !a.Own || !a.Data.SYNACK || a.Data.From != ap("192.0.2.10:20") || len(a.Problems) != 0 {
		t.Errorf("PORT: %+v", a)
	}
	if a := s.DataAddrs[1]; a.Kind != KindEPRT || a.Own || !a.Private ||
		!slices.Equal(codes(a), []ProblemCode{ProblemOtherHost, ProblemPrivate, ProblemNoConnection, ProblemTransferFailed}) {
		t.Errorf("EPRT: %+v %v", a, codes(a))
	}
	if a := s.DataAddrs[2]; a.Error == "" || !slices.Equal(codes(a), []ProblemCode{ProblemMalformed, ProblemRejected}) {
		t.Errorf("bad PORT: %+v %v", a, codes(a))
	}
}

func TestRefusedAndUnspecified(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	login(k)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (0,0,0,0,117,48)\r\n")
	w.dataDial(ap("203.0.113.10:50000"), ap("192.0.2.10:30000"), false, true)
	k.cmd("LIST\r\n")
	k.reply("425 Failed to establish connection.\r\n")
	k.close()

	r := readPcap(t, buf.Bytes(), Config{})
	a := oneSession(t, r).DataAddrs[0]
	if !a.Own || a.Unroutable || !a.Data.Reset || !slices.Equal(codes(a), []ProblemCode{ProblemRefused, ProblemTransferFailed}) {
		t.Errorf("%+v %v", a, codes(a))
	}
	if v := r.Servers[0].Verdict; v != VerdictDataUnreachable {
		t.Errorf("verdict %q", v)
	}
}

func TestPrivateAddressToPublicClient(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, ap("198.51.100.7:21"))
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (10,1,2,3,117,48)\r\n")
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (127,0,0,1,117,48)\r\n")
	k.close()

	s := oneSession(t, readPcap(t, buf.Bytes(), Config{}))
	if got := codes(s.DataAddrs[0]); !slices.Equal(got, []ProblemCode{ProblemOtherHost, ProblemPrivate}) {
		t.Errorf("10.1.2.3: %v", got)
	}
	if got := codes(s.DataAddrs[1]); !slices.Equal(got, []ProblemCode{ProblemOtherHost, ProblemUnroutable}) {
		t.Errorf("127.0.0.1: %v", got)
	}
}

// TestMidSessionPickup reads a capture that starts after the handshake,
// with a reply first: the server side must still be told apart by its
// port, and the lines read.
func TestMidSessionPickup(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.pickUp(client, server)
	k.reply("200 Switching to Binary mode.\r\n")
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,10,117,48).\r\n")
	k.close()

	s := oneSession(t, readPcap(t, buf.Bytes(), Config{}))
	if s.FromStart || s.Client != client || s.Server != server || len(s.DataAddrs) != 1 || s.DataAddrs[0].Command != "PASV" {
		t.Errorf("%+v %+v", s, s.DataAddrs)
	}
}

// TestOutOfOrderAndGap: a reordered segment is put back in place; a
// segment the capture lost is skipped after gapTimeout, costing only the
// line it was in.
func TestOutOfOrderAndGap(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.cmd("PASV\r\n")
	first, second := "227 Entering Passive ", "Mode (192,0,2,10,117,48).\r\n"
	w.frame(server, client, k.sseq+uint32(len(first)), k.cseq, tcpFlags{ack: true}, []byte(second))
	w.frame(server, client, k.sseq, k.cseq, tcpFlags{ack: true}, []byte(first))
	k.sseq += uint32(len(first + second))
	// Lost: "227 Entering Passive Mode (192,0,2,10,117,49).\r\n".
	k.cmd("PASV\r\n")
	lostLine := "227 Entering Passive Mode (192,0,2,10,117,49).\r\n"
	k.sseq += uint32(len(lostLine))
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,10,117,50).\r\n")
	w.tick(10 * time.Second) // past gapTimeout
	k.cmd("NOOP\r\n")
	k.reply("200 NOOP ok.\r\n")
	k.close()

	r := readPcap(t, buf.Bytes(), Config{})
	s := oneSession(t, r)
	var got []netip.AddrPort
	for _, ev := range s.DataAddrs {
		got = append(got, ev.Addr)
	}
	want := []netip.AddrPort{ap("192.0.2.10:30000"), ap("192.0.2.10:30002")}
	if !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v\n%s", got, want, dump(r))
	}
	if s.LostBytes != uint64(len(lostLine)) || r.Stats.LostBytes != s.LostBytes {
		t.Errorf("lost %d (report %d), want %d", s.LostBytes, r.Stats.LostBytes, len(lostLine))
	}
}

func TestIPv6EPRTAndEPSV(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	c6, s6 := ap("[2001:db8:1::10]:40000"), ap("[2001:db8:2::10]:2121")
	k := w.dial(c6, s6)
	k.cmd("EPSV\r\n")
	k.reply("229 Entering Extended Passive Mode (|||30000|)\r\n")
	w.dataDial(ap("[2001:db8:1::10]:50000"), ap("[2001:db8:2::10]:30000"), true, false)
	k.cmd("EPRT |2|2001:db8:1::10|50001|\r\n")
	k.reply("200 OK\r\n")
	k.close()

	r := readPcap(t, buf.Bytes(), Config{Ports: []uint16{2121}})
	s := oneSession(t, r)
	if s.Server != s6 || len(s.DataAddrs) != 2 || !s.DataAddrs[0].Data.SYNACK || !s.DataAddrs[1].Own || s.Problems != 0 {
		t.Errorf("%+v\n%s", s, dump(r))
	}
	if r2 := readPcap(t, buf.Bytes(), Config{}); len(r2.Sessions) != 0 {
		t.Errorf("port 21 only: %d sessions", len(r2.Sessions))
	}
}

func TestImplicitTLSAndResetSession(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, ap("192.0.2.10:990"))
	k.cmd("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
	k.close()
	k2 := w.dial(ap("203.0.113.10:40001"), ap("192.0.2.10:990"))
	k2.reply("220 hi\r\n")
	k2.reset()
	// An explicit FTPS session picked up after its AUTH TLS: its first
	// bytes are TLS application data.
	k3 := w.pickUp(ap("203.0.113.10:40002"), ap("192.0.2.10:990"))
	k3.reply("\x17\x03\x03\x00\x30227 Entering Passive Mode (10,0,0,1,1,2)\r\n")
	k3.cmd("\x17\x03\x03\x00\x10PASV\r\n")
	k3.close()
	r := readPcap(t, buf.Bytes(), Config{Ports: []uint16{990}})
	if len(r.Sessions) != 3 {
		t.Fatalf("%s", dump(r))
	}
	if tl := r.Sessions[0].TLS; tl == nil || !tl.Implicit {
		t.Errorf("implicit TLS not seen: %+v", r.Sessions[0])
	}
	if s := r.Sessions[1]; s.Ended != EndRST || s.Banner != "220 hi" {
		t.Errorf("reset session: %+v", s)
	}
	if s := r.Sessions[2]; s.TLS == nil || s.TLS.Implicit || s.TLS.Command != "" || len(s.DataAddrs) != 0 || s.Commands != 0 {
		t.Errorf("encrypted session picked up late: %+v %+v", s, s.TLS)
	}
	if !strings.Contains(dump(r), "the session was already encrypted") {
		t.Error(dump(r))
	}
}

// TestFileFormats reads the same capture as gzip-compressed pcap and as
// pcapng, and a truncated copy.
func TestFileFormats(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	login(k)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,10,117,48).\r\n")
	k.close()
	want := readPcap(t, buf.Bytes(), Config{})

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(buf.Bytes())
	_ = zw.Close()
	if got := readPcap(t, gz.Bytes(), Config{}); !sameJSON(t, got, want) {
		t.Error("gzip pcap reads differently")
	}

	var ng bytes.Buffer
	nw, err := pcapgo.NewNgWriter(&ng, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := pcapgo.NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, ci, err := pr.ReadPacketData()
		if err != nil {
			break
		}
		ci.InterfaceIndex = 0
		if err := nw.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	_ = nw.Flush()
	if got := readPcap(t, ng.Bytes(), Config{}); !sameJSON(t, got, want) {
		t.Errorf("pcapng reads differently:\n%s\nwant\n%s", dump(got), dump(want))
	}

	cut := readPcap(t, buf.Bytes()[:buf.Len()-10], Config{})
	if len(cut.Warnings) == 0 || !strings.Contains(cut.Warnings[len(cut.Warnings)-1], "truncated") {
		t.Errorf("truncated file: warnings %q", cut.Warnings)
	}
	if len(cut.Sessions) != 1 || len(cut.Sessions[0].DataAddrs) != 1 {
		t.Errorf("truncated file lost the session: %s", dump(cut))
	}

	for _, bad := range [][]byte{nil, []byte("not a capture at all")} {
		if _, err := ReadPcap(bytes.NewReader(bad), Config{}); err == nil {
			t.Errorf("ReadPcap(%q) did not fail", bad)
		}
	}
}

func sameJSON(t *testing.T, a, b *Report) bool {
	t.Helper()
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestJSONRoundTrip: the JSON a script reads carries what the text says.
func TestJSONRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,99,117,48).\r\n")
	k.close()
	r := readPcap(t, buf.Bytes(), Config{})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !sameJSON(t, r, &back) {
		t.Errorf("round trip differs:\n%s", b)
	}
	for _, want := range []string{`"address":"192.0.2.99:30000"`, `"code":"other-host"`, `"verdict":"bad-address"`, `"ended":"fin"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
}

// TestHostileLinesAreCleaned: bytes from the capture reach the text
// report only as printable ASCII.
func TestHostileLinesAreCleaned(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.reply("220 \x1b[31mred\x1b[0m \x80\xfe\\\r\n")
	k.cmd("PASV\r\n")
	k.reply("227 \x1b]0;title\x07 (192,0,2,10,117,48)\r\n")
	k.close()
	text := dump(readPcap(t, buf.Bytes(), Config{}))
	for _, c := range []byte(text) {
		if (c < 0x20 && c != '\n') || c > 0x7e {
			t.Fatalf("byte %#x reached the text: %q", c, text)
		}
	}
	if !strings.Contains(text, `220 \x1b[31mred\x1b[0m \x80\xfe\x5c`) {
		t.Errorf("banner not escaped as expected: %s", text)
	}
}

// TestNotTCPFramesCounted: ARP, UDP and IPv4 fragments are counted and
// skipped.
func TestNotTCPFramesCounted(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	write := func(ls ...gopacket.SerializableLayer) {
		sb := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
			t.Fatal(err)
		}
		b := sb.Bytes()
		_ = w.w.WritePacket(gopacket.CaptureInfo{Timestamp: w.now, CaptureLength: len(b), Length: len(b)}, b)
	}
	eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeARP}
	write(eth, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		SourceHwAddress: make([]byte, 6), SourceProtAddress: make([]byte, 4), DstHwAddress: make([]byte, 6), DstProtAddress: make([]byte, 4)})
	eth4 := &layers.Ethernet{SrcMAC: eth.SrcMAC, DstMAC: eth.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	write(eth4, &layers.IPv4{Version: 4, TTL: 1, Protocol: layers.IPProtocolUDP, SrcIP: client.Addr().AsSlice(), DstIP: server.Addr().AsSlice()},
		&layers.UDP{SrcPort: 21, DstPort: 21})
	write(eth4, &layers.IPv4{Version: 4, TTL: 1, Protocol: layers.IPProtocolTCP, FragOffset: 100, SrcIP: client.Addr().AsSlice(), DstIP: server.Addr().AsSlice()},
		gopacket.Payload("PASV\r\n"))
	r := readPcap(t, buf.Bytes(), Config{})
	if r.Stats.Packets != 3 || r.Stats.NotTCP != 3 || len(r.Sessions) != 0 {
		t.Errorf("stats %+v, %d sessions", r.Stats, len(r.Sessions))
	}
}

// TestFileErrorsAreNotDataProblems: a transfer refused for its file (550)
// says nothing about the data address, even though no data connection
// was made.
func TestFileErrorsAreNotDataProblems(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.cmd("PORT 203,0,113,10,195,80\r\n")
	k.reply("200 PORT command successful.\r\n")
	k.cmd("RETR missing\r\n")
	k.reply("550 Failed to open file.\r\n")
	k.close()
	s := oneSession(t, readPcap(t, buf.Bytes(), Config{}))
	if ev := s.DataAddrs[0]; len(ev.Problems) != 0 || ev.TransferReply != 550 || s.Problems != 0 {
		t.Errorf("%+v %v", ev, codes(ev))
	}
}

// TestLinkTypes reads one capture re-framed as tcpdump writes it for
// "-i any" (Linux cooked) and for raw IP links.
func TestLinkTypes(t *testing.T) {
	var buf bytes.Buffer
	w := newWire(t, &buf)
	k := w.dial(client, server)
	k.cmd("PASV\r\n")
	k.reply("227 Entering Passive Mode (192,0,2,99,117,48).\r\n")
	w.dataDial(ap("203.0.113.10:50000"), ap("192.0.2.99:30000"), true, false)
	k.close()
	want := readPcap(t, buf.Bytes(), Config{})

	reframe := func(link layers.LinkType, head func(ether []byte) []byte) []byte {
		pr, err := pcapgo.NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		pw := pcapgo.NewWriterNanos(&out)
		_ = pw.WriteFileHeader(maxSnapLen, link)
		for {
			data, ci, err := pr.ReadPacketData()
			if err != nil {
				break
			}
			f := append(head(data), data[14:]...)
			ci.CaptureLength, ci.Length = len(f), len(f)
			if err := pw.WritePacket(ci, f); err != nil {
				t.Fatal(err)
			}
		}
		return out.Bytes()
	}
	sll := func(ether []byte) []byte {
		// Packet type, ARPHRD_ETHER, address length 6, address padded
		// to 8, then the EtherType.
		h := []byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}
		return append(h, ether[12:14]...)
	}
	raw := func([]byte) []byte { return nil }
	for name, b := range map[string][]byte{
		"linux-sll": reframe(layers.LinkTypeLinuxSLL, sll),
		"raw":       reframe(layers.LinkTypeRaw, raw),
		"ipv4":      reframe(layers.LinkTypeIPv4, raw),
	} {
		if got := readPcap(t, b, Config{}); !sameJSON(t, got, want) {
			t.Errorf("%s reads differently:\n%s", name, dump(got))
		}
	}
}
