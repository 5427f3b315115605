package main

import (
	"github.com/pasvgate/pasvgate/proxy/pool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports each pool server's state at scrape time: whether
// it is in rotation, its open sessions, its weight, and how often it went
// up, down or drained.
type poolCollector struct {
	pools                         func() []*pool.Pool
	up, sessions, weight, changes *prometheus.Desc
}

func newPoolCollector(pools func() []*pool.Pool) *poolCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pasvgate_upstream_"+name, help, labels, nil)
	}
	return &poolCollector{
		pools:    pools,
		up:       d("up", "1 while the server is in rotation (up), 0 while down or drained.", "pool", "server"),
		sessions: d("sessions", "Sessions open to the server now.", "pool", "server"),
		weight:   d("weight", "The server's weight in its pool (0: drained).", "pool", "server"),
		changes:  d("state_changes_total", "Changes of the server's state, by the state it went into (up, down, drain).", "pool", "server", "state"),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

// Collect implements prometheus.Collector.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.pools() {
		name := p.Config().Name
		for _, st := range p.Status() {
			up := 0.0
			if st.State == pool.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, name, st.Addr)
			ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(st.Sessions), name, st.Addr)
			ch <- prometheus.MustNewConstMetric(c.weight, prometheus.GaugeValue, float64(st.Weight), name, st.Addr)
			for _, state := range []pool.State{pool.Up, pool.Down, pool.Drain} {
				ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(st.Changes[state]), name, st.Addr, state.String())
			}
		}
	}
}
