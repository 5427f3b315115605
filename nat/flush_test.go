package nat

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// gatedFlusher blocks every flush until open is closed or the flush's
// context ends, and records what the backend held on the flushed port when
// each flush began.
type gatedFlusher struct {
	b    *fake.Backend
	open chan struct{}

	mu        sync.Mutex
	started   chan string // ids, as flushes begin
	sharedNow []string    // mappings on the flushed port when its flush began
	cancelled int
}

func newGatedFlusher(b *fake.Backend) *gatedFlusher {
	return &gatedFlusher{b: b, open: make(chan struct{}), started: make(chan string, 16)}
}

func (g *gatedFlusher) FlushFlows(ctx context.Context, m rules.Mapping) (int, error) {
	ms, _ := g.b.List(ctx)
	g.mu.Lock()
	for _, o := range ms {
		if o.Public == m.Public {
			g.sharedNow = append(g.sharedNow, o.ID)
		}
	}
	g.mu.Unlock()
	g.started <- m.ID
	select {
	case <-g.open:
		return 1, nil
	case <-ctx.Done():
		g.mu.Lock()
		g.cancelled++
		g.mu.Unlock()
		return 0, ctx.Err()
	}
}

// waitStarted waits, bounded, for the flush of id to begin.
func (g *gatedFlusher) waitStarted(t *testing.T, id string) {
	t.Helper()
	select {
	case got := <-g.started:
		if got != id {
			t.Fatalf("flush of %s began, want %s", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no flush of %s began", id)
	}
}

func newFlushTable(t *testing.T, ports PortRange) (*Table, *fake.Backend, *gatedFlusher) {
	t.Helper()
	var b fake.Backend
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	g := newGatedFlusher(&b)
	tb, err := New(&b, Config{Ports: ports, ConnectTimeout: time.Minute, Flows: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-g.open:
		default:
			close(g.open)
		}
		_ = tb.Close(context.Background())
	})
	return tb, &b, g
}

// TestRemovalsDoNotWaitForFlush: while one mapping's flush hangs, another
// mapping's rules still come out.
func TestRemovalsDoNotWaitForFlush(t *testing.T) {
	tb, b, g := newFlushTable(t, PortRange{40000, 40009})
	dead, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	done, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	dead.Release(ReasonSessionEnd)
	g.waitStarted(t, dead.ID)
	done.Release(ReasonTransferDone)
	waitLen(t, b, 0) // fails if the removal waits behind the flush
	close(g.open)
	waitStats(t, tb, func(st Stats) bool { return st.FlowsFlushed == 1 && st.PortsBusy == 0 })
}

// TestPortFreedOnlyAfterFlush: the port of a mapping that ended abnormally
// stays out of the pool until its flows are flushed, so that a new mapping
// on it can never meet the old flows, nor lose its own to the old flush.
func TestPortFreedOnlyAfterFlush(t *testing.T) {
	tb, b, g := newFlushTable(t, PortRange{40000, 40000})
	old, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	old.Release(ReasonConnectTimeout)
	g.waitStarted(t, old.ID)
	waitLen(t, b, 0)
	if m, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Open before the old mapping's flush = %v, %v; want ErrExhausted: the port came back before its flows were flushed", m, err)
	}
	if st := tb.Stats(); st.PortsBusy != 1 {
		t.Errorf("ports busy %d during the flush, want 1", st.PortsBusy)
	}
	close(g.open)
	waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 0 })
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatalf("Open after the flush: %v", err)
	}
	if m.Public != old.Public {
		t.Fatalf("new mapping on %v, want the only port %v", m.Public, old.Public)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sharedNow) != 0 {
		t.Errorf("mappings %v held the port while its old flows were flushed", g.sharedNow)
	}
}

// TestCloseDoesNotWaitBehindFlush: a stop removes every rule while a flush
// hangs, and when its own deadline comes, cancels the flush and returns.
func TestCloseDoesNotWaitBehindFlush(t *testing.T) {
	tb, b, g := newFlushTable(t, PortRange{40000, 40009})
	var ms []*Mapping
	for range 3 {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	ms[0].Release(ReasonSessionEnd)
	g.waitStarted(t, ms[0].ID)
	ctx, cancel := context.WithCancel(context.Background())
	closed := make(chan error, 1)
	go func() { closed <- tb.Close(ctx) }()
	waitLen(t, b, 0) // every rule out while the first flush still hangs
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with a flush still running", err)
	default:
	}
	cancel()
	select {
	case err := <-closed:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Close = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after its context ended")
	}
	// The hanging flush saw its context end; the two queued behind it
	// (shutdown is abnormal) find theirs ended before they start.
	tb.workers.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancelled != 3 {
		t.Errorf("%d flushes cancelled, want 3", g.cancelled)
	}
}
