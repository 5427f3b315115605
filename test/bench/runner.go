package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
	"github.com/pasvgate/pasvgate/test/netns"
)

// runner runs one workload through one gateway at a time.
type runner struct {
	l        *lab
	ftpload  string
	files    []string // ftpload's file flags
	progress io.Writer
}

// once installs g, runs ftpload with args in the client namespace, checks
// the path, and removes g again, leaving the gw as it found it: rules at
// the baseline, conntrack empty. The removal and the checks run even when
// the workload failed or ctx ended.
func (r *runner) once(ctx context.Context, g gateway, verbose bool, args ...string) (load.Result, error) {
	var res load.Result
	err := g.up(ctx, verbose)
	if err == nil {
		if ca, ok := g.(clientArgs); ok {
			args = append(ca.clientArgs(), args...)
		}
		res, err = r.load(ctx, r.l.client, g.target(), args...)
	}
	if err == nil {
		err = g.check(ctx, res)
	}
	if err != nil {
		if lg, ok := g.(interface{ logTail() string }); ok {
			err = fmt.Errorf("%w\n%s's output:\n%s", err, g.key(), lg.logTail())
		}
	}
	return res, errors.Join(err, r.finish(ctx, g))
}

// finish takes g down and checks that it left nothing behind.
func (r *runner) finish(ctx context.Context, g gateway) error {
	// Clean-up must happen even after a Ctrl-C ended ctx.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	err := g.down(ctx)
	if err == nil {
		err = r.l.checkClean(ctx, g.key()+" ("+g.title()+")")
	}
	return errors.Join(err, r.l.flushConntrack())
}

// load runs ftpload in ns against target and decodes its result.
func (r *runner) load(ctx context.Context, ns *netns.NS, target netip.AddrPort, args ...string) (load.Result, error) {
	var res load.Result
	a := append([]string{"-addr", target.String(), "-deadline", "5m"}, r.files...)
	out, err := runLimit(ctx, 6*time.Minute, ns, "", r.ftpload, append(a, args...)...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return res, fmt.Errorf("reading ftpload's result %q: %w", tail(out, 500), err)
	}
	return res, nil
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// roundLine is the progress line's tail for one round: what was measured.
func roundLine(res load.Result) string {
	var b strings.Builder
	add := func(format string, v float64) {
		if v != 0 {
			fmt.Fprintf(&b, format, v)
		}
	}
	add("  noop %.1fµs", res.NoopUS)
	add("  pasv %.0f/s", res.PASVPerSec)
	add("  epsv %.0f/s", res.EPSVPerSec)
	add("  sessions %.0f/s", res.SessionsPerSec)
	add("  down %.0f MB/s", median(res.DownMBps))
	add("  up %.0f MB/s", median(res.UpMBps))
	return b.String()
}

// cpuProfile writes to file a CPU profile of pasvgate in g while the client
// downloads small files back to back (PASV, then EPSV), the workload whose
// rate the rule calls limit. pasvgate serves the profile on its --metrics
// address, which only the gw namespace can reach.
func (r *runner) cpuProfile(ctx context.Context, g *pasvgateGW, file string) error {
	return r.pprof(ctx, g, "profile", 5, file)
}

// trace writes to file a Go execution trace of pasvgate in g during the
// same workload as cpuProfile: where its goroutines wait, off the CPU
// (`go tool trace -pprof=sched|syscall|sync|net FILE`).
func (r *runner) trace(ctx context.Context, g *pasvgateGW, file string) error {
	return r.pprof(ctx, g, "trace", 2, file)
}

// pprof fetches /debug/pprof/KIND?seconds=SECONDS from pasvgate in g into
// file while the client downloads small files back to back.
func (r *runner) pprof(ctx context.Context, g *pasvgateGW, kind string, seconds int, file string) error {
	const metrics = "127.0.0.1:9121"
	g.extra = []string{"--metrics", metrics, "--debug-pprof"}
	defer func() { g.extra = nil }()
	if err := g.up(ctx, false); err != nil {
		return errors.Join(err, r.finish(ctx, g))
	}
	client := &http.Client{
		Timeout: 2 * time.Duration(seconds) * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return r.l.gw.Dial(ctx, network, "", addr)
		}},
	}
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", metrics, kind, seconds))
		if err != nil {
			got <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			got <- fmt.Errorf("profile: %s", resp.Status)
			return
		}
		f, err := os.Create(file)
		if err != nil {
			got <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		got <- errors.Join(err, f.Close())
	}()
	// Enough downloads to outlast the profile: about 1,000 a second.
	_, err := r.load(ctx, r.l.client, g.target(), "-gets", "5000")
	if err != nil {
		err = fmt.Errorf("%w\n%s's output:\n%s", err, g.key(), tail(g.logTail(), 4000))
	}
	return errors.Join(err, <-got, r.finish(ctx, g))
}
