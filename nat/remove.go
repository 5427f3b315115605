package nat

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// maxRemoveBatch bounds the mappings one removal takes out together.
const maxRemoveBatch = 256

// removeLoop removes released mappings in release order: all that are
// queued at once when the backend can (rules.BatchRemover, one kernel
// transaction for them all), else one at a time. A single worker keeps
// removals from competing with installs for the backend more than one at
// a time. It never waits for anything but the backend: a failed removal
// waits for its retry on a timer, and a flush on the flush worker.
func (t *Table) removeLoop() {
	defer t.workers.Done()
	defer func() {
		t.mu.Lock()
		t.removalDone = true
		t.mu.Unlock()
		t.pokeFlush()
	}()
	batcher, _ := t.backend.(rules.BatchRemover)
	for {
		t.mu.Lock()
		for len(t.queue) == 0 {
			if t.closing && len(t.open) == 0 && t.installing == 0 && len(t.backoff) == 0 {
				t.mu.Unlock()
				return
			}
			t.mu.Unlock()
			<-t.wake
			t.mu.Lock()
		}
		if batcher != nil {
			t.awaitBatchLocked()
		}
		n := 1
		if batcher != nil {
			n = min(len(t.queue), maxRemoveBatch)
		}
		ms := make([]*Mapping, n)
		copy(ms, t.queue)
		clear(t.queue[:n])
		t.queue = t.queue[n:]
		t.mu.Unlock()
		t.remove(batcher, ms)
	}
}

// awaitBatchLocked waits, with t.mu held and released meanwhile, until
// the oldest queued release is Config.RemoveDelay old, so that the
// releases behind it join its batch; or until the batch is full, or the
// table closes. The queue is not empty.
func (t *Table) awaitBatchLocked() {
	t.batching = true
	defer func() { t.batching = false }()
	for !t.closing && len(t.queue) < maxRemoveBatch {
		wait := time.Until(t.queue[0].queuedAt.Add(t.cfg.RemoveDelay))
		if t.queue[0].queuedAt.IsZero() || wait <= 0 {
			return
		}
		t.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-t.wake:
		}
		timer.Stop()
		t.mu.Lock()
	}
}

// remove tries once to remove ms's rules. On success each port is freed,
// or its mapping goes to the flush worker, which frees it after the
// flush. On failure a mapping is retried later, or given up.
func (t *Table) remove(batcher rules.BatchRemover, ms []*Mapping) {
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.RemoveTimeout)
	var errs []error
	if len(ms) == 1 {
		errs = []error{t.backend.Remove(ctx, ms[0].Mapping)}
	} else {
		rs := make([]rules.Mapping, len(ms))
		for i, m := range ms {
			rs[i] = m.Mapping
		}
		errs = batcher.RemoveBatch(ctx, rs)
	}
	cancel()
	for i, m := range ms {
		t.removed(m, errs[i])
	}
}

// removed records the outcome of m's removal.
func (t *Table) removed(m *Mapping, err error) {
	if errors.Is(err, rules.ErrNotInstalled) {
		// Nothing of it is in the kernel: an earlier attempt that timed
		// out may have removed it after all.
		err = nil
	}
	if err != nil {
		t.removeFailed(m, err)
		return
	}
	flush := t.cfg.Flows != nil && abnormal(m.reason)
	t.mu.Lock()
	delete(t.open, m.ID)
	t.closed[m.reason]++
	// The rules are gone: the client's count goes down now, even if the
	// port waits for its flush before it returns to the pool.
	t.chargeLocked(m.client, 0, -1)
	if flush {
		t.flushQ = append(t.flushQ, m)
	} else {
		delete(t.busy, m.Public.Port())
	}
	t.mu.Unlock()
	if flush {
		t.pokeFlush()
	}
	// A finished transfer has its own line (the proxy's); any other end
	// of a mapping is worth one at info.
	level := slog.LevelInfo
	if !abnormal(m.reason) {
		level = slog.LevelDebug
	}
	if ctx := context.Background(); t.log.Enabled(ctx, level) {
		t.log.Log(ctx, level, "mapping closed", "session", m.Session, "id", m.ID, "source", m.Source,
			"public", m.Public, "target", m.Target, "reason", m.reason,
			"age_ms", time.Since(m.opened).Milliseconds())
	}
}

// removeFailed schedules m's next attempt, or gives up on it after the
// last retry or while the table closes. Either way its port stays busy:
// its rules may still be in the kernel, and handing the port out again
// could collide with them.
func (t *Table) removeFailed(m *Mapping, err error) {
	t.mu.Lock()
	if t.closing || m.attempts >= t.cfg.RemoveRetries {
		delete(t.open, m.ID)
		t.closed[m.reason]++
		t.rmFailed++
		// Given up: the port stays out of the pool, but through no doing
		// of the client's, so its count goes down.
		t.chargeLocked(m.client, 0, -1)
		t.mu.Unlock()
		t.log.Error("mapping removal failed, giving up: its rules may stay until the next start or `pasvgate rules flush`",
			"session", m.Session, "id", m.ID, "source", m.Source, "public", m.Public, "target", m.Target,
			"reason", m.reason, "attempts", m.attempts+1, "err", err)
		return
	}
	m.attempts++
	t.rmRetries++
	wait := t.backoffFor(m.attempts)
	t.backoff[m.ID] = m
	m.retry = time.AfterFunc(wait, func() { t.retryDue(m) })
	t.mu.Unlock()
	t.log.Warn("mapping removal failed, will retry", "session", m.Session, "id", m.ID,
		"public", m.Public, "reason", m.reason, "attempt", m.attempts, "retry_in", wait, "err", err)
}

// backoffFor is the wait before retry n (from 1): RemoveBackoff doubled
// n-1 times, at most RemoveBackoffMax.
func (t *Table) backoffFor(n int) time.Duration {
	d := t.cfg.RemoveBackoff
	for i := 1; i < n && d < t.cfg.RemoveBackoffMax; i++ {
		d *= 2
	}
	return min(d, t.cfg.RemoveBackoffMax)
}

// retryDue queues m for its next attempt, unless Close has already done so.
func (t *Table) retryDue(m *Mapping) {
	t.mu.Lock()
	if _, ok := t.backoff[m.ID]; ok {
		delete(t.backoff, m.ID)
		m.queuedAt = time.Time{}
		t.queue = append(t.queue, m)
	}
	t.mu.Unlock()
	t.poke()
}
