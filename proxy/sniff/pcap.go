package sniff

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// pcapngMagic starts every pcapng file (its section header block type).
const pcapngMagic = 0x0A0D0D0A

// packetReader is what pcapgo's Reader and NgReader have in common.
type packetReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	LinkType() layers.LinkType
}

// ReadPcap reads a capture file from r (pcap, gzip-compressed pcap, or
// pcapng: the first interface's link type) and reports the FTP control
// sessions in it. It streams: memory stays within cfg.Limits however
// large the file.
//
// A file that cannot be read as a capture at all is an error. A capture
// that breaks off part-way (tcpdump killed, a truncated copy) gives the
// report of what came before, with a warning.
func ReadPcap(r io.Reader, cfg Config) (*Report, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("reading capture: not a pcap or pcapng file: %w", err)
	}
	if !knownMagic(magic) {
		return nil, fmt.Errorf("reading capture: not a pcap or pcapng file (it starts with % x)", magic)
	}
	var pr packetReader
	if binary.LittleEndian.Uint32(magic) == pcapngMagic {
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading pcapng header: %w", err)
		}
		pr = ng
	} else {
		p, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("reading pcap header: %w", err)
		}
		// The reader sizes its one buffer by the header's snap length,
		// which a hostile file may set to 4 GiB; no real capture needs
		// more than tcpdump's maximum.
		if p.Snaplen() > maxSnapLen {
			p.SetSnaplen(maxSnapLen)
		}
		pr = p
	}
	t := newTracker(cfg)
	var readErr error
	for {
		data, ci, err := pr.ZeroCopyReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		if len(data) > maxSnapLen {
			// pcapng sets no snap length the reader enforces.
			data = data[:maxSnapLen]
		}
		t.packet(data, ci, pr.LinkType())
	}
	rep := t.finish()
	if readErr != nil {
		what := "reading stopped after " + plural(int(min(rep.Stats.Packets, 1<<31)), "packet") + ": "
		if errors.Is(readErr, io.ErrUnexpectedEOF) {
			what += "the file is truncated"
		} else {
			what += readErr.Error()
		}
		rep.Warnings = append(rep.Warnings, what)
	}
	return rep, nil
}

// knownMagic reports whether a file starting with magic (4 bytes) is one
// ReadPcap reads: pcap in either byte order with micro- or nanosecond
// timestamps, gzip (which pcapgo opens, for a compressed pcap), or pcapng.
// Checked first so that a file of some other kind gets a plain answer
// rather than whatever a header parser makes of it.
func knownMagic(magic []byte) bool {
	if magic[0] == 0x1f && magic[1] == 0x8b {
		return true
	}
	switch binary.LittleEndian.Uint32(magic) {
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1, pcapngMagic:
		return true
	}
	return false
}
