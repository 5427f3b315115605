package sniff

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/net/bpf"
)

// filterCase is a frame and whether the capture filter must pass it.
type filterCase struct {
	name  string
	frame []byte
	pass  bool
}

func filterCases(t *testing.T) []filterCase {
	t.Helper()
	mac := []byte{2, 0, 0, 0, 0, 1}
	build := func(ls ...gopacket.SerializableLayer) []byte {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	var cases []filterCase
	for _, v6 := range []bool{false, true} {
		for _, sport := range []uint16{21, 2121, 30000, 40000} {
			for _, fl := range []struct {
				name               string
				syn, ack, rst, fin bool
			}{{"ack", false, true, false, false}, {"syn", true, false, false, false}, {"synack", true, true, false, false},
				{"rst", false, true, true, false}, {"fin", false, true, false, true}} {
				for _, options := range []bool{false, true} {
					if v6 && options {
						continue
					}
					tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 50000, SYN: fl.syn, ACK: fl.ack, RST: fl.rst, FIN: fl.fin}
					eth := &layers.Ethernet{SrcMAC: mac, DstMAC: mac}
					var frame []byte
					if v6 {
						eth.EthernetType = layers.EthernetTypeIPv6
						frame = build(eth, &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolTCP, HopLimit: 1,
							SrcIP: ap("[2001:db8::1]:0").Addr().AsSlice(), DstIP: ap("[2001:db8::2]:0").Addr().AsSlice()}, tcp)
					} else {
						eth.EthernetType = layers.EthernetTypeIPv4
						ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 1, Protocol: layers.IPProtocolTCP,
							SrcIP: client.Addr().AsSlice(), DstIP: server.Addr().AsSlice()}
						if options {
							// A header of 24 bytes moves the ports: the
							// filter must read the header length.
							ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
						}
						frame = build(eth, ip, tcp)
					}
					pass := sport == 21 || sport == 2121 || fl.syn || fl.rst
					cases = append(cases, filterCase{fmt.Sprintf("v6=%v/sport=%d/%s/options=%v", v6, sport, fl.name, options), frame, pass})
					// The same segment the other way round.
					tcp.SrcPort, tcp.DstPort = 50000, layers.TCPPort(sport)
					rev := slicesClone(frame)
					off := 14 + 20
					if v6 {
						off = 14 + 40
					} else if options {
						off = 14 + 24
					}
					rev[off], rev[off+1], rev[off+2], rev[off+3] = rev[off+2], rev[off+3], rev[off], rev[off+1]
					cases = append(cases, filterCase{fmt.Sprintf("v6=%v/dport=%d/%s/options=%v", v6, sport, fl.name, options), rev, pass})
				}
			}
		}
	}
	eth4 := &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4}
	cases = append(cases,
		filterCase{"udp port 21", build(eth4, &layers.IPv4{Version: 4, IHL: 5, TTL: 1, Protocol: layers.IPProtocolUDP,
			SrcIP: client.Addr().AsSlice(), DstIP: server.Addr().AsSlice()}, &layers.UDP{SrcPort: 21, DstPort: 21}), false},
		filterCase{"ipv4 fragment", build(eth4, &layers.IPv4{Version: 4, IHL: 5, TTL: 1, Protocol: layers.IPProtocolTCP, FragOffset: 3,
			SrcIP: client.Addr().AsSlice(), DstIP: server.Addr().AsSlice()}, gopacket.Payload([]byte{0, 21, 0, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0})), false},
		filterCase{"arp", build(&layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				SourceHwAddress: mac, SourceProtAddress: make([]byte, 4), DstHwAddress: mac, DstProtAddress: make([]byte, 4)}), false},
	)
	return cases
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

func runFilter(t *testing.T, ins []bpf.Instruction, frame []byte) bool {
	t.Helper()
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	n, err := vm.Run(frame)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return n > 0
}

func TestControlFilter(t *testing.T) {
	raw, err := controlFilter([]uint16{21, 2121}, maxSnapLen)
	if err != nil {
		t.Fatal(err)
	}
	ins, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	for _, c := range filterCases(t) {
		if got := runFilter(t, ins, c.frame); got != c.pass {
			t.Errorf("%s: pass %v, want %v", c.name, got, c.pass)
		}
	}
	if _, err := controlFilter(nil, maxSnapLen); err == nil {
		t.Error("no ports: no error")
	}
	many := make([]uint16, 200)
	for i := range many {
		many[i] = uint16(1000 + i)
	}
	if _, err := controlFilter(many, maxSnapLen); err == nil {
		t.Error("200 ports: no error (the jumps cannot reach)")
	}
}

// TestControlFilterMatchesTcpdump compares the filter with what libpcap
// compiles from the tcpdump expression it stands for, frame by frame, when
// tcpdump is installed.
func TestControlFilterMatchesTcpdump(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("no tcpdump")
	}
	compile := func(expr string) []bpf.Instruction {
		out, err := exec.Command("tcpdump", "-ddd", "-y", "EN10MB", expr).Output()
		if err != nil {
			t.Skipf("tcpdump -ddd: %v", err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		raw := make([]bpf.RawInstruction, 0, len(lines))
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) != 4 {
				t.Fatalf("tcpdump -ddd line %q", l)
			}
			n := make([]uint64, 4)
			for i := range f {
				n[i], _ = strconv.ParseUint(f[i], 10, 32)
			}
			raw = append(raw, bpf.RawInstruction{Op: uint16(n[0]), Jt: uint8(n[1]), Jf: uint8(n[2]), K: uint32(n[3])})
		}
		ins, ok := bpf.Disassemble(raw)
		if !ok {
			t.Fatal("tcpdump's program does not disassemble")
		}
		return ins
	}
	// libpcap reads tcp[] only in IPv4, so the IPv6 half is written out
	// with ip6[]: the TCP header follows the fixed 40-byte header.
	ref := compile("(ip and tcp and (port 21 or port 2121 or tcp[tcpflags] & (tcp-syn|tcp-rst) != 0)) or " +
		"(ip6 and ip6[6] == 6 and (port 21 or port 2121 or ip6[53] & 6 != 0))")
	raw, _ := controlFilter([]uint16{21, 2121}, maxSnapLen)
	ours, _ := bpf.Disassemble(raw)
	for _, c := range filterCases(t) {
		if want, got := runFilter(t, ref, c.frame), runFilter(t, ours, c.frame); got != want {
			t.Errorf("%s: ours %v, tcpdump's %v", c.name, got, want)
		}
	}
}
