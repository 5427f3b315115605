package main

import (
	"runtime"
	"strconv"
)

// defaultProcs is how many OS threads run pasvgate's Go code at once
// (GOMAXPROCS) when the environment does not say.
//
// Why one: the data bytes stay in the kernel, and what pasvgate does per
// transfer is little (about a quarter of a millisecond of CPU for a small
// download) and waits on its peers. With two or more, a session's
// goroutines (its commands, its server's replies, the removal worker)
// wake each other across CPUs, and each such wake-up is an inter-processor
// interrupt that costs more than the work it hands over. Measured on the
// bench (issue 13), same build, rounds interleaved, 2 CPUs: 1 KiB PASV
// downloads in one session 805/s with one against 677/s with two, and
// 1.24 against 1.48 ms a download. Set GOMAXPROCS to use more, for
// example for very many sessions at once.
const defaultProcs = 1

// setProcs applies defaultProcs unless GOMAXPROCS is set (getenv), and
// returns what runs.
func setProcs(getenv func(string) string) int {
	if v := getenv("GOMAXPROCS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return runtime.GOMAXPROCS(0)
		}
	}
	runtime.GOMAXPROCS(defaultProcs)
	return defaultProcs
}
