package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/pasvgate/pasvgate/rules"
)

// A mapping is one element of SetDNAT, one of SetUnused until its data
// connection comes, and, when it has SNAT, one of SetSNAT. Each carries
// the kernel timeout; those of the maps carry the same comment,
// "id=ID created=UNIX-SECONDS", from which List rebuilds the mapping after
// a restart. A mapping with a Dialed address has a second element of
// SetDNAT, keyed on Dialed, whose comment ends in dialedWord; it shares
// the one SetUnused element, keyed on source and port only, so whichever
// address the first connection arrives at uses the mapping up for both.

// dialedWord marks the comment of the SetDNAT element of a mapping's
// Dialed address.
const dialedWord = "via=dialed"

// elems are one mapping's elements.
type elems struct {
	dnat, snat []nftables.SetElement // snat is empty without SNAT
	unused     []nftables.SetElement
}

// port is a port as a key field: big-endian, padded to a register.
func port(p uint16) []byte {
	return []byte{byte(p >> 8), byte(p), 0, 0}
}

// pubKey is the SetDNAT key of m.
func pubKey(m rules.Mapping) []byte {
	k := append(m.Source.AsSlice(), m.Public.Addr().AsSlice()...)
	return append(k, port(m.Public.Port())...)
}

// dialedKey is the SetDNAT key of m's Dialed address.
func dialedKey(m rules.Mapping) []byte {
	k := append(m.Source.AsSlice(), m.Dialed.AsSlice()...)
	return append(k, port(m.Public.Port())...)
}

// snatKey is the SetSNAT key of m.
func snatKey(m rules.Mapping) []byte {
	k := append(m.Source.AsSlice(), m.Target.Addr().AsSlice()...)
	k = append(k, port(m.Target.Port())...)
	return append(k, port(m.Public.Port())...)
}

// unusedKey is the SetUnused key of m.
func unusedKey(m rules.Mapping) []byte {
	return append(m.Source.AsSlice(), port(m.Public.Port())...)
}

// comment is the comment on each of m's elements.
func comment(m rules.Mapping) string {
	c := "id=" + m.ID
	if !m.Created.IsZero() {
		c += " created=" + strconv.FormatInt(m.Created.Unix(), 10)
	}
	return c
}

// parseComment reads back what comment wrote. Words it does not know are
// ignored, so that a later version may add some.
func parseComment(c string) (id string, created time.Time, dialed, ok bool) {
	for _, w := range strings.Fields(c) {
		if w == dialedWord {
			dialed = true
			continue
		}
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "id":
			id = v
		case "created":
			if s, err := strconv.ParseInt(v, 10, 64); err == nil {
				created = time.Unix(s, 0)
			}
		}
	}
	return id, created, dialed, rules.ValidID(id)
}

// elementsOf makes m's elements with the given kernel timeout (whole
// milliseconds, at least one: the kernel's unit, and 0 would mean the set's
// default). m must be valid.
func elementsOf(m rules.Mapping, timeout time.Duration) elems {
	timeout = max(timeout.Truncate(time.Millisecond), time.Millisecond)
	c := comment(m)
	val := append(m.Target.Addr().AsSlice(), port(m.Target.Port())...)
	e := elems{
		dnat: []nftables.SetElement{{Key: pubKey(m), Val: val, Timeout: timeout, Comment: c}},
	}
	if m.Dialed.IsValid() {
		e.dnat = append(e.dnat, nftables.SetElement{Key: dialedKey(m), Val: val, Timeout: timeout, Comment: c + " " + dialedWord})
	}
	if m.SNAT.IsValid() {
		e.snat = []nftables.SetElement{{Key: snatKey(m), Val: m.SNAT.AsSlice(), Timeout: timeout, Comment: c}}
	}
	e.unused = []nftables.SetElement{{Key: unusedKey(m), Timeout: timeout, Comment: c}}
	return e
}

// keysOnly strips what a delete does not need: the kernel finds an
// element by its key.
func keysOnly(es []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		out[i] = nftables.SetElement{Key: e.Key}
	}
	return out
}

// addr reads an address of family f from b at *off and advances *off.
func (f *family) addr(b []byte, off *int) (netip.Addr, error) {
	if len(b) < *off+int(f.alen) {
		return netip.Addr{}, fmt.Errorf("%d bytes, too short", len(b))
	}
	a, _ := netip.AddrFromSlice(b[*off : *off+int(f.alen)])
	*off += int(f.alen)
	return a, nil
}

// port reads a padded port from b at *off and advances *off.
func readPort(b []byte, off *int) (uint16, error) {
	if len(b) < *off+4 {
		return 0, fmt.Errorf("%d bytes, too short", len(b))
	}
	p := binary.BigEndian.Uint16(b[*off:])
	*off += 4
	return p, nil
}

// decodeDNAT rebuilds a mapping, without SNAT, from an element of
// SetDNAT. For the element of a Dialed address (dialed), the address it
// holds is in m.Public.
func (f *family) decodeDNAT(e nftables.SetElement) (m rules.Mapping, dialed bool, err error) {
	id, created, dialed, ok := parseComment(e.Comment)
	if !ok {
		return m, dialed, fmt.Errorf("element without a pasvgate id (comment %q)", e.Comment)
	}
	m, err = f.decodeDNATKey(e, id, created)
	return m, dialed, err
}

func (f *family) decodeDNATKey(e nftables.SetElement, id string, created time.Time) (rules.Mapping, error) {
	m := rules.Mapping{ID: id, Created: created}
	var err error
	off := 0
	var pub netip.Addr
	var q uint16
	if m.Source, err = f.addr(e.Key, &off); err != nil {
		return m, fmt.Errorf("key of %s: %w", id, err)
	}
	if pub, err = f.addr(e.Key, &off); err != nil {
		return m, fmt.Errorf("key of %s: %w", id, err)
	}
	if q, err = readPort(e.Key, &off); err != nil {
		return m, fmt.Errorf("key of %s: %w", id, err)
	}
	m.Public = netip.AddrPortFrom(pub, q)
	off = 0
	tgt, err := f.addr(e.Val, &off)
	if err != nil {
		return m, fmt.Errorf("data of %s: %w", id, err)
	}
	p, err := readPort(e.Val, &off)
	if err != nil {
		return m, fmt.Errorf("data of %s: %w", id, err)
	}
	m.Target = netip.AddrPortFrom(tgt, p)
	return m, nil
}

// decodeSNAT reads the SNAT address of an element of SetSNAT, with its
// key as a string to match against snatKey.
func (f *family) decodeSNAT(e nftables.SetElement) (key string, snat netip.Addr, err error) {
	off := 0
	snat, err = f.addr(e.Val, &off)
	return string(e.Key), snat, err
}
