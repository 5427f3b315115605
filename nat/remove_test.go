package nat

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// failFirst makes the fake's removals fail n times, recording when each
// attempt came.
type failFirst struct {
	mu       sync.Mutex
	n        int
	attempts []time.Time
}

func (f *failFirst) remove(rules.Mapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts = append(f.attempts, time.Now())
	if len(f.attempts) <= f.n {
		return fake.ErrInjected
	}
	return nil
}

func (f *failFirst) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.attempts...)
}

// waitStats waits, bounded, for the table's stats to satisfy ok.
func waitStats(t *testing.T, tb *Table, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := tb.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never got there: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}

func newRetryTable(t *testing.T, retries int) (*Table, *fake.Backend) {
	t.Helper()
	var b fake.Backend
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	tb, err := New(&b, Config{Ports: PortRange{40000, 40000}, ConnectTimeout: time.Minute,
		RemoveRetries: retries, RemoveBackoff: 10 * time.Millisecond, RemoveBackoffMax: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	return tb, &b
}

// TestRemoveRetried: a removal that fails three times is tried again after
// 10, 20 and 40 ms, and then succeeds; until then its port, the only one,
// stays out of the pool; the retries are counted and nothing is given up.
func TestRemoveRetried(t *testing.T) {
	tb, b := newRetryTable(t, 6)
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	ff := &failFirst{n: 3}
	b.FailRemove(ff.remove)
	m.Release(ReasonTransferDone)
	waitStats(t, tb, func(st Stats) bool { return st.RemoveRetries >= 1 })
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Open while the removal waits for its retry = %v, want ErrExhausted: the port was handed out with its rules still in", err)
	}
	waitLen(t, b, 0)
	st := waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 0 })
	if st.RemoveRetries != 3 || st.RemoveFailed != 0 || st.Closed[ReasonTransferDone] != 1 || st.Active != 0 {
		t.Errorf("stats = %+v, want 3 retries, no failure, one transfer-done close", st)
	}
	at := ff.times()
	if len(at) != 4 {
		t.Fatalf("%d removal attempts, want 4", len(at))
	}
	for i, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond} {
		if gap := at[i+1].Sub(at[i]); gap < want {
			t.Errorf("retry %d came %v after the failure, want at least %v", i+1, gap, want)
		}
	}
	if _, err := tb.Open(context.Background(), req()); err != nil {
		t.Fatalf("Open once the rules are gone: %v", err)
	}
}

// TestRemoveGivesUp: a removal that keeps failing is tried 1+2 times,
// then given up and counted; its port stays out of the pool for good.
func TestRemoveGivesUp(t *testing.T) {
	tb, b := newRetryTable(t, 2)
	m, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	ff := &failFirst{n: 1 << 30}
	b.FailRemove(ff.remove)
	m.Release(ReasonTransferDone)
	st := waitStats(t, tb, func(st Stats) bool { return st.RemoveFailed > 0 })
	if st.RemoveFailed != 1 || st.RemoveRetries != 2 || len(ff.times()) != 3 || st.Active != 0 {
		t.Errorf("stats = %+v after %d attempts; want 3 attempts, 2 retries, 1 given up", st, len(ff.times()))
	}
	if _, err := tb.Open(context.Background(), req()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Open = %v: the port of a mapping whose removal failed was handed out again", err)
	}
}

// TestCloseCutsRetryShort: Close does not wait out a retry's backoff: it
// tries at once, and gives up on a failure instead of waiting again.
func TestCloseCutsRetryShort(t *testing.T) {
	var b fake.Backend
	_ = b.Setup(context.Background())
	tb, err := New(&b, Config{Ports: PortRange{40000, 40009}, RemoveBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	failing, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	healing, err := tb.Open(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	healed := false
	b.FailRemove(func(m rules.Mapping) error {
		mu.Lock()
		defer mu.Unlock()
		if m.ID == failing.ID || !healed {
			return fake.ErrInjected
		}
		return nil
	})
	failing.Release(ReasonTransferDone)
	healing.Release(ReasonTransferDone)
	waitStats(t, tb, func(st Stats) bool { return st.RemoveRetries == 2 })
	mu.Lock()
	healed = true
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tb.Close(ctx); err != nil {
		t.Fatalf("Close = %v, want it done without waiting an hour", err)
	}
	if st := tb.Stats(); st.RemoveFailed != 1 || b.Len() != 1 {
		t.Errorf("after Close: stats %+v, %d mappings left; want the healed one removed and the failing one given up", st, b.Len())
	}
}

func TestBackoffSchedule(t *testing.T) {
	tb, _ := newTable(t, "40000-40000", time.Minute)
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, tb.backoffFor(n))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("default schedule %v, want %v", got, want)
		}
	}
	if tb.cfg.RemoveRetries != 6 {
		t.Errorf("default retries %d, want 6", tb.cfg.RemoveRetries)
	}
}

// TestRemoveBatched: mappings released while a removal is under way go
// to the backend together, in one RemoveBatch, in release order; one that
// fails in it is retried on its own, and the others' ports are free.
func TestRemoveBatched(t *testing.T) {
	var b fake.Backend
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	tb, err := New(&b, Config{Ports: PortRange{40000, 40009}, ConnectTimeout: time.Minute,
		RemoveRetries: 3, RemoveBackoff: 10 * time.Millisecond, RemoveBackoffMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	var ms []*Mapping
	for range 4 {
		m, err := tb.Open(context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	// The first removal blocks in the backend until the other three are
	// queued behind it; the third mapping's first attempt fails.
	entered, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	failedOnce := false
	b.FailRemove(func(m rules.Mapping) error {
		if m.ID == ms[0].ID {
			once.Do(func() { close(entered); <-unblock })
		}
		mu.Lock()
		defer mu.Unlock()
		if m.ID == ms[2].ID && !failedOnce {
			failedOnce = true
			return fake.ErrInjected
		}
		return nil
	})
	ms[0].Release(ReasonTransferDone)
	<-entered
	for _, m := range ms[1:] {
		m.Release(ReasonTransferDone)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		tb.mu.Lock()
		n := len(tb.queue)
		tb.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mappings queued for removal, want 3", n)
		}
	}
	close(unblock)
	waitLen(t, &b, 0)
	st := waitStats(t, tb, func(st Stats) bool { return st.PortsBusy == 0 })
	if st.RemoveRetries != 1 || st.Closed[ReasonTransferDone] != 4 {
		t.Errorf("stats = %+v, want one retry and 4 transfer-done closes", st)
	}
	if got := b.Batches(); len(got) != 1 || got[0] != 3 {
		t.Errorf("RemoveBatch sizes = %v, want [3]: the three released behind the first, together", got)
	}
	var order []string
	for _, op := range b.Ops() {
		if op.Kind == "remove" {
			order = append(order, op.Mapping.ID)
		}
	}
	want := []string{ms[0].ID, ms[1].ID, ms[2].ID, ms[3].ID, ms[2].ID}
	if !slices.Equal(order, want) {
		t.Errorf("removals = %v, want %v (release order, then the retry)", order, want)
	}
}
