package nat

import (
	"context"

	"github.com/pasvgate/pasvgate/rules"
)

// FlowFlusher deletes the kernel's connection-tracking entries of a
// mapping's data connections. rules/conntrack implements it. FlushFlows
// must return soon after ctx ends.
type FlowFlusher interface {
	FlushFlows(ctx context.Context, m rules.Mapping) (int, error)
}

// abnormal reports whether a mapping released for reason may have left a
// data flow whose peers are gone: everything but a finished transfer and a
// data port the client itself replaced.
func abnormal(reason string) bool {
	return reason != ReasonTransferDone && reason != ReasonReplaced
}

// flushLoop flushes the data flows of removed mappings, one at a time, in
// the order their rules came out, and only then frees their ports: a new
// mapping on the port must never meet an old flow, nor lose its own flow
// to the old mapping's flush, which matches by port. It runs beside
// removeLoop, so that removals (and a stop) never wait for a flush, and
// ends after it, once the queue is empty.
func (t *Table) flushLoop() {
	defer t.workers.Done()
	for {
		t.mu.Lock()
		for len(t.flushQ) == 0 {
			if t.removalDone {
				t.mu.Unlock()
				return
			}
			t.mu.Unlock()
			<-t.flushWake
			t.mu.Lock()
		}
		m := t.flushQ[0]
		t.flushQ[0] = nil
		t.flushQ = t.flushQ[1:]
		t.mu.Unlock()
		t.flush(m)
	}
}

// flush deletes m's data flows (the rules that admitted them are gone, so
// nothing re-creates them) and frees its port. A flush that fails frees the
// port all the same: the flows it missed can no longer be deleted by
// mistake along with a later mapping's, and holding the port would only
// shrink the range until the flows time out.
func (t *Table) flush(m *Mapping) {
	ctx, cancel := context.WithTimeout(t.flushCtx, t.cfg.RemoveTimeout)
	n, err := t.cfg.Flows.FlushFlows(ctx, m.Mapping)
	cancel()
	t.mu.Lock()
	delete(t.busy, m.Public.Port())
	t.flushed += uint64(max(n, 0))
	t.mu.Unlock()
	switch {
	case err != nil:
		t.log.Warn("flushing data flows failed", "session", m.Session, "id", m.ID, "public", m.Public, "err", err)
	case n > 0:
		t.log.Info("data flows flushed", "session", m.Session, "id", m.ID, "flows", n, "reason", m.reason)
	}
}

// pokeFlush wakes the flush worker without blocking.
func (t *Table) pokeFlush() {
	select {
	case t.flushWake <- struct{}{}:
	default:
	}
}
