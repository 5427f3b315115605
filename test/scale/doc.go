// Package scale holds pasvgate's concurrency tests: the real binary with
// the nftables backend, between a Go load client and the built-in test
// FTP server, in three network namespaces it creates (prefix pgsl-), on a
// real kernel.
//
// TestConcurrentTransfers opens 1,000 control sessions that all hold a
// live data mapping at the same moment, checks the kernel holds exactly
// 1,000 map elements, then runs the 1,000 downloads at once and checks
// every byte and that no element outlives its session.
//
// TestIdleSessions holds 10,000 logged-in control sessions open through
// one process and checks each still answers; it logs the process's
// resident memory per session, which BenchmarkIdleSessions reports as a
// metric (memory targets are reported, never asserted). Both hold fewer
// sessions, and say so, when the descriptor limit cannot be raised far
// enough: pasvgate needs two descriptors per session, and raising the
// hard limit needs CAP_SYS_RESOURCE, which a container may withhold even
// from root.
//
// The tests, and the benchmark on its own:
//
//	go test -count=1 -v ./test/scale
//	go test -run '^$' -bench IdleSessions -benchtime 1x ./test/scale
//
// Everything needs root; without it the tests skip.
package scale
