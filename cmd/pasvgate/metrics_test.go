package main

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// TestMetricsRemoveRetries: a removal that fails twice, then succeeds,
// shows on /metrics as two retries and no failure.
func TestMetricsRemoveRetries(t *testing.T) {
	var b fake.Backend
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	table, err := nat.New(&b, nat.Config{Ports: nat.PortRange{Low: 40000, High: 40009},
		RemoveBackoff: time.Millisecond, RemoveBackoffMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close(context.Background())
	var mu sync.Mutex
	fails := 2
	b.FailRemove(func(rules.Mapping) error {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return fake.ErrInjected
		}
		return nil
	})
	m, err := table.Open(context.Background(), nat.Request{Session: "s1",
		Source: netip.MustParseAddr("203.0.113.10"), Public: netip.MustParseAddr("203.0.113.2"),
		Target: netip.MustParseAddrPort("192.0.2.10:30000")})
	if err != nil {
		t.Fatal(err)
	}
	m.Release(nat.ReasonTransferDone)
	for deadline := time.Now().Add(5 * time.Second); table.Stats().PortsBusy != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("removal never done: %+v", table.Stats())
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(&proxy.Server{}, table))
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{"\npasvgate_mapping_remove_retries_total 2\n", "\npasvgate_mapping_remove_failures_total 0\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
}
