package sniff

import (
	"fmt"

	"golang.org/x/net/bpf"
)

// controlFilter returns the classic BPF program a live capture attaches
// to its socket, so that the kernel hands over only what an audit reads:
// on an Ethernet link, IPv4 or IPv6 TCP segments to or from one of ports
// (the control connections, whole), and TCP segments with SYN or RST set
// on any port (the handshakes of data connections, whose payload the
// audit never needs). In tcpdump's words, for IPv4:
//
//	tcp and (port P1 or port P2 ... or tcp[tcpflags] & (tcp-syn|tcp-rst) != 0)
//
// Written out here rather than compiled by libpcap, which would need cgo
// or a tcpdump binary at build time; the tests run it in x/net/bpf's VM.
// IPv4 fragments after the first are dropped (they carry no TCP header),
// as are IPv6 packets with extension headers before TCP, as tcpdump's
// "ip6 and tcp" does. Accepted frames are cut at snaplen.
func controlFilter(ports []uint16, snaplen uint32) ([]bpf.RawInstruction, error) {
	if len(ports) == 0 {
		return nil, fmt.Errorf("building capture filter: no control ports")
	}
	var p bpfProgram
	const (
		etherType   = 12
		ethLen      = 14
		tcpFlagsOff = 13
		flagsSynRst = 0x02 | 0x04
	)
	p.load(etherType, 2)
	p.jumpIf(bpf.JumpEqual, 0x0800, "ipv4", "")
	p.jumpIf(bpf.JumpEqual, 0x86dd, "ipv6", "drop")

	p.label("ipv4")
	p.load(ethLen+9, 1) // protocol
	p.jumpIf(bpf.JumpEqual, 6, "", "drop")
	p.load(ethLen+6, 2) // flags and fragment offset
	p.jumpIf(bpf.JumpBitsSet, 0x1fff, "drop", "")
	p.add(bpf.LoadMemShift{Off: ethLen})   // X = IPv4 header length
	for _, field := range []uint32{0, 2} { // source port, destination port
		p.add(bpf.LoadIndirect{Off: ethLen + field, Size: 2})
		for _, port := range ports {
			p.jumpIf(bpf.JumpEqual, uint32(port), "accept", "")
		}
	}
	p.add(bpf.LoadIndirect{Off: ethLen + tcpFlagsOff, Size: 1})
	p.jumpIf(bpf.JumpBitsSet, flagsSynRst, "accept", "drop")

	p.label("ipv6")
	const ip6Len = 40
	p.load(ethLen+6, 1) // next header
	p.jumpIf(bpf.JumpEqual, 6, "", "drop")
	for _, field := range []uint32{0, 2} {
		p.load(ethLen+ip6Len+field, 2)
		for _, port := range ports {
			p.jumpIf(bpf.JumpEqual, uint32(port), "accept", "")
		}
	}
	p.load(ethLen+ip6Len+tcpFlagsOff, 1)
	p.jumpIf(bpf.JumpBitsSet, flagsSynRst, "accept", "drop")

	p.label("accept")
	p.add(bpf.RetConstant{Val: snaplen})
	p.label("drop")
	p.add(bpf.RetConstant{Val: 0})
	return p.assemble()
}

// bpfProgram writes a BPF program with named jump targets, which classic
// BPF lacks: jumps are forward skips of at most 255 instructions, worked
// out once the program is complete.
type bpfProgram struct {
	ins    []bpf.Instruction
	labels map[string]int
	jumps  []bpfJump
}

type bpfJump struct {
	at          int
	ifTrue, not string // "" is the next instruction
}

func (p *bpfProgram) add(i bpf.Instruction) { p.ins = append(p.ins, i) }

func (p *bpfProgram) load(off uint32, size int) {
	p.add(bpf.LoadAbsolute{Off: off, Size: size})
}

func (p *bpfProgram) label(name string) {
	if p.labels == nil {
		p.labels = make(map[string]int)
	}
	p.labels[name] = len(p.ins)
}

func (p *bpfProgram) jumpIf(cond bpf.JumpTest, val uint32, ifTrue, not string) {
	p.jumps = append(p.jumps, bpfJump{at: len(p.ins), ifTrue: ifTrue, not: not})
	p.add(bpf.JumpIf{Cond: cond, Val: val})
}

func (p *bpfProgram) assemble() ([]bpf.RawInstruction, error) {
	skip := func(from int, label string) (uint8, error) {
		if label == "" {
			return 0, nil
		}
		to, ok := p.labels[label]
		if !ok {
			return 0, fmt.Errorf("building capture filter: no label %q", label)
		}
		n := to - from - 1
		if n < 0 || n > 255 {
			return 0, fmt.Errorf("building capture filter: jump to %s too long (too many ports)", label)
		}
		return uint8(n), nil
	}
	for _, j := range p.jumps {
		ji := p.ins[j.at].(bpf.JumpIf)
		var err error
		if ji.SkipTrue, err = skip(j.at, j.ifTrue); err != nil {
			return nil, err
		}
		if ji.SkipFalse, err = skip(j.at, j.not); err != nil {
			return nil, err
		}
		p.ins[j.at] = ji
	}
	raw, err := bpf.Assemble(p.ins)
	if err != nil {
		return nil, fmt.Errorf("building capture filter: %w", err)
	}
	return raw, nil
}
