package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
)

// ctnetlink attribute numbers (include/uapi/linux/netfilter/
// nfnetlink_conntrack.h) that the nl package does not name.
const (
	ctaTupleZone       = 3  // CTA_TUPLE_ZONE, inside a tuple
	ctaFilter          = 25 // CTA_FILTER, Linux 5.8
	ctaFilterOrigFlags = 1  // CTA_FILTER_ORIG_FLAGS, inside CTA_FILTER
)

// The kernel's CTA_FILTER_F_* bits (net/netfilter/nf_internals.h): which
// fields of the request's CTA_TUPLE_ORIG a filtered dump compares with each
// entry's original tuple. They are not in the uapi headers, but they are
// what conntrack-tools sends, so they cannot change.
const (
	filterIPSrc        = 1 << 0
	filterIPDst        = 1 << 1
	filterProtoNum     = 1 << 3
	filterProtoDstPort = 1 << 5

	// filter4 is an IPv4 mapping's data connections: TCP from Source to
	// Public's address and port, any source port.
	filter4 = filterIPSrc | filterIPDst | filterProtoNum | filterProtoDstPort
	// filter6 leaves the addresses out: the kernel's IPv6 address test is
	// inverted (ctnetlink_filter_match_tuple rejects an entry whose address
	// EQUALS the filter's, since 5.8 and still in 6.18), so with them no
	// entry of the mapping would ever come back. The kernel still picks
	// out TCP to the public port in the family; matches checks the
	// addresses.
	filter6 = filterProtoNum | filterProtoDstPort
)

// tuple is the original direction of a conntrack entry: the connection as
// its first packet saw it, before any NAT.
type tuple struct {
	proto        uint8
	src, dst     netip.Addr
	sport, dport uint16
	// zone is CTA_TUPLE_ZONE, present only for an entry in a
	// direction-specific zone; pasvgate makes none, but a host might.
	zone    uint16
	hasZone bool
}

// entry is what the flush needs of one conntrack entry from a dump: enough
// to delete exactly it by a kernel lookup.
type entry struct {
	orig tuple
	// id is CTA_ID. Deleting with it makes the kernel refuse (ENOENT) an
	// entry that has been replaced by another with the same tuple since the
	// dump.
	id    uint32
	hasID bool
	// zone is CTA_ZONE, for an entry in a zone that covers both directions.
	zone    uint16
	hasZone bool
	// tcpState is CTA_PROTOINFO_TCP_STATE (nl.TCP_CONNTRACK_*), when
	// hasTCPState.
	tcpState    uint8
	hasTCPState bool
}

// timeWait reports whether e is a TCP connection in TIME_WAIT: closed by
// both ends, with no data left to carry.
func (e entry) timeWait() bool {
	return e.hasTCPState && e.tcpState == nl.TCP_CONNTRACK_TIME_WAIT
}

// matches reports whether t is one of m's data connections: TCP from
// m.Source to m.Public. It is the userspace half of the filter: the kernel
// applies the same test before it answers, unless it predates CTA_FILTER.
func (t tuple) matches(m rules.Mapping) bool {
	return t.proto == unix.IPPROTO_TCP && t.src == m.Source.Unmap() &&
		t.dst == m.Public.Addr().Unmap() && t.dport == m.Public.Port()
}

