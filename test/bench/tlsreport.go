package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

// tlsReport prints the FTPS bench's table, its targets and its failures.
type tlsReport struct {
	b       *tlsBench
	rounds  int
	elapsed time.Duration
	load    string // /proc/loadavg at the end
	version string
}

// tlsMetric is one row of the FTPS table.
type tlsMetric struct {
	name string
	get  func(tlsRound) float64
	prec int
	// has says whether a column is measured on it at all; nil: every one.
	has func(*tlsColumn) bool
	// in says whether a round measured it; nil: every one.
	in func(tlsRound) bool
}

func (r *tlsReport) metrics() []tlsMetric {
	o := r.b.o
	return []tlsMetric{
		{fmt.Sprintf("1 KiB RETR/s, PASV (%d in one session)", o.gets), func(x tlsRound) float64 { return x.small.PASVPerSec }, 0, nil, nil},
		{fmt.Sprintf("1 KiB RETR/s, EPSV (%d in one session)", o.gets), func(x tlsRound) float64 { return x.small.EPSVPerSec }, 0, nil, nil},
		{fmt.Sprintf("sessions/s (%d x connect, AUTH TLS, login, QUIT)", o.sessions), func(x tlsRound) float64 { return x.small.SessionsPerSec }, 0, nil, nil},
		{fmt.Sprintf("%d MiB download, MB/s (RETR to 226)", o.bulkMiB), func(x tlsRound) float64 { return median(x.bulk.DownMBps) }, 0, nil, nil},
		{fmt.Sprintf("%d MiB upload, MB/s (STOR to 226)", o.bulkMiB), func(x tlsRound) float64 { return median(x.bulk.UpMBps) }, 0, nil, nil},
		{"gateway CPU s per GiB relayed (bulk, both ways)", cpuPerGiB, 2, func(c *tlsColumn) bool { return c.pid != nil }, nil},
		{"  client's CPU s per GiB (TLS, SHA-256), the same", func(x tlsRound) float64 { return perGiB(x.client, x) }, 2, nil, nil},
		{fmt.Sprintf("idle TLS session, KiB each (%d sessions)", o.idle), func(x tlsRound) float64 { return x.idleKiB }, 1,
			func(c *tlsColumn) bool { return c.idle && o.idle > 0 }, func(x tlsRound) bool { return x.idleDone }},
	}
}

// values are one metric's per-round values for a column, and whether it
// is measured there at all (a column without a gateway process has no CPU
// figure). A round that did not measure it (mod_proxy's idle sessions
// after the first) has no value.
func (r *tlsReport) values(k string, m tlsMetric) ([]float64, bool) {
	c := r.b.column(k)
	if c == nil || (m.has != nil && !m.has(c)) {
		return nil, false
	}
	var v []float64
	for _, res := range r.b.results[k] {
		if m.in == nil || m.in(res) {
			v = append(v, m.get(res))
		}
	}
	return v, len(v) > 0
}

// med is a metric's median over rounds for a column, 0 if it has none.
func (r *tlsReport) med(k string, m tlsMetric) float64 {
	v, ok := r.values(k, m)
	if !ok {
		return 0
	}
	return median(v)
}

