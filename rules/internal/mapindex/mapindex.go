// Package mapindex is the kernel backends' shared index of the mappings a
// process installed since Setup: by ID, and the ID of each under every key
// the backend's kernel state can hold only once. Duplicate checks then need
// no kernel call, and a repair or rebuild can put every live mapping back.
// Which keys a mapping takes, and what is kept with it, is each backend's
// own; locking is the caller's.
package mapindex

import (
	"maps"
	"slices"
	"strings"

	"github.com/pasvgate/pasvgate/rules"
)

// Index holds values of type V, each about one mapping, by the mapping's ID
// and by keys of type K. Make it with New; the zero value is an empty
// index that can be read but not added to (a backend that is closed).
type Index[K comparable, V any] struct {
	mapping func(V) rules.Mapping
	keys    func(rules.Mapping) []K
	byID    map[string]V
	byKey   map[K]string
}

// New returns an empty index. mapping gives the mapping a value is about,
// and keys the keys under which no two installed mappings may be.
func New[K comparable, V any](mapping func(V) rules.Mapping, keys func(rules.Mapping) []K) Index[K, V] {
	return Index[K, V]{mapping: mapping, keys: keys, byID: map[string]V{}, byKey: map[K]string{}}
}

// Conflict returns the ID of an installed mapping that m duplicates: the
// same ID, or one of m's keys.
func (x *Index[K, V]) Conflict(m rules.Mapping) (string, bool) {
	if _, ok := x.byID[m.ID]; ok {
		return m.ID, true
	}
	for _, k := range x.keys(m) {
		if id, ok := x.byKey[k]; ok {
			return id, true
		}
	}
	return "", false
}

// Get returns the value of the mapping with this ID.
func (x *Index[K, V]) Get(id string) (V, bool) {
	v, ok := x.byID[id]
	return v, ok
}

// Add records v under its mapping's ID and keys, replacing what was there.
func (x *Index[K, V]) Add(v V) {
	m := x.mapping(v)
	x.byID[m.ID] = v
	for _, k := range x.keys(m) {
		x.byKey[k] = m.ID
	}
}

// Delete forgets m.
func (x *Index[K, V]) Delete(m rules.Mapping) {
	delete(x.byID, m.ID)
	for _, k := range x.keys(m) {
		delete(x.byKey, k)
	}
}

// Len is the number of mappings held.
func (x *Index[K, V]) Len() int { return len(x.byID) }

// Sorted returns every value, in the order of their mappings' IDs, so that
// what a repair writes does not depend on map order.
func (x *Index[K, V]) Sorted() []V {
	return slices.SortedFunc(maps.Values(x.byID), func(a, b V) int {
		return strings.Compare(x.mapping(a).ID, x.mapping(b).ID)
	})
}

// Same reports whether a and b are the same mapping as far as the kernel
// can tell: Created is kept to the second.
func Same(a, b rules.Mapping) bool {
	return a.ID == b.ID && a.Source == b.Source && a.Public == b.Public && a.Dialed == b.Dialed &&
		a.Target == b.Target && a.SNAT == b.SNAT && a.Created.Unix() == b.Created.Unix()
}