// family is the nfgenmsg family of m's entries.
func family(m rules.Mapping) uint8 {
	if m.Is6() {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// ctMsgType is the netlink message type of a ctnetlink operation.
func ctMsgType(op int) int { return unix.NFNL_SUBSYS_CTNETLINK<<8 | op }

// nfgenmsg is the netfilter header that starts every ctnetlink message.
func nfgenmsg(fam uint8) *nl.Nfgenmsg {
	return &nl.Nfgenmsg{NfgenFamily: fam, Version: nl.NFNETLINK_V0}
}

// tupleAttr encodes t as a nested tuple attribute of type typ, with the
// fields a filter or a lookup names. The nested flag is set throughout:
// the kernel parses CTA_FILTER strictly, which requires it.
func tupleAttr(typ int, t tuple, withSport bool) *nl.RtAttr {
	a := nl.NewRtAttr(typ|unix.NLA_F_NESTED, nil)
	ip := a.AddRtAttr(nl.CTA_TUPLE_IP|unix.NLA_F_NESTED, nil)
	if t.src.Is4() {
		ip.AddRtAttr(nl.CTA_IP_V4_SRC, t.src.AsSlice())
		ip.AddRtAttr(nl.CTA_IP_V4_DST, t.dst.AsSlice())
	} else {
		ip.AddRtAttr(nl.CTA_IP_V6_SRC, t.src.AsSlice())
		ip.AddRtAttr(nl.CTA_IP_V6_DST, t.dst.AsSlice())
	}
	proto := a.AddRtAttr(nl.CTA_TUPLE_PROTO|unix.NLA_F_NESTED, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{t.proto})
	if withSport {
		proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(t.sport))
	}
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(t.dport))
	if t.hasZone {
		a.AddRtAttr(ctaTupleZone, nl.BEUint16Attr(t.zone))
	}
	return a
}

// dumpRequest asks the kernel for the entries of m's data connections
// only: the filter runs in the kernel's table walk, so what comes back is
// those entries, not the table. (For IPv6, those of any TCP connection to
// the public port: see filter6.)
func dumpRequest(m rules.Mapping) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(ctMsgType(nl.IPCTNL_MSG_CT_GET), unix.NLM_F_DUMP)
	req.AddData(nfgenmsg(family(m)))
	req.AddData(tupleAttr(nl.CTA_TUPLE_ORIG, tuple{
		proto: unix.IPPROTO_TCP,
		src:   m.Source.Unmap(),
		dst:   m.Public.Addr().Unmap(),
		dport: m.Public.Port(),
	}, false))
	flags := uint32(filter4)
	if m.Is6() {
		flags = filter6
	}
	filter := nl.NewRtAttr(ctaFilter|unix.NLA_F_NESTED, nil)
	filter.AddRtAttr(ctaFilterOrigFlags, nl.Uint32Attr(flags))
	req.AddData(filter)
	return req
}

// deleteRequest deletes exactly e: the kernel looks its tuple up in the
// hash table, and checks the id.
func deleteRequest(fam uint8, e entry) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(ctMsgType(nl.IPCTNL_MSG_CT_DELETE), unix.NLM_F_ACK)
	req.AddData(nfgenmsg(fam))
	req.AddData(tupleAttr(nl.CTA_TUPLE_ORIG, e.orig, true))
	if e.hasID {
		req.AddData(nl.NewRtAttr(nl.CTA_ID, nl.BEUint32Attr(e.id)))
	}
	if e.hasZone {
		req.AddData(nl.NewRtAttr(nl.CTA_ZONE, nl.BEUint16Attr(e.zone)))
	}
	return req
}

var errShort = errors.New("short conntrack message")

// attr is one netlink attribute, its type without the nested and
// byte-order flags.
type attr struct {
	typ uint16
	val []byte
}

// parseAttrs splits b into attributes. Unlike nl.ParseRouteAttr, it fails
// on a truncated or malformed attribute instead of panicking.
func parseAttrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return nil, errShort
		}
		n := int(binary.NativeEndian.Uint16(b))
		if n < unix.SizeofRtAttr || n > len(b) {
			return nil, errShort
		}
		out = append(out, attr{typ: binary.NativeEndian.Uint16(b[2:]) & nl.NLA_TYPE_MASK, val: b[unix.SizeofRtAttr:n]})
		// Attributes are padded to 4 bytes; the last one may not be.
		b = b[min((n+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b)):]
	}
	return out, nil
}

