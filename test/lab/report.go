package lab

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Grid is a result table for a suite of cells, such as the active-mode,
// IPv6 and sidecar suites: rows named by a few header columns (family,
// server, client, command), one status per operation column with the
// cell's time, and, below the table, why cells did not pass, each reason
// once with the cells it applies to. Its methods are safe for concurrent
// use, so parallel subtests can set their cells.
type Grid struct {
	title string
	head  []string // the row header columns
	cols  []string // the operation columns

	mu    sync.Mutex
	rows  [][]string // in the order declared
	cells map[string]gridCell
}

type gridCell struct {
	status string // one of the Status constants
	why    string
	took   time.Duration
}

// Statuses of a cell. A cell never set prints as "n/a".
const (
	StatusOK   = "ok"
	StatusFail = "FAIL"
	StatusSkip = "skip" // could not run here; the reason says why
	StatusNone = "-"    // does not exist (a client that has no such operation)
)

// NewGrid returns an empty table with the given title, row header columns
// and operation columns.
func NewGrid(title string, head, cols []string) *Grid {
	return &Grid{title: title, head: head, cols: cols, cells: map[string]gridCell{}}
}

func gridKey(row []string, col string) string {
	return strings.Join(row, "/") + "/" + col
}

// Row declares a row, so that the table lists rows in a fixed order
// whatever order parallel cells finish in.
func (g *Grid) Row(row ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rows = append(g.rows, row)
}

// Set records a cell's outcome: its status, why (the failure, the reason
// to skip, or a note), and how long it took.
func (g *Grid) Set(row []string, col, status, why string, took time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cells[gridKey(row, col)] = gridCell{status, why, took}
}

// SetRow records the same outcome for every column of row that has none
// yet: a row whose set-up failed or cannot run.
func (g *Grid) SetRow(row []string, status, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.cols {
		if _, ok := g.cells[gridKey(row, c)]; !ok {
			g.cells[gridKey(row, c)] = gridCell{status: status, why: why}
		}
	}
}

// Print writes the table with the suite's time, the counts, and the
// reasons.
func (g *Grid) Print(w io.Writer, took time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fmt.Fprintf(w, "\n%s (%v)\n", g.title, took.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(append(append([]string{}, g.head...), g.cols...), "\t")+"\t")
	var reasons []string
	cellsOf := map[string][]string{}
	counts := map[string]int{}
	for _, r := range g.rows {
		fmt.Fprint(tw, strings.Join(r, "\t")+"\t")
		for _, c := range g.cols {
			o, ok := g.cells[gridKey(r, c)]
			if !ok {
				o.status = "n/a"
			}
			text := o.status
			if o.status == StatusOK || o.status == StatusFail {
				text = fmt.Sprintf("%s %.1fs", o.status, o.took.Seconds())
			}
			fmt.Fprintf(tw, "%s\t", text)
			if o.status != StatusNone {
				counts[o.status]++
			}
			if o.status == StatusFail || o.status == StatusSkip || o.status == StatusNone && o.why != "" {
				key := o.status + ": " + o.why
				if cellsOf[key] == nil {
					reasons = append(reasons, key)
				}
				cellsOf[key] = append(cellsOf[key], gridKey(r, c))
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintf(w, "cells: %d ok, %d FAIL, %d skip, %d n/a\n", counts[StatusOK], counts[StatusFail], counts[StatusSkip], counts["n/a"])
	for _, key := range reasons {
		cs := cellsOf[key]
		which := strings.Join(cs, " ")
		if len(cs) > 3 {
			which = fmt.Sprintf("%s and %d more", strings.Join(cs[:2], " "), len(cs)-2)
		}
		fmt.Fprintf(w, "  %s\n      in %s\n", key, which)
	}
}

// EnvOr is the environment variable key, or def when it is empty: the
// suites' flags take their defaults from the environment, so that `make
// test` can narrow them without -args.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// SplitList splits a comma-separated flag value, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
