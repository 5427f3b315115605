package nat

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

func req() Request {
	return Request{
		Session: "s1",
		Source:  netip.MustParseAddr("203.0.113.10"),
		Public:  netip.MustParseAddr("203.0.113.2"),
		Target:  netip.MustParseAddrPort("192.0.2.10:30000"),
		SNAT:    netip.MustParseAddr("192.0.2.1"),
	}
}

func newTable(t *testing.T, ports string, timeout time.Duration) (*Table, *fake.Backend) {
	t.Helper()
	var b fake.Backend
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	pr, err := ParsePortRange(ports)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := New(&b, Config{Ports: pr, ConnectTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	return tb, &b
}

// waitLen waits for the fake to hold n mappings, without polling.
func waitLen(t *testing.T, b *fake.Backend, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		ch := b.Changed()
		if b.Len() == n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("backend holds %d mappings, want %d", b.Len(), n)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	good := map[string]PortRange{"40000-40999": {40000, 40999}, "21": {21, 21}, " 1 - 65535 ": {1, 65535}}
	for in, want := range good {
		if got, err := ParsePortRange(in); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0-10", "10-5", "1-65536", "a-b", "-5", "5-", "1--2", "40000-40999-1"} {
		if got, err := ParsePortRange(in); err == nil {
			t.Errorf("ParsePortRange(%q) = %v, want an error", in, got)
		}
	}
}

func TestOpenInstallsAndReleaseRemoves(t *testing.T) {
	tb, b := newTable(t, "40000-40009", time.Minute)
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if p := m.Public.Port(); p < 40000 || p > 40009 {
		t.Fatalf("public port %d outside the range", p)
	}
	if b.Len() != 1 {
		t.Fatalf("after Open the backend holds %d mappings, want 1", b.Len())
	}
	if !m.Claim() {
		t.Fatal("Claim of a fresh mapping failed")
	}
	m.Release(ReasonTransferDone)
	m.Release(ReasonSessionEnd) // harmless
	waitLen(t, b, 0)
	if got := b.Count("remove"); got != 1 {
		t.Fatalf("removals = %d, want exactly 1", got)
	}
	// The backend lets go of the mapping just before the table counts it.
	if st := waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 0 }); st.Closed[ReasonTransferDone] != 1 || st.Closed[ReasonSessionEnd] != 0 {
		t.Fatalf("stats = %+v, want one transfer-done close", st)
	}
}

func TestPortsNeverDoubleMappedAndExhaustion(t *testing.T) {
	tb, b := newTable(t, "40000-40015", time.Minute)
	seen := map[uint16]bool{}
	var ms []*Mapping
	for i := 0; i < 16; i++ {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		if seen[m.Public.Port()] {
			t.Fatalf("port %d handed out twice", m.Public.Port())
		}
		seen[m.Public.Port()] = true
		ms = append(ms, m)
	}
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Open on a full range = %v, want ErrExhausted", err)
	}
	if tb.Stats().Exhausted != 1 {
		t.Fatalf("exhaustion not counted: %+v", tb.Stats())
	}
	ms[3].Release(ReasonReplaced)
	waitLen(t, b, 15)
	// The port comes back just after the backend lets go of the mapping.
	waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 15 })
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatalf("Open after a release: %v", err)
	}
	if m.Public.Port() != ms[3].Public.Port() {
		t.Fatalf("got port %d, want the only free one %d", m.Public.Port(), ms[3].Public.Port())
	}
}

func TestPortsAreRandom(t *testing.T) {
	tb, _ := newTable(t, "40000-49999", time.Minute)
	first := map[uint16]bool{}
	for i := 0; i < 8; i++ {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		first[m.Public.Port()] = true
	}
	// Sequential allocation would give 40000..40007.
	seq := 0
	for p := uint16(40000); p < 40008; p++ {
		if first[p] {
			seq++
		}
	}
	if seq == 8 {
		t.Fatal("ports were allocated sequentially from the bottom of the range")
	}
}

func TestInstallFailureLeavesNothing(t *testing.T) {
	tb, b := newTable(t, "40000-40000", time.Minute)
	b.FailInstall(func(rules.Mapping) error { return fake.ErrInjected })
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("Open = %v, want the backend's error", err)
	}
	b.FailInstall(nil)
	if b.Len() != 0 {
		t.Fatal("a failed install left a mapping")
	}
	// The single port is free again.
	if _, err := tb.Open(context.Background(), req()); err != nil {
		t.Fatalf("Open after a failed install: %v", err)
	}
}

func TestConnectTimeout(t *testing.T) {
	tb, b := newTable(t, "40000-40009", 50*time.Millisecond)
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	waitLen(t, b, 0)
	if m.Claim() {
		t.Fatal("Claim succeeded after the connect timeout released the mapping")
	}
	if st := waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 0 }); st.Closed[ReasonConnectTimeout] != 1 {
		t.Fatalf("stats = %+v, want a connect-timeout close", st)
	}
	// A claimed mapping outlives the timeout.
	m2, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Claim() {
		t.Fatal("Claim failed")
	}
	time.Sleep(150 * time.Millisecond)
	if b.Len() != 1 {
		t.Fatal("the connect timeout released a claimed mapping")
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	var b fake.Backend
	_ = b.Setup(context.Background())
	tb, err := New(&b, Config{Ports: PortRange{40000, 40099}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := tb.Open(context.Background(), req()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 {
		t.Fatalf("%d mappings left after Close", b.Len())
	}
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close = %v, want ErrClosed", err)
	}
}

// flowRecorder records FlushFlows calls.
type flowRecorder struct {
	mu  sync.Mutex
	ids []string
}

func (f *flowRecorder) FlushFlows(_ context.Context, m rules.Mapping) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, m.ID)
	return 1, nil
}

