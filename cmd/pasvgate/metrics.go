package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	httppprof "net/http/pprof"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// collector turns the proxy's and the mapping table's counters into
// Prometheus metrics at scrape time, so that neither package knows about
// Prometheus and nothing is counted twice.
type collector struct {
	proxy *proxy.Server
	table *nat.Table

	sessionsActive, sessionsTotal, sessionsRefused, sessionsEnded *prometheus.Desc
	refusals, rewrites, controlBytes                              *prometheus.Desc
	tlsHandshakes, tlsFailures, transfers, relayedBytes           *prometheus.Desc
	mappingsActive, mappingsOpened, mappingsClosed                *prometheus.Desc
	installFailed, exhausted, removeFailed, removeRetries         *prometheus.Desc
	flowsFlushed                                                  *prometheus.Desc
	portsBusy, portsTotal                                         *prometheus.Desc
}

func newCollector(p *proxy.Server, t *nat.Table) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pasvgate_"+name, help, labels, nil)
	}
	return &collector{
		proxy:           p,
		table:           t,
		sessionsActive:  d("sessions_active", "Control sessions open now."),
		sessionsTotal:   d("sessions_total", "Control sessions admitted."),
		sessionsRefused: d("sessions_refused_total", "Control connections refused before relaying, by reason.", "reason"),
		sessionsEnded:   d("sessions_ended_total", "Control sessions ended, by how they ended.", "reason"),
		refusals:        d("refusals_total", "Commands and replies refused, and limits enforced, by reason.", "reason"),
		rewrites:        d("rewrites_total", "Control lines rewritten, by kind.", "kind"),
		controlBytes:    d("control_bytes_total", "Control-channel bytes relayed, by direction.", "direction"),
		tlsHandshakes:   d("tls_handshakes_total", "TLS handshakes completed on the control channel, by leg (client, server).", "leg"),
		tlsFailures:     d("tls_failures_total", "TLS upgrades of the control channel, and handshakes of protected data connections, that failed, by reason.", "reason"),
		transfers:       d("transfers_total", "Transfers whose final reply has come, by the path their data took: kernel (plain FTP, PROT C) or relay (PROT P).", "path"),
		relayedBytes:    d("relayed_bytes_total", "Data bytes pasvgate relayed itself (PROT P), both directions."),
		mappingsActive:  d("mappings_active", "Data mappings installed now."),
		mappingsOpened:  d("mappings_opened_total", "Data mappings installed."),
		mappingsClosed:  d("mappings_closed_total", "Data mappings removed, by reason.", "reason"),
		installFailed:   d("mapping_install_failures_total", "Mapping installs that failed (the client got 425)."),
		exhausted:       d("port_range_exhausted_total", "Mappings refused because the data-port range was full."),
		removeFailed:    d("mapping_remove_failures_total", "Mapping removals given up after their last retry (their rules may be left until the next start; their ports stay out of the pool)."),
		removeRetries:   d("mapping_remove_retries_total", "Retries of failed mapping removals."),
		flowsFlushed:    d("conntrack_flows_flushed_total", "Conntrack entries deleted after abnormal ends."),
		portsBusy:       d("data_ports_in_use", "Data ports out of the pool: mapped, being removed or flushed, or held by a removal given up (every route's range together)."),
		portsTotal:      d("data_ports", "Size of the --data-ports range (routes with their own range not counted)."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	k := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	ps := c.proxy.Stats()
	g(c.sessionsActive, float64(ps.SessionsActive))
	k(c.sessionsTotal, ps.SessionsTotal)
	for r, v := range ps.SessionsRefused {
		k(c.sessionsRefused, v, r)
	}
	for r, v := range ps.SessionsEnded {
		k(c.sessionsEnded, v, r)
	}
	for r, v := range ps.Refused {
		k(c.refusals, v, r)
	}
	for r, v := range ps.Rewrites {
		k(c.rewrites, v, r)
	}
	for l, v := range ps.TLSHandshakes {
		k(c.tlsHandshakes, v, l)
	}
	for r, v := range ps.TLSFailures {
		k(c.tlsFailures, v, r)
	}
	for p, v := range ps.Transfers {
		k(c.transfers, v, p)
	}
	k(c.relayedBytes, ps.BytesRelayed)
	k(c.controlBytes, ps.BytesFromClient, "from_client")
	k(c.controlBytes, ps.BytesFromServer, "from_server")
	ns := c.table.Stats()
	g(c.mappingsActive, float64(ns.Active))
	k(c.mappingsOpened, ns.Opened)
	for r, v := range ns.Closed {
		k(c.mappingsClosed, v, r)
	}
	k(c.installFailed, ns.InstallFailed)
	k(c.exhausted, ns.Exhausted)
	k(c.removeFailed, ns.RemoveFailed)
	k(c.removeRetries, ns.RemoveRetries)
	k(c.flowsFlushed, ns.FlowsFlushed)
	g(c.portsBusy, float64(ns.PortsBusy))
	g(c.portsTotal, float64(ns.PortsTotal))
}

// installLatency is the rule install latency histogram: the part of a
// client's PASV round trip that the kernel backend costs.
func installLatency() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pasvgate_mapping_install_seconds",
		Help:    "Time to install one data mapping in the kernel, by result.",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 5},
	}, []string{"result"})
}

// serveMetrics serves /metrics, /healthz and, when sessions is not nil,
// /sessions on addr until the returned stop is called (it shuts the
// server down and waits for it), and with pprof Go's profiles under
// /debug/pprof/ too. It returns once the listener is open, so a bad
// address fails start-up.
func serveMetrics(addr string, reg *prometheus.Registry, healthy func() error, sessions func() []proxy.SessionInfo, pprof bool, log *slog.Logger) (stop func(), err error) {
	spec, err := parseListen(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	lns, err := openListeners(context.Background(), spec, nil, log)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if sessions != nil {
		mux.Handle("GET /sessions", sessionsHandler(sessions))
	}
	if pprof {
		// Off by default: a profile shows addresses and timings of every
		// session, and a CPU profile costs while it runs.
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server failed", "addr", ln.Addr(), "err", err)
			}
		}()
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		wg.Wait()
	}, nil
}

// sessionsHandler serves the live view (proxy.Server.Sessions) as a JSON
// array, oldest session first; `pasvgate sessions` reads it. Every field
// a peer chose is a JSON string, so the encoder escapes whatever it
// holds.
func sessionsHandler(sessions func() []proxy.SessionInfo) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		list := sessions()
		if list == nil {
			list = []proxy.SessionInfo{} // "[]", not "null", when none is open
		}
		b, err := json.Marshal(list)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		// A view of now: no proxy or client may serve it again later.
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(append(b, '\n'))
	})
}
