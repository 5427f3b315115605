package pool

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The bound on health checks with the default settings: a server
// that stops answering is out of rotation, and a recovered one back in,
// each within this. A functional bound, not a benchmark.
const healthBound = 10 * time.Second

// failoverRuns is how many times each failover is measured: the closing
// note quotes the median and maximum of at least five.
const failoverRuns = 5

// TestBlackhole blackholes one server (its traffic dropped inside the
// server namespace: connects hang, as when a host vanishes, unlike a
// refused connect) and lifts it again, failoverRuns times, with
// pasvgate's default health settings. Each time the server must be
// logged down within healthBound, take no session while down, be logged
// up within healthBound of the lift and take sessions again; the metric
// follows. It logs "failover down (blackhole): runs=5 median=... max=..."
// and the same for up.
func TestBlackhole(t *testing.T) {
	t.Parallel()
	p := newPoolLab(t, lab.Options{})
	p.start(t, append(upstreamArgs(), "--balance", "round-robin")...)
	victim := p.servers[2]
	addr := hostOf(victim.Addr)
	// Dropped on the server's side, so the gw's own firewall (pasvgate's
	// rules) is untouched.
	blackhole := func(on bool) {
		t.Helper()
		op := "-D"
		if on {
			op = "-I"
		}
		if _, err := p.l.Exec(t.Context(), p.l.Server, p.l.IPTables, "-w", "5", op, "INPUT", "-d", addr, "-j", "DROP"); err != nil {
			t.Fatal(err)
		}
	}
	var downs, ups []time.Duration
	for run := range failoverRuns {
		out := p.pg.Output()
		nDown := len(stateLines(out, "upstream server down", addr))
		nUp := len(stateLines(out, "upstream server up", addr))

		start := time.Now()
		blackhole(true)
		at, err := p.waitState("upstream server down", addr, nDown, healthBound+5*time.Second)
		if err != nil {
			blackhole(false)
			t.Fatalf("run %d: blackholed %s: %v\n%s", run+1, victim.Kind, err, lastLines(p.pg.Output(), 10))
		}
		downs = append(downs, at.Sub(start))
		p.checkMetric(t, victim, "0")
		// Out of rotation: a round of sessions never reaches it, and none
		// waits on its connect.
		counts, _ := p.checkDownloads(t, p.downloads(t.Context(), 3, 1, []string{lab.ClientAddr}))
		if counts[victim] != 0 {
			t.Errorf("run %d: blackholed %s served %d sessions after it was down", run+1, victim.Kind, counts[victim])
		}

		start = time.Now()
		blackhole(false)
		at, err = p.waitState("upstream server up", addr, nUp, healthBound+5*time.Second)
		if err != nil {
			t.Fatalf("run %d: %s back: %v\n%s", run+1, victim.Kind, err, lastLines(p.pg.Output(), 10))
		}
		ups = append(ups, at.Sub(start))
		p.checkMetric(t, victim, "1")
		// Back in rotation: three round-robin picks over three servers
		// include it.
		counts, _ = p.checkDownloads(t, p.downloads(t.Context(), 3, 1, []string{lab.ClientAddr}))
		if counts[victim] != 1 {
			t.Errorf("run %d: %s back up served %d of 3 round-robin sessions, want 1 (%s)", run+1, victim.Kind, counts[victim], p.countBy(counts))
		}
	}
	t.Logf("failover down (blackhole, default health settings): %s", summary(downs))
	t.Logf("failover up (blackhole lifted, default health settings): %s", summary(ups))
	for i := range downs {
		if downs[i] > healthBound || ups[i] > healthBound {
			t.Errorf("run %d: down after %v, up after %v: want each within %v", i+1, downs[i], ups[i], healthBound)
		}
	}
}

// TestKilledServerTimes stops one server's process (connects refused)
// with no session running, and starts it again, failoverRuns times: the
// time until health checks log it down and, after the restart, up. A
// client never waits for this (a refused connect moves the session on at
// once, see TestPolicies/killed); the figures are for the closing note:
// "failover down (killed): runs=5 median=... max=...".
func TestKilledServerTimes(t *testing.T) {
	t.Parallel()
	p := newPoolLab(t, lab.Options{})
	p.start(t, append(upstreamArgs(), "--balance", "round-robin")...)
	const victim = 2
	addr := members[victim].addr
	var downs, ups []time.Duration
	for run := range failoverRuns {
		out := p.pg.Output()
		nDown := len(stateLines(out, "upstream server down", addr))
		nUp := len(stateLines(out, "upstream server up", addr))

		start := time.Now()
		p.servers[victim].Proc.Stop()
		at, err := p.waitState("upstream server down", addr, nDown, healthBound+5*time.Second)
		if err != nil {
			t.Fatalf("run %d: killed %s: %v\n%s", run+1, members[victim].kind, err, lastLines(p.pg.Output(), 10))
		}
		downs = append(downs, at.Sub(start))

		start = time.Now()
		s, err := p.startServer(t.Context(), victim)
		if err != nil {
			t.Fatal(err)
		}
		p.servers[victim] = s
		at, err = p.waitState("upstream server up", addr, nUp, healthBound+5*time.Second)
		if err != nil {
			t.Fatalf("run %d: %s restarted: %v\n%s", run+1, members[victim].kind, err, lastLines(p.pg.Output(), 10))
		}
		ups = append(ups, at.Sub(start))
	}
	t.Logf("failover down (killed, health checks alone, default settings): %s", summary(downs))
	t.Logf("failover up (restarted, from the start of the restart, default settings): %s", summary(ups))
	for i := range downs {
		if downs[i] > healthBound || ups[i] > healthBound {
			t.Errorf("run %d: down after %v, up after %v: want each within %v", i+1, downs[i], ups[i], healthBound)
		}
	}
	// Back in service after the last restart: its new file comes through.
	counts, _ := p.checkDownloads(t, p.downloads(t.Context(), 3, 1, []string{lab.ClientAddr}))
	if counts[p.servers[victim]] != 1 {
		t.Errorf("%s restarted served %d of 3 round-robin sessions, want 1 (%s)", members[victim].kind, counts[p.servers[victim]], p.countBy(counts))
	}
}

// metrics fetches pasvgate's /metrics from inside the gw namespace.
func (p *poolLab) metrics(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hc := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return p.l.Dial(ctx, p.l.GW, "", addr)
		},
	}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("/metrics: %s", resp.Status)
	}
	return string(b), nil
}

// checkMetric fails t unless pasvgate_upstream_up of srv in the default
// pool is want.
func (p *poolLab) checkMetric(t *testing.T, srv *lab.Server, want string) {
	t.Helper()
	p.checkSeries(t, "pasvgate_upstream_up", srv, want)
}

// checkSeries fails t unless the metric name of srv in the default pool
// is want, or becomes it within a second (the log line that the caller
// waited for may come before the metric is set).
func (p *poolLab) checkSeries(t *testing.T, name string, srv *lab.Server, want string) {
	t.Helper()
	series := fmt.Sprintf(`%s{pool="default",server="%s"}`, name, srv.Addr)
	got := "no such series"
	for range 10 {
		m, err := p.metrics(t.Context())
		if err != nil {
			t.Errorf("metrics: %v", err)
			return
		}
		got = "no such series"
		for _, line := range strings.Split(m, "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				got = v
			}
		}
		if got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("%s: %s, want %s", series, got, want)
}
