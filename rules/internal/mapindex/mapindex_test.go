package mapindex

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
)

func mapping(id, src, pub string) rules.Mapping {
	return rules.Mapping{ID: id, Source: netip.MustParseAddr(src), Public: netip.MustParseAddrPort(pub)}
}

// srcKey makes a mapping's source its one key, as a backend would its
// own kernel keys.
func srcKey(m rules.Mapping) []netip.Addr { return []netip.Addr{m.Source} }

// TestIndex: a duplicate is found by ID and by key, naming the installed
// mapping; a deleted mapping frees its ID and keys; Sorted is in ID order;
// the zero value reads as empty.
func TestIndex(t *testing.T) {
	x := New(func(m rules.Mapping) rules.Mapping { return m }, srcKey)
	b := mapping("b", "198.51.100.2", "203.0.113.1:40001")
	a := mapping("a", "198.51.100.1", "203.0.113.1:40000")
	x.Add(b)
	x.Add(a)
	if id, ok := x.Conflict(mapping("a", "198.51.100.9", "203.0.113.1:40009")); !ok || id != "a" {
		t.Errorf("same ID: Conflict = %q, %v; want a", id, ok)
	}
	if id, ok := x.Conflict(mapping("c", "198.51.100.2", "203.0.113.1:40009")); !ok || id != "b" {
		t.Errorf("same key: Conflict = %q, %v; want b", id, ok)
	}
	if got := x.Sorted(); !slices.Equal(got, []rules.Mapping{a, b}) || x.Len() != 2 {
		t.Errorf("Sorted = %v, Len %d; want a, b", got, x.Len())
	}
	x.Delete(b)
	if id, ok := x.Conflict(mapping("c", "198.51.100.2", "203.0.113.1:40009")); ok {
		t.Errorf("after Delete, Conflict = %q", id)
	}
	if _, ok := x.Get("b"); ok {
		t.Error("Get finds a deleted mapping")
	}
	if m, ok := x.Get("a"); !ok || !Same(m, a) {
		t.Errorf("Get(a) = %v, %v", m, ok)
	}
	var zero Index[netip.Addr, rules.Mapping]
	if _, ok := zero.Get("a"); ok || zero.Len() != 0 || len(zero.Sorted()) != 0 {
		t.Error("the zero Index is not empty")
	}
}
