package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

// report collects the measurements and prints the closing table.
type report struct {
	o   options
	gws []gateway
	// loadStart and loadEnd are /proc/loadavg at the start and the end:
	// on a shared machine, whatever else runs shows up in every number.
	loadStart, loadEnd string

	results    map[string][]load.Result // per gateway, one per round
	profiles   []*profile
	memory     map[string][2][]int64 // VmRSS, VmHWM in kB, per round
	serverOnly load.Result
	// oneInstall is one install's time in the installing thread
	// (oneInstall), for comparison with F minus F0.
	oneInstall time.Duration
	elapsed    time.Duration
	// cpuProfile is where -cpuprofile wrote pasvgate's CPU profile, and
	// cpuProfiled the column it profiled.
	cpuProfile, cpuProfiled string
	// trace is where -trace wrote pasvgate's execution trace.
	trace string
	// note says why fewer rounds ran than asked for, if they did.
	note string
	// version is what `pasvgate version` printed.
	version string
}

func newReport(o options, gws []gateway) *report {
	return &report{
		o: o, gws: gws,
		results: map[string][]load.Result{},
		memory:  map[string][2][]int64{},
	}
}

// profile is one profiling pass: single small downloads gap apart through
// every gateway.
type profile struct {
	gap     time.Duration
	samples map[string][]load.Sample // per gateway
	// install and removal are pasvgate's rule times per profiled transfer,
	// in ms: install as pasvgate logs it, removal from the client's 226
	// to pasvgate's "mapping closed" line.
	install, removal map[string][]float64
}

func newProfile(gap time.Duration) *profile {
	return &profile{gap: gap, samples: map[string][]load.Sample{},
		install: map[string][]float64{}, removal: map[string][]float64{}}
}

func (r *report) add(key string, res load.Result) { r.results[key] = append(r.results[key], res) }

// addRuleTimes lines pasvgate's log up with the profiled transfers: the
// k-th mapping belongs to the k-th transfer (one session, one PASV each).
// A removal is done when its "mapping closed" line arrives; it starts when
// pasvgate has forwarded the 226, just before the client reads it.
func (p *profile) addRuleTimes(key string, installMS []float64, closedAt []time.Time) error {
	samples := p.samples[key]
	if len(installMS) != len(samples) || len(closedAt) != len(samples) {
		return fmt.Errorf("profile of %s: %d transfers but %d mappings opened and %d closed in pasvgate's log",
			key, len(samples), len(installMS), len(closedAt))
	}
	p.install[key] = installMS
	for k := range closedAt {
		d := closedAt[k].Sub(time.Unix(0, samples[k].DoneUnixNano))
		p.removal[key] = append(p.removal[key], float64(d.Microseconds())/1000)
	}
	return nil
}

// metric is one row of the main table.
type metric struct {
	name string
	get  func(load.Result) float64
	prec int
}

func (r *report) metrics() []metric {
	mib := r.o.bulkMiB
	return []metric{
		{fmt.Sprintf("NOOP round trip, µs (mean of %d)", r.o.noops), func(x load.Result) float64 { return x.NoopUS }, 1},
		{"NOOP round trip, µs (p50 of the same)", func(x load.Result) float64 { return x.NoopP50US }, 1},
		{fmt.Sprintf("PASV 1 KiB downloads/s (%d, one session)", r.o.gets), func(x load.Result) float64 { return x.PASVPerSec }, 0},
		{fmt.Sprintf("EPSV 1 KiB downloads/s (%d, one session)", r.o.gets), func(x load.Result) float64 { return x.EPSVPerSec }, 0},
		{fmt.Sprintf("sessions/s (%d x connect+login+RETR 1 KiB+QUIT)", r.o.sessions), func(x load.Result) float64 { return x.SessionsPerSec }, 0},
		{fmt.Sprintf("%d MiB download, MB/s (RETR to 226)", mib), func(x load.Result) float64 { return median(x.DownMBps) }, 0},
		{fmt.Sprintf("%d MiB upload, MB/s (STOR to 226)", mib), func(x load.Result) float64 { return median(x.UpMBps) }, 0},
		{fmt.Sprintf("%d MiB download, MB/s (PASV to 226)", mib), func(x load.Result) float64 { return median(x.DownSetupMBps) }, 0},
		{fmt.Sprintf("%d MiB upload, MB/s (PASV to 226)", mib), func(x load.Result) float64 { return median(x.UpSetupMBps) }, 0},
	}
}

