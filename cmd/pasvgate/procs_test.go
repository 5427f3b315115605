package main

import (
	"runtime"
	"testing"
)

// TestSetProcs: one thread for Go code unless GOMAXPROCS says otherwise
// (the runtime has read it already; a value it ignores is ignored here
// too).
func TestSetProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	env := func(v string) func(string) string { return func(string) string { return v } }

	runtime.GOMAXPROCS(2)
	if got := setProcs(env("")); got != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Errorf("unset: setProcs = %d, GOMAXPROCS %d; want 1, 1", got, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(2)
	if got := setProcs(env("2")); got != 2 || runtime.GOMAXPROCS(0) != 2 {
		t.Errorf("GOMAXPROCS=2: setProcs = %d, GOMAXPROCS %d; want 2, 2", got, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(2)
	if got := setProcs(env("bogus")); got != 1 {
		t.Errorf("GOMAXPROCS=bogus: setProcs = %d, want 1", got)
	}
}
