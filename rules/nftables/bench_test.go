package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// BenchmarkInstallRemove installs and removes one mapping (with SNAT: two
// elements) per iteration, with 0, 1000 and 10000 other mappings
// installed, in a namespace. It reports the median and 99th percentile of
// Install, Remove and both, in milliseconds. Run it with a fixed count,
// for example:
//
//	go test ./rules/nftables -run '^$' -bench InstallRemove -benchtime=5000x
func BenchmarkInstallRemove(b *testing.B) {
	netns.RequireRoot(b)
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("mappings=%d", n), func(b *testing.B) { benchInstallRemove(b, n) })
	}
}

func benchInstallRemove(b *testing.B, n int) {
	ctx := context.Background()
	ns := netns.New(b, nsPrefix)
	// Long enough that no element expires during the run.
	x := newBackend(b, ns, Config{Timeout: time.Hour})
	if err := x.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	// The other mappings go in as a rebuild would put them, in batches of
	// maxBatchMappings; then the backend knows them as its own.
	others := make([]entry, n)
	now := time.Now()
	for i := range others {
		m := rulestest.Sample(fmt.Sprintf("pre-%d", i), uint16(10000+i))
		others[i] = entry{m: m, expires: now.Add(time.Hour)}
	}
	if err := x.lock(ctx); err != nil {
		b.Fatal(err)
	}
	err := x.addElements(ctx, x.fams[0], others, now)
	for _, e := range others {
		x.idx.Add(e)
	}
	x.unlock()
	if err != nil {
		b.Fatal(err)
	}
	if ms, err := x.List(ctx); err != nil || len(ms) != n {
		b.Fatalf("List = %d mappings, %v; want %d", len(ms), err, n)
	}

	m := rulestest.Sample("bench", 50000)
	m.Public = netip.AddrPortFrom(netip.MustParseAddr("203.0.113.3"), 50000)
	install := make([]time.Duration, 0, b.N)
	remove := make([]time.Duration, 0, b.N)
	total := make([]time.Duration, 0, b.N)
	// Bytes per op, too: every byte an install or a removal allocates is
	// paid again in garbage collection, on the one thread pasvgate runs on.
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := x.Install(ctx, m); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := x.Remove(ctx, m); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		install = append(install, t1.Sub(t0))
		remove = append(remove, t2.Sub(t1))
		total = append(total, t2.Sub(t0))
	}
	b.StopTimer()
	rulestest.ReportLatency(b, install, remove, total)
}