// pasvgateKeys are the pasvgate columns present.
func (r *report) pasvgateKeys() []string {
	var ks []string
	for _, g := range r.gws {
		if _, ok := g.(*pasvgateGW); ok {
			ks = append(ks, g.key())
		}
	}
	return ks
}

// stat is the median over rounds of one metric for one gateway, with the
// range. ok is false when the gateway was not measured on it (its column
// is not in this run, or the metric was left out of its workload).
func (r *report) stat(key string, m metric) (med, lo, hi float64, ok bool) {
	var v []float64
	for _, res := range r.results[key] {
		if x := m.get(res); x != 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return 0, 0, 0, false
	}
	return median(v), slices.Min(v), slices.Max(v), true
}

// med is stat's median alone.
func (r *report) med(key string, m metric) float64 {
	v, _, _, _ := r.stat(key, m)
	return v
}

func (r *report) write(w io.Writer) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(w, "\npasvgate gateway bench: %d rounds interleaved (%s), server %s, host %s, kernel %s, %d CPUs, %s total\n",
		len(r.results["B"]), strings.Join(r.keys(), ", "), r.o.server, host, strings.TrimSpace(string(kernel)), runtime.NumCPU(),
		r.elapsed.Round(time.Second))
	if r.note != "" {
		fmt.Fprintf(w, "NOTE: %s\n", r.note)
	}
	fmt.Fprintf(w, "measured: %s; load average (1, 5, 15 min) at start %s, at end %s\n", r.version, r.loadStart, r.loadEnd)
	for _, g := range r.gws {
		fmt.Fprintf(w, "  %-3s %s\n", g.key(), g.title())
	}
	fmt.Fprintf(w, "cells: median over rounds [min-max]; MB = 10^6 bytes\n\n")

	// Numbers align right; the names are padded here so that they read
	// left-aligned all the same.
	width := 0
	for _, m := range r.metrics() {
		width = max(width, utf8.RuneCountInString(m.name))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t", pad("metric", width))
	for _, k := range r.keys() {
		fmt.Fprintf(tw, "%s\t", k)
	}
	ratios := r.ratioColumns()
	for _, rc := range ratios {
		fmt.Fprintf(tw, "%s/%s\t", rc[0], rc[1])
	}
	fmt.Fprintln(tw)
	for _, m := range r.metrics() {
		fmt.Fprintf(tw, "%s\t", pad(m.name, width))
		for _, k := range r.keys() {
			if med, lo, hi, ok := r.stat(k, m); ok {
				fmt.Fprintf(tw, "%.*f [%.*f-%.*f]\t", m.prec, med, m.prec, lo, m.prec, hi)
			} else {
				fmt.Fprintf(tw, "-\t")
			}
		}
		for _, rc := range ratios {
			fmt.Fprintf(tw, "%.2f\t", ratio(r.med(rc[0], m), r.med(rc[1], m)))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()

	r.writeTargets(w)
	r.writeMemory(w)
	for _, p := range r.profiles {
		r.writeProfile(w, p)
	}
	fmt.Fprintf(w, "\nserver alone (client in the server namespace, no gateway; median of %d): download %.0f MB/s, upload %.0f MB/s\n",
		len(r.serverOnly.DownMBps), median(r.serverOnly.DownMBps), median(r.serverOnly.UpMBps))
	if r.cpuProfile != "" {
		fmt.Fprintf(w, "CPU profile of %s (5 s of back-to-back small downloads): %s (go tool pprof -top BINARY %s)\n", r.cpuProfiled, r.cpuProfile, r.cpuProfile)
	}
	if r.trace != "" {
		fmt.Fprintf(w, "execution trace of %s (2 s of back-to-back small downloads): %s (go tool trace -pprof=sched %s)\n", r.cpuProfiled, r.trace, r.trace)
	}
	fmt.Fprintf(w, "issue 4's reference for the kernel helper on this machine: ~1,900 PASV 1 KiB downloads/s, 230 sessions/s, ~2,800 MB/s down, 1,000 MB/s up\n")
}

// ratioColumns are the ratio columns of the main table, as {column,
// against}: every pasvgate column and mod_proxy against the kernel helper,
// and every pasvgate column against the floor.
func (r *report) ratioColumns() [][2]string {
	var rc [][2]string
	has := func(k string) bool { return len(r.results[k]) > 0 }
	for _, k := range append(r.pasvgateKeys(), "M") {
		if has(k) {
			rc = append(rc, [2]string{k, "B"})
		}
	}
	if has("F") {
		for _, k := range r.pasvgateKeys() {
			rc = append(rc, [2]string{k, "F"})
		}
	}
	return rc
}

func (r *report) keys() []string {
	var ks []string
	for _, g := range r.gws {
		ks = append(ks, g.key())
	}
	return ks
}

// writeTargets compares the pasvgate columns with the kernel helper as
// issue 4 asks. It reports; it does not fail the bench.
func (r *report) writeTargets(w io.Writer) {
	ms := r.metrics()
	noop, down, up := ms[0], ms[5], ms[6]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	fmt.Fprintf(w, "\ntargets (issue 4), pasvgate vs kernel helper (B):\n")
	bNoop, bDown, bUp := r.med("B", noop), r.med("B", down), r.med("B", up)
	for _, k := range r.pasvgateKeys() {
		n, d, u := r.med(k, noop), r.med(k, down), r.med(k, up)
		fmt.Fprintf(w, "  %-3s bulk download %.2f x B (>= 0.95: %s); bulk upload %.2f x B (>= 0.95: %s); NOOP %+.1f µs vs B (<= +30: %s)\n",
			k, ratio(d, bDown), verdict(ratio(d, bDown) >= 0.95), ratio(u, bUp), verdict(ratio(u, bUp) >= 0.95),
			n-bNoop, verdict(n-bNoop <= 30))
	}
	// Issue 8: the rates a rule call per transfer limits.
	fmt.Fprintf(w, "\ntargets (issue 8), small transfers and sessions vs kernel helper (B), >= 0.9:\n")
	for _, k := range r.pasvgateKeys() {
		fmt.Fprintf(w, "  %-3s", k)
		for _, m := range []metric{ms[2], ms[3], ms[4]} {
			x := ratio(r.med(k, m), r.med("B", m))
			fmt.Fprintf(w, " %s %.2f x B (%s);", strings.SplitN(m.name, " (", 2)[0], x, verdict(x >= 0.9))
		}
		fmt.Fprintln(w)
	}
	if len(r.pasvgateKeys()) > 1 {
		// The backends differ in rule calls and in how established data
		// packets are matched; a NOOP meets neither.
		fmt.Fprintf(w, "  (a NOOP takes the same path through every pasvgate column: their difference is noise)\n")
	}
	if _, _, _, ok := r.stat("F", noop); ok {
		// Issue 13: one small download's time, from the downloads/s rows,
		// against the floor's; and every rate against mod_proxy's.
		inst := float64(r.oneInstall.Microseconds()) / 1000
		fmt.Fprintf(w, "\ntargets (issue 13), per-transfer time vs the floor (<= +0.1 ms), small transfers and sessions vs M:\n")
		fmt.Fprintf(w, "  floor = F's per-transfer time: the relay with one install per transfer, measured whole\n")
		per := func(k string, m metric) float64 {
			if v := r.med(k, m); v > 0 {
				return 1000 / v
			}
			return 0
		}
		if _, _, _, ok := r.stat("F0", noop); ok {
			fmt.Fprintf(w, "  what the install adds to a transfer (F - F0): PASV %+.3f ms, EPSV %+.3f ms; its system call alone: %.3f ms (median of %d installs in the gw, 1 ms apart)\n",
				per("F", ms[2])-per("F0", ms[2]), per("F", ms[3])-per("F0", ms[3]), inst, oneInstallCount)
		}
		for _, k := range r.pasvgateKeys() {
			fmt.Fprintf(w, "  %-3s", k)
			for _, m := range []metric{ms[2], ms[3]} {
				floor := per("F", m)
				d := per(k, m) - floor
				fmt.Fprintf(w, " %s %.3f ms vs floor %.3f (%+.3f: %s; round by round %+.3f);", strings.SplitN(m.name, " ", 2)[0],
					per(k, m), floor, d, verdict(d <= 0.1), r.pairedDiff(k, "F", m))
			}
			if _, _, _, ok := r.stat("M", ms[2]); ok {
				for _, m := range []metric{ms[2], ms[3], ms[4]} {
					x := ratio(r.med(k, m), r.med("M", m))
					fmt.Fprintf(w, " %s %.2f x M (%s);", strings.SplitN(m.name, " (", 2)[0], x, verdict(x > 1))
				}
			}
			fmt.Fprintln(w)
		}
	}
}

// pairedDiff is the median over rounds of k's per-transfer time minus
// against's in the same round (ms, from metric m's rate): the two run
// within seconds of each other in every round (D just before F), so this
// difference is less exposed to the machine's drift than the difference
// of the medians. The verdicts do not use it.
func (r *report) pairedDiff(k, against string, m metric) float64 {
	a, b := r.results[k], r.results[against]
	var ds []float64
	for i := range min(len(a), len(b)) {
		x, y := m.get(a[i]), m.get(b[i])
		if x > 0 && y > 0 {
			ds = append(ds, 1000/x-1000/y)
		}
	}
	return median(ds)
}

func (r *report) writeMemory(w io.Writer) {
	for _, k := range r.pasvgateKeys() {
		m := r.memory[k]
		if len(m[0]) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %-3s memory after each round's workload (a fresh process per round): VmRSS %.1f-%.1f MiB, VmHWM %.1f-%.1f MiB\n",
			k, mib(slices.Min(m[0])), mib(slices.Max(m[0])), mib(slices.Min(m[1])), mib(slices.Max(m[1])))
	}
}

// writeProfile prints the phase-by-phase medians of single small
// downloads and, for pasvgate, the split between rule calls and the rest.
func (r *report) writeProfile(w io.Writer, p *profile) {
	n := 0
	var keys []string
	for _, k := range r.keys() {
		if len(p.samples[k]) > 0 {
			keys = append(keys, k)
			n = max(n, len(p.samples[k]))
		}
	}
	how := fmt.Sprintf("%v apart (each removal done before the next install)", p.gap)
	if p.gap == 0 {
		how = "back to back (each install overlaps the previous removal, as in the downloads/s rows)"
	}
	fmt.Fprintf(w, "\none 1 KiB PASV download, profiled: median of %d single downloads %s, ms\n", n, how)
	const width = 52
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t", pad("phase", width))
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t", k)
	}
	fmt.Fprintln(tw)
	phases := []struct {
		name string
		get  func(load.Sample) float64
	}{
		{"PASV sent to 227 (pasvgate: incl. rule install)", func(s load.Sample) float64 { return s.PassiveMS }},
		{"data connection established", func(s load.Sample) float64 { return s.ConnectMS }},
		{"RETR sent to 150", func(s load.Sample) float64 { return s.OpenMS }},
		{"150 to data EOF", func(s load.Sample) float64 { return s.DataMS }},
		{"data EOF to 226", func(s load.Sample) float64 { return s.FinalMS }},
		{"total, PASV to 226", func(s load.Sample) float64 { return s.TotalMS }},
	}
	for _, ph := range phases {
		fmt.Fprintf(tw, "%s\t", pad(ph.name, width))
		for _, k := range keys {
			var v []float64
			for _, s := range p.samples[k] {
				v = append(v, ph.get(s))
			}
			fmt.Fprintf(tw, "%.3f\t", median(v))
		}
		fmt.Fprintln(tw)
	}
	row := func(name string, f func(k string) (float64, bool)) {
		fmt.Fprintf(tw, "%s\t", pad(name, width))
		for _, k := range keys {
			if v, ok := f(k); ok {
				fmt.Fprintf(tw, "%.3f\t", v)
			} else {
				fmt.Fprintf(tw, "-\t")
			}
		}
		fmt.Fprintln(tw)
	}
	total := func(k string) []float64 {
		var v []float64
		for _, s := range p.samples[k] {
			v = append(v, s.TotalMS)
		}
		return v
	}
	row("  of which rule install (pasvgate's install_ms)", func(k string) (float64, bool) {
		v, ok := p.install[k]
		return median(v), ok
	})
	row("  of which everything else (total - install)", func(k string) (float64, bool) {
		inst, ok := p.install[k]
		if !ok {
			return 0, false
		}
		// Per transfer, then the median: the two are not independent.
		t := total(k)
		var rest []float64
		for i := 0; i < len(t) && i < len(inst); i++ {
			rest = append(rest, t[i]-inst[i])
		}
		return median(rest), true
	})
	row("rule removal after the 226 (off the critical path)", func(k string) (float64, bool) {
		v, ok := p.removal[k]
		return median(v), ok
	})
	tw.Flush()
}

// pad pads s with spaces to width runes (µ is one rune, two bytes).
func pad(s string, width int) string {
	return s + strings.Repeat(" ", max(0, width-utf8.RuneCountInString(s)))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func mib(kb int64) float64 { return float64(kb) / 1024 }
