package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// BenchmarkInstallRemove installs and removes one mapping (all its rules)
// per iteration, with 0, 1,000 and 10,000 other mappings installed, with each
// backend binary, in a namespace. It reports the median and 99th
// percentile of Install, Remove and both, in milliseconds, with the jump
// check on every install (check=0s) and once a minute. Run it with a
// fixed count, for example:
//
//	go test ./rules/iptables -run '^$' -bench InstallRemove -benchtime=200x
func BenchmarkInstallRemove(b *testing.B) {
	netns.RequireRoot(b)
	for _, name := range binaryNames {
		for _, check := range []time.Duration{0, time.Minute} {
			for _, n := range []int{0, 1000, 10000} {
				b.Run(fmt.Sprintf("%s/check=%v/mappings=%d", name, check, n), func(b *testing.B) {
					path, err := exec.LookPath(name)
					if err != nil {
						b.Skipf("%s not installed", name)
					}
					benchInstallRemove(b, path, n, Config{CheckInterval: check})
				})
			}
		}
	}
}

func benchInstallRemove(b *testing.B, path string, n int, cfg Config) {
	ctx := context.Background()
	ns := netns.New(b, nsPrefix)
	x := newBackend(b, ns, path, cfg)
	if err := x.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	// The other mappings go in with one batch, as a repair would write
	// them; then the backend knows them as its own.
	others := make([]rules.Mapping, n)
	for i := range others {
		others[i] = rulestest.Sample("pre-"+strconv.Itoa(i), uint16(40000+i))
	}
	err := ns.Do(func() error {
		st, err := x.b.save(ctx, x.b.fam4)
		if err != nil {
			return err
		}
		if err := x.b.restore(ctx, x.b.fam4, resetScript(st, x.b.cfg.ConnMark, others, nil)); err != nil {
			return err
		}
		for _, m := range others {
			x.b.add(m)
		}
		return nil
	})
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
	b.ResetTimer()
	// One thread in the namespace for the whole loop: what is timed is the
	// backend, not the namespace switch.
	err = ns.Do(func() error {
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if err := x.b.Install(ctx, m); err != nil {
				return err
			}
			t1 := time.Now()
			if err := x.b.Remove(ctx, m); err != nil {
				return err
			}
			t2 := time.Now()
			install = append(install, t1.Sub(t0))
			remove = append(remove, t2.Sub(t1))
			total = append(total, t2.Sub(t0))
		}
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	rulestest.ReportLatency(b, install, remove, total)
}
