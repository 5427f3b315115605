package nftables

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"github.com/pasvgate/pasvgate/rules/rulestest"
)

// TestKeys pins the byte layout of the keys and data, which must match
// the registers the rules load: every field padded to four bytes.
func TestKeys(t *testing.T) {
	m := rulestest.Sample("m-1", 40001) // 203.0.113.10 -> 203.0.113.2:40001 => 192.0.2.10:30000 snat 192.0.2.1
	el := elementsOf(m, time.Minute)
	for _, c := range []struct {
		name      string
		got, want []byte
	}{
		{"dnat key", el.dnat[0].Key, []byte{203, 0, 113, 10, 203, 0, 113, 2, 0x9c, 0x41, 0, 0}},
		{"dnat data", el.dnat[0].Val, []byte{192, 0, 2, 10, 0x75, 0x30, 0, 0}},
		{"snat key", el.snat[0].Key, []byte{203, 0, 113, 10, 192, 0, 2, 10, 0x75, 0x30, 0, 0, 0x9c, 0x41, 0, 0}},
		{"snat data", el.snat[0].Val, []byte{192, 0, 2, 1}},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s = % x, want % x", c.name, c.got, c.want)
		}
	}
	// The keys' lengths are the maps' key lengths, in both families.
	for _, f := range []*family{fam4, fam6} {
		o := newObjects(f, TableName, time.Second)
		m := rulestest.Sample("m-1", 40001)
		if f.v6 {
			m = rulestest.Sample6("m-1", 40001)
			m.SNAT = netip.MustParseAddr("2001:db8:2::1")
		}
		el := elementsOf(m, time.Minute)
		for _, c := range []struct {
			name     string
			got, key int
		}{
			{"dnat key", len(el.dnat[0].Key), int(o.dnat.KeyType.Bytes)},
			{"dnat data", len(el.dnat[0].Val), int(o.dnat.DataType.Bytes)},
			{"snat key", len(el.snat[0].Key), int(o.snat.KeyType.Bytes)},
			{"snat data", len(el.snat[0].Val), int(o.snat.DataType.Bytes)},
		} {
			if c.got != c.key {
				t.Errorf("%s %s: %d bytes, map wants %d", f.name, c.name, c.got, c.key)
			}
		}
	}
}

// TestRoundTrip checks that List's decoding gives back what Install's
// encoding wrote, in both families, with and without SNAT and Created.
func TestRoundTrip(t *testing.T) {
	var ms []rules.Mapping
	for _, m := range []rules.Mapping{rulestest.Sample("m-4", 40001), rulestest.Sample6("m-6", 65535)} {
		ms = append(ms, m)
		m.SNAT = netip.Addr{}
		m.Created = time.Time{}
		ms = append(ms, m)
	}
	ms[2].SNAT = netip.MustParseAddr("2001:db8:2::1")
	for _, m := range ms {
		f := fam4
		if m.Is6() {
			f = fam6
		}
		el := elementsOf(m, time.Minute)
		got, dialed, err := f.decodeDNAT(el.dnat[0])
		if err != nil || dialed {
			t.Fatalf("%v: %v (dialed %v)", m, err, dialed)
		}
		if len(el.snat) != 0 {
			k, a, err := f.decodeSNAT(el.snat[0])
			if err != nil || k != string(snatKey(got)) {
				t.Fatalf("%v: snat element decodes as %q, %v, %v", m, k, a, err)
			}
			got.SNAT = a
		}
		if !mapindex.Same(got, m) || got.Created.IsZero() != m.Created.IsZero() {
			t.Errorf("decoded %v (created %v), want %v (created %v)", got, got.Created, m, m.Created)
		}
	}
}

// TestDialedElement checks that a mapping with a Dialed address has a
// second dnat element for that address, marked as such, with the same
// target, and shares the mapping's one unused element.
func TestDialedElement(t *testing.T) {
	m := rulestest.Sample("m-d", 40001)
	m.Dialed = netip.MustParseAddr("203.0.113.3")
	el := elementsOf(m, time.Minute)
	if len(el.dnat) != 2 || len(el.unused) != 1 || len(el.snat) != 1 {
		t.Fatalf("elements: %d dnat, %d unused, %d snat; want 2, 1, 1", len(el.dnat), len(el.unused), len(el.snat))
	}
	got, dialed, err := fam4.decodeDNAT(el.dnat[1])
	if err != nil || !dialed {
		t.Fatalf("second dnat element: %v, dialed %v", err, dialed)
	}
	if got.ID != m.ID || got.Source != m.Source || got.Public != netip.AddrPortFrom(m.Dialed, m.Public.Port()) || got.Target != m.Target {
		t.Errorf("second dnat element decodes as %v", got)
	}
}

func TestParseComment(t *testing.T) {
	for _, c := range []struct {
		in      string
		id      string
		created int64
		ok      bool
	}{
		{"id=m-1 created=1700000000", "m-1", 1700000000, true},
		{"id=m-1", "m-1", 0, true},
		{"created=1 id=m-2 later=word", "m-2", 1, true},
		{"id=Bad_ID", "", 0, false},
		{"", "", 0, false},
		{"hand-made element", "", 0, false},
	} {
		id, created, _, ok := parseComment(c.in)
		if ok != c.ok || ok && (id != c.id || (c.created == 0) != created.IsZero() || c.created != 0 && created.Unix() != c.created) {
			t.Errorf("parseComment(%q) = %q, %v, %v", c.in, id, created, ok)
		}
	}
}

// TestTimeoutUnit checks that element timeouts are whole milliseconds and
// never 0, which the kernel would read as the map's default.
func TestTimeoutUnit(t *testing.T) {
	m := rulestest.Sample("m-1", 40001)
	for in, want := range map[time.Duration]time.Duration{
		30 * time.Second: 30 * time.Second, 1500 * time.Microsecond: time.Millisecond,
		0: time.Millisecond, -time.Second: time.Millisecond,
	} {
		if got := elementsOf(m, in).dnat[0].Timeout; got != want {
			t.Errorf("timeout %v -> %v, want %v", in, got, want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.cfg.Timeout != DefaultTimeout || b.cfg.CtMark != DefaultCtMark || b.cfg.OpTimeout != DefaultOpTimeout || len(b.fams) != 2 {
		t.Errorf("defaults: %+v, %d families", b.cfg, len(b.fams))
	}
	if _, err := New(Config{Timeout: time.Microsecond}); err == nil {
		t.Errorf("New accepted a timeout below a millisecond")
	}
}