// parseEntry reads one message of a conntrack dump: the nfgenmsg header,
// then attributes. Attributes it does not need are skipped.
func parseEntry(msg []byte) (entry, error) {
	var e entry
	if len(msg) < nl.SizeofNfgenmsg {
		return e, errShort
	}
	attrs, err := parseAttrs(msg[nl.SizeofNfgenmsg:])
	if err != nil {
		return e, fmt.Errorf("parsing a conntrack entry: %w", err)
	}
	gotTuple := false
	for _, a := range attrs {
		switch a.typ {
		case nl.CTA_TUPLE_ORIG:
			if e.orig, err = parseTuple(a.val); err != nil {
				return e, err
			}
			gotTuple = true
		case nl.CTA_ID:
			if len(a.val) != 4 {
				return e, errShort
			}
			e.id, e.hasID = binary.BigEndian.Uint32(a.val), true
		case nl.CTA_ZONE:
			if len(a.val) < 2 {
				return e, errShort
			}
			e.zone, e.hasZone = binary.BigEndian.Uint16(a.val), true
		case nl.CTA_PROTOINFO:
			if e.tcpState, e.hasTCPState, err = parseTCPState(a.val); err != nil {
				return e, err
			}
		}
	}
	if !gotTuple {
		return e, errors.New("conntrack entry without an original tuple")
	}
	return e, nil
}

// parseTCPState reads the TCP state out of a CTA_PROTOINFO value; ok is
// false when it holds none (not TCP).
func parseTCPState(b []byte) (state uint8, ok bool, err error) {
	infos, err := parseAttrs(b)
	if err != nil {
		return 0, false, fmt.Errorf("parsing a conntrack entry's protocol info: %w", err)
	}
	for _, i := range infos {
		if i.typ != nl.CTA_PROTOINFO_TCP {
			continue
		}
		tcp, err := parseAttrs(i.val)
		if err != nil {
			return 0, false, fmt.Errorf("parsing a conntrack entry's TCP info: %w", err)
		}
		for _, a := range tcp {
			if a.typ == nl.CTA_PROTOINFO_TCP_STATE {
				if len(a.val) < 1 {
					return 0, false, errShort
				}
				return a.val[0], true, nil
			}
		}
	}
	return 0, false, nil
}

// parseTuple reads a nested tuple attribute's value.
func parseTuple(b []byte) (tuple, error) {
	var t tuple
	attrs, err := parseAttrs(b)
	if err != nil {
		return t, fmt.Errorf("parsing a conntrack tuple: %w", err)
	}
	for _, a := range attrs {
		switch a.typ {
		case nl.CTA_TUPLE_IP:
			ips, err := parseAttrs(a.val)
			if err != nil {
				return t, fmt.Errorf("parsing a conntrack tuple's addresses: %w", err)
			}
			for _, ip := range ips {
				addr, ok := netip.AddrFromSlice(ip.val)
				if !ok {
					return t, fmt.Errorf("conntrack address of %d bytes", len(ip.val))
				}
				switch ip.typ {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					t.src = addr.Unmap()
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					t.dst = addr.Unmap()
				}
			}
		case nl.CTA_TUPLE_PROTO:
			ps, err := parseAttrs(a.val)
			if err != nil {
				return t, fmt.Errorf("parsing a conntrack tuple's protocol: %w", err)
			}
			for _, p := range ps {
				switch p.typ {
				case nl.CTA_PROTO_NUM:
					if len(p.val) < 1 {
						return t, errShort
					}
					t.proto = p.val[0]
				case nl.CTA_PROTO_SRC_PORT:
					if len(p.val) < 2 {
						return t, errShort
					}
					t.sport = binary.BigEndian.Uint16(p.val)
				case nl.CTA_PROTO_DST_PORT:
					if len(p.val) < 2 {
						return t, errShort
					}
					t.dport = binary.BigEndian.Uint16(p.val)
				}
			}
		case ctaTupleZone:
			if len(a.val) < 2 {
				return t, errShort
			}
			t.zone, t.hasZone = binary.BigEndian.Uint16(a.val), true
		}
	}
	if !t.src.IsValid() || !t.dst.IsValid() {
		return t, errors.New("conntrack tuple without addresses")
	}
	return t, nil
}
