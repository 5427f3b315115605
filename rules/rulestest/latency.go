package rulestest

import (
	"slices"
	"testing"
	"time"
)

// ReportLatency reports the median and p99 (in ms) of each backend
// benchmark series as install-p50-ms, install-p99-ms, and so on, so that
// both backends' figures read the same.
func ReportLatency(b *testing.B, install, remove, both []time.Duration) {
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{{"install", install}, {"remove", remove}, {"both", both}} {
		b.ReportMetric(Percentile(s.d, 50), s.name+"-p50-ms")
		b.ReportMetric(Percentile(s.d, 99), s.name+"-p99-ms")
	}
}

// Percentile returns the p-th percentile of ds in milliseconds (nearest
// rank), or 0 for no samples.
func Percentile(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return float64(s[i]) / float64(time.Millisecond)
}
