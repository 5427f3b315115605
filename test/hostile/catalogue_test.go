package hostile

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// entry is one line of the catalogue: a hostile input or a fault, what the
// peer must get, and what is checked afterwards besides the three
// invariants every entry has (no rule left once the session ends, VmRSS
// under rssBound, the canary's transfers byte-exact).
type entry struct {
	id    string
	side  string // client, server or fault
	input string // the input or the fault
	want  string // what the peer must get
	inv   string // an invariant of the entry's own, if any
	// ref names an existing test that also proves the entry; when run is
	// nil the entry is that test's, and the table says so.
	ref string
	// fault entries, and those that restart pasvgate with other flags,
	// may break the canary while they last; it must work again once the
	// entry is over.
	fault bool
	// script, for server entries, is the hostile server's part.
	script script
	// run plays the entry and returns what the peer got, or why the entry
	// failed.
	run func(h *harness, e *env) (got string, err error)
}

// env is what an entry runs with.
type env struct {
	from string // the entry's own client address
	name string // its script's selector name
}

// outcome is an entry's row in the table.
type outcome struct {
	got, result, why string
	rss              int64
	took             time.Duration
}

// catalogue is every entry, in the order they run and print.
func catalogue() []entry {
	var all []entry
	all = append(all, clientEntries()...)
	all = append(all, serverEntries()...)
	all = append(all, faultEntries()...)
	all = append(all, itemEntries()...)
	return all
}

// TestCatalogue runs every hostile input and fault against the real
// pasvgate binary in a netns lab, and prints the table.
func TestCatalogue(t *testing.T) {
	t0 := time.Now()
	h := newHarness(t)
	h.startPasvgate(nil, h.baseArgs()...)
	baseline := h.proc().rss()
	cn := h.startCanary()
	stopped := false
	defer func() {
		if !stopped {
			cn.end()
		}
	}()

	all := catalogue()
	outs := make([]outcome, len(all))
	for i, e := range all {
		if e.run == nil {
			outs[i] = outcome{got: "-", result: "ref", why: "proved by " + e.ref}
			if strings.HasPrefix(e.ref, "none") {
				outs[i] = outcome{got: "-", result: "MISSING", why: "no test proves it yet"}
			}
			continue
		}
		t.Run(e.id, func(t *testing.T) {
			outs[i] = runEntry(t, h, cn, i, e)
		})
	}
	cn.end()
	stopped = true
	printTable(os.Stdout, all, outs, baseline, time.Since(t0))
}

// runEntry runs one entry and checks its invariants.
func runEntry(t *testing.T, h *harness, cn *canary, i int, e entry) outcome {
	h.hs.reset()
	if p := h.proc(); p == nil || p.exited() {
		h.startPasvgate(nil, h.baseArgs()...)
	}
	ev := &env{from: entryAddr(i), name: strings.ToLower(e.id)}
	if e.script != nil {
		h.hs.add(ev.name, e.script)
	}
	start := time.Now()
	smp := h.sample()
	got, err := e.run(h, ev)
	t.Logf("%s ran in %v", e.id, time.Since(start).Round(time.Millisecond))
	var why []string
	if err != nil {
		why = append(why, err.Error())
	}
	// Invariants.
	t1 := time.Now()
	if err := h.noRules(); err != nil {
		why = append(why, err.Error())
	}
	t.Logf("rules list empty after %v", time.Since(t1).Round(time.Millisecond))
	var tail string
	if p := h.proc(); p != nil {
		tail = lastLines(p.output(), 15)
	}
	if !e.fault {
		if _, err := cn.since(start); err != nil {
			why = append(why, "canary during the entry: "+err.Error())
		}
	}
	// A fault may leave pasvgate running with other flags: the canary
	// after the entry, and the next entry, meet the catalogue's own.
	h.mu.Lock()
	changed := strings.Join(h.pgArgs, " ") != strings.Join(h.baseArgs(), " ")
	h.mu.Unlock()
	if changed {
		h.startPasvgate(nil, h.baseArgs()...)
	}
	if err := h.download(canaryAddr, nil); err != nil {
		why = append(why, "canary after the entry: "+err.Error())
	}
	smp.end()
	if smp.peakRSS > rssBound {
		why = append(why, fmt.Sprintf("VmRSS %d MiB over the %d MiB bound", smp.peakRSS>>20, rssBound>>20))
		// The Go runtime keeps memory it once grew to: the next entry
		// starts from a fresh process, so that each is charged only with
		// its own.
		h.startPasvgate(nil, h.baseArgs()...)
	}
	o := outcome{got: got, result: "ok", rss: smp.peakRSS, took: time.Since(start)}
	if len(why) > 0 {
		o.result = "FAIL"
		o.why = strings.Join(why, "; ")
		t.Errorf("%s (%s): %s", e.id, e.input, o.why)
		t.Logf("pasvgate's last lines:\n%s", tail)
	}
	return o
}

// printTable writes the catalogue's table: input or fault, what the peer
// must get and got, the invariants, the result; then why entries failed,
// and the RSS under the worst inputs.
func printTable(w io.Writer, all []entry, outs []outcome, baseline int64, took time.Duration) {
	fmt.Fprintf(w, "\nhostile and fault catalogue (%v; RSS bound %d MiB, at start %.1f MiB)\n",
		took.Round(100*time.Millisecond), rssBound>>20, float64(baseline)/(1<<20))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "id\tside\tinput or fault\tpeer must get\tpeer got\tinvariant\tRSS MiB\tresult\t")
	counts := map[string]int{}
	for i, e := range all {
		o := outs[i]
		inv := "no rule, RSS, canary"
		if e.side == "item" {
			inv = "-"
		}
		if e.inv != "" {
			inv += "; " + e.inv
		}
		rss := "-"
		if o.rss > 0 {
			rss = fmt.Sprintf("%.1f", float64(o.rss)/(1<<20))
		}
		res := o.result
		if res == "" {
			res = "n/a"
		}
		if o.took > 0 {
			res = fmt.Sprintf("%s %.1fs", res, o.took.Seconds())
		}
		counts[o.result]++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", e.id, e.side, e.input, e.want, cut(o.got, 40), inv, rss, res)
	}
	tw.Flush()
	fmt.Fprintf(w, "entries: %d ok, %d FAIL, %d by reference, %d MISSING, %d not run\n",
		counts["ok"], counts["FAIL"], counts["ref"], counts["MISSING"], counts[""])
	for i, e := range all {
		if o := outs[i]; o.result == "FAIL" || o.result == "ref" || o.result == "MISSING" {
			fmt.Fprintf(w, "  %s %s: %s\n", e.id, o.result, o.why)
		}
	}
	idx := make([]int, 0, len(all))
	for i := range all {
		if outs[i].rss > 0 {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return outs[idx[a]].rss > outs[idx[b]].rss })
	fmt.Fprintf(w, "pasvgate VmRSS under the worst inputs (peak while the entry ran):\n")
	for _, i := range idx[:min(5, len(idx))] {
		fmt.Fprintf(w, "  %.1f MiB  %s %s\n", float64(outs[i].rss)/(1<<20), all[i].id, all[i].input)
	}
}

func cut(s string, n int) string {
	s = printable(s)
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