func TestFlowsFlushedOnlyAfterAbnormalEnds(t *testing.T) {
	var b fake.Backend
	_ = b.Setup(context.Background())
	rec := &flowRecorder{}
	var observed int
	tb, err := New(&b, Config{Ports: PortRange{40000, 40099}, Flows: rec,
		ObserveInstall: func(time.Duration, error) { observed++ }})
	if err != nil {
		t.Fatal(err)
	}
	reasons := []string{ReasonTransferDone, ReasonReplaced, ReasonSessionEnd, ReasonConnectTimeout}
	var abnormalIDs []string
	for _, r := range reasons {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		if abnormal(r) {
			abnormalIDs = append(abnormalIDs, m.ID)
		}
		m.Release(r)
	}
	if err := tb.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.ids, abnormalIDs) {
		t.Fatalf("flows flushed for %v, want exactly the abnormal ends %v", rec.ids, abnormalIDs)
	}
	if observed != 4 || tb.Stats().FlowsFlushed != 2 {
		t.Fatalf("observed %d installs, stats %+v", observed, tb.Stats())
	}
}

// recordHandler keeps the log records of one message.
type recordHandler struct {
	msg string
	ch  chan slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.ch <- r
	}
	return nil
}

// TestClosedAge: "mapping closed" logs the mapping's age, to the
// millisecond, whatever the fraction of a second it was opened at. The
// mapping is opened late in a second, when truncating its creation time
// to the second would add at least 0.7 s.
func TestClosedAge(t *testing.T) {
	var b fake.Backend
	_ = b.Setup(context.Background())
	h := &recordHandler{msg: "mapping closed", ch: make(chan slog.Record, 1)}
	tb, err := New(&b, Config{Ports: PortRange{40000, 40009}, Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	if frac := time.Duration(time.Now().Nanosecond()); frac < 700*time.Millisecond {
		time.Sleep(700*time.Millisecond - frac)
	}
	before := time.Now()
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	const held = 50 * time.Millisecond
	time.Sleep(held)
	m.Release(ReasonTransferDone)
	var r slog.Record
	select {
	case r = <-h.ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no mapping closed log line")
	}
	elapsed := time.Since(before)
	var age int64 = -1
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "age_ms" {
			age = a.Value.Int64()
		}
		return true
	})
	if age < held.Milliseconds() || age > elapsed.Milliseconds() {
		t.Errorf("age_ms = %d, want between %d (held) and %d (measured around Open and the log line)", age, held.Milliseconds(), elapsed.Milliseconds())
	}
}

// TestRelayPorts: a relay's port is drawn and counted like a mapping's,
// but nothing reaches the kernel; its release (or its connect timeout)
// closes Done and returns the port at once.
func TestRelayPorts(t *testing.T) {
	tb, b := newTable(t, "40000-40000", 50*time.Millisecond)
	r := req()
	r.Relay = true
	m, err := tb.Open(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Relay() || b.Len() != 0 {
		t.Fatalf("relay %v, %d mappings installed: want a relay and none", m.Relay(), b.Len())
	}
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("a second port from a range of one: %v, want ErrExhausted", err)
	}
	if !m.Claim() {
		t.Fatal("Claim failed")
	}
	m.Release(ReasonTransferDone)
	select {
	case <-m.Done():
	default:
		t.Fatal("Done is open after the release")
	}
	if st := tb.Stats(); st.PortsBusy != 0 || st.Active != 0 || st.Closed[ReasonTransferDone] != 1 {
		t.Fatalf("after the release: %+v", st)
	}
	m, err = tb.Open(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("an unclaimed relay port outlived its connect timeout")
	}
	if st := tb.Stats(); st.PortsBusy != 0 || st.Closed[ReasonConnectTimeout] != 1 {
		t.Fatalf("after the timeout: %+v", st)
	}
}

// TestRequestPorts: a request with its own range (a route's) draws from
// it alone, is exhausted on its own, and leaves the table's range to
// the others.
func TestRequestPorts(t *testing.T) {
	tb, _ := newTable(t, "40000-40003", time.Minute)
	own := PortRange{Low: 41000, High: 41001}
	for i := 0; i < 2; i++ {
		r := req()
		r.Ports = own
		m, err := tb.Open(context.Background(), r)
		if err != nil {
			t.Fatalf("Open %d of the route's range: %v", i, err)
		}
		if p := m.Public.Port(); p < own.Low || p > own.High {
			t.Fatalf("port %d outside the request's range %v", p, own)
		}
	}
	r := req()
	r.Ports = own
	if _, err := tb.Open(context.Background(), r); !errors.Is(err, ErrExhausted) {
		t.Fatalf("a third Open of a two-port range = %v, want ErrExhausted", err)
	}
	for i := 0; i < 4; i++ {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatalf("Open %d of the table's range, with the route's full: %v", i, err)
		}
		if p := m.Public.Port(); p < 40000 || p > 40003 {
			t.Fatalf("port %d outside the table's range", p)
		}
	}
}