func (r *tlsReport) write(w io.Writer) {
	b := r.b
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var keys []string
	for _, c := range b.cols {
		keys = append(keys, c.k)
	}
	fmt.Fprintf(w, "\npasvgate FTPS bench: %d rounds interleaved (%s), vsftpd (ssl_enable=YES, require_ssl_reuse=YES), host %s, kernel %s, %d CPUs, %s total\n",
		r.rounds, strings.Join(keys, ", "), host, strings.TrimSpace(string(kernel)),
		runtime.NumCPU(), r.elapsed.Round(time.Second))
	var set []string
	flag.Visit(func(f *flag.Flag) { set = append(set, "-"+f.Name+"="+f.Value.String()) })
	fmt.Fprintf(w, "measured: %s; flags: %s; load average (1, 5, 15 min) at end %s\n", r.version, strings.Join(set, " "), r.load)
	for _, c := range b.cols {
		fmt.Fprintf(w, "  %-3s %s\n", c.k, c.name)
	}
	fmt.Fprintf(w, "client: Go crypto/tls, one session cache per control connection, ECDSA P-256 certificates; every download's SHA-256 checked as it arrives, every upload's on the server after the round\n")
	fmt.Fprintf(w, "cells: median over rounds, then each round's value in order; MB = 10^6 bytes; - = not measured there\n\n")

	ms := r.metrics()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "metric\t")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t", k)
	}
	fmt.Fprintln(tw)
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t", m.name)
		for _, k := range keys {
			v, ok := r.values(k, m)
			switch {
			case b.failed[k] != nil && len(b.results[k]) == 0:
				fmt.Fprintf(tw, "FAILED\t")
			case !ok:
				fmt.Fprintf(tw, "-\t")
			default:
				var each []string
				for _, x := range v {
					each = append(each, strconv.FormatFloat(x, 'f', m.prec, 64))
				}
				fmt.Fprintf(tw, "%.*f (%s)\t", m.prec, median(v), strings.Join(each, " "))
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nTLS the client saw, over all measured rounds:\n")
	for _, c := range b.cols {
		var hs, resumed, clear int
		version, leaf := "", ""
		for _, res := range b.results[c.k] {
			for _, x := range []load.Result{res.small, res.bulk} {
				if x.TLS == nil {
					continue
				}
				hs += x.TLS.DataHandshakes
				resumed += x.TLS.DataResumed
				clear += x.TLS.DataClear
				version, leaf = x.TLS.Version, x.TLS.Leaf
			}
		}
		switch {
		case len(b.results[c.k]) == 0:
			fmt.Fprintf(w, "  %-3s no measured round\n", c.k)
		case version == "":
			fmt.Fprintf(w, "  %-3s plain FTP\n", c.k)
		default:
			fmt.Fprintf(w, "  %-3s control %s, certificate %s; data connections: %d TLS handshakes, %d of them resumed, %d clear\n",
				c.k, version, leaf, hs, resumed, clear)
		}
	}
	r.writeTargets(w)
	if len(b.failed) > 0 {
		fmt.Fprintf(w, "\nFAILED columns:\n")
		for _, c := range b.cols {
			if err := b.failed[c.k]; err != nil {
				fmt.Fprintf(w, "  %-3s %s\n", c.k, indent(failureText(err)))
			}
		}
	}
}

// writeTargets prints the targets with a verdict each. It reports;
// it does not fail the bench.
func (r *tlsReport) writeTargets(w io.Writer) {
	ms := r.metrics()
	pasv, epsv, sess, down, up, idle := ms[0], ms[1], ms[2], ms[3], ms[4], ms[7]
	fmt.Fprintf(w, "\ntargets (verdicts on the ratio of the medians):\n")
	target := func(what string, k, against string, m tlsMetric, min float64) {
		a, b := r.med(k, m), r.med(against, m)
		if a == 0 || b == 0 {
			fmt.Fprintf(w, "  %-58s n/a (%s)\n", what, r.missing(k, against, m))
			return
		}
		x := a / b
		fmt.Fprintf(w, "  %-58s %.2f x (%s %.*f vs %s %.*f; >= %.2f: %s; round by round %.2f x)\n", what, x, k, m.prec, a, against, m.prec, b,
			min, verdictOf(x >= min), r.pairedRatio(k, against, m))
	}
	target("PROT P bulk download, P vs MT", "P", "MT", down, 1.2)
	target("PROT P bulk upload, P vs MT", "P", "MT", up, 1.2)
	target("PROT P bulk download, P vs direct TLS (T)", "P", "T", down, 0.8)
	target("PROT P bulk upload, P vs direct TLS (T)", "P", "T", up, 0.8)
	target("PROT C bulk download, PC vs plain FTP (P0)", "PC", "P0", down, 0.98)
	target("PROT C bulk upload, PC vs plain FTP (P0)", "PC", "P0", up, 0.98)
	if r.has("TC") && r.has("T0") {
		// vsftpd itself sends PROT C data slower when the control
		// connection is TLS: these say how much, and what is pasvgate's.
		fmt.Fprintf(w, "  for reference: the same without pasvgate, and pasvgate's PROT C against direct PROT C:\n")
		target("  PROT C bulk download, TC vs T0", "TC", "T0", down, 0.98)
		target("  PROT C bulk upload, TC vs T0", "TC", "T0", up, 0.98)
		target("  PROT C bulk download, PC vs TC", "PC", "TC", down, 0.98)
		target("  PROT C bulk upload, PC vs TC", "PC", "TC", up, 0.98)
	}
	target("small PROT P transfers/s (PASV), P vs MT", "P", "MT", pasv, 1.2)
	target("small PROT P transfers/s (EPSV), P vs MT", "P", "MT", epsv, 1.2)
	// A session sends no PBSZ or PROT: P's and PC's are the same
	// workload through the same pasvgate.
	sk := "P"
	if r.med("P", sess) == 0 {
		sk = "PC"
	}
	target(fmt.Sprintf("TLS sessions/s, %s vs MT", sk), sk, "MT", sess, 1.2)
	if v := r.med("PC", idle); v != 0 {
		fmt.Fprintf(w, "  %-58s %.1f KiB (<= 64: %s)\n", "idle TLS session through pasvgate (PC, VmRSS growth / N)", v, verdictOf(v <= 64))
	} else {
		fmt.Fprintf(w, "  %-58s n/a (%s)\n", "idle TLS session through pasvgate (PC)", r.missing("PC", "PC", idle))
	}
	if v := r.med("MT", idle); v != 0 {
		fmt.Fprintf(w, "  %-58s %.1f KiB (for comparison: PSS growth of its processes / N)\n", "idle TLS session through mod_proxy (MT)", v)
	}
}

// pairedRatio is the median over rounds of k's value over against's in the
// same round: the two ran within a minute of each other, so this is less
// exposed to the machine's drift than the ratio of the medians. The
// verdicts do not use it.
func (r *tlsReport) pairedRatio(k, against string, m tlsMetric) float64 {
	a, b := r.b.results[k], r.b.results[against]
	var x []float64
	for i := range min(len(a), len(b)) {
		if m.in != nil && (!m.in(a[i]) || !m.in(b[i])) {
			continue
		}
		if u, v := m.get(a[i]), m.get(b[i]); u > 0 && v > 0 {
			x = append(x, u/v)
		}
	}
	return median(x)
}

// missing says why a target has no figure.
func (r *tlsReport) missing(k, against string, m tlsMetric) string {
	var why []string
	for _, c := range slices.Compact([]string{k, against}) {
		if r.med(c, m) != 0 {
			continue
		}
		switch {
		case r.b.failed[c] != nil:
			why = append(why, c+" failed")
		case !r.has(c):
			why = append(why, c+" not in this run")
		default:
			why = append(why, c+" has no figure")
		}
	}
	return strings.Join(why, ", ")
}

func (r *tlsReport) has(k string) bool { return r.b.column(k) != nil }

func verdictOf(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// indent indents every line of s after the first for the failures list.
func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n      ") }
