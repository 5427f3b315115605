package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// logFlushInterval is how long an info or debug line of the service may
// wait in memory before it is written.
const logFlushInterval = 50 * time.Millisecond

// logBufferMax bounds the lines held in memory: a Write that finds this
// much waiting writes it out itself, so a burst slows its writers down
// rather than growing the buffer or losing lines.
const logBufferMax = 256 << 10

// logWriter holds the service's log lines and writes them out together,
// at most logFlushInterval after the first of them, and at once for a line
// at warn or above, for every line at --log-level debug (bufferedHandler),
// and at exit (Close).
//
// Why: a line is a write(2) to a pipe or a socket (journald, a container
// runtime), which wakes its reader, and a transfer's line was written on
// the transfer's path. Measured on the bench (issue 13), the one line per
// transfer cost 0.14-0.20 ms of each 1 KiB download's 1.0 ms (column N,
// at warn level, against D in one run). Held, the lines of a busy second
// go out in about twenty writes.
//
// The cost: a process killed by SIGKILL, or by a panic, loses at most the
// last logFlushInterval of info lines. Warnings and errors are never
// held.
type logWriter struct {
	out io.Writer
	// wmu keeps writes to out whole and in order.
	wmu sync.Mutex

	mu     sync.Mutex
	buf    []byte
	timer  *time.Timer
	armed  bool
	closed bool
}

func newLogWriter(out io.Writer) *logWriter {
	w := &logWriter{out: out}
	w.timer = time.AfterFunc(time.Hour, func() { _ = w.Flush() })
	w.timer.Stop()
	return w
}

// Write holds p (one whole line: slog handlers write each record with one
// call).
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.wmu.Lock()
		defer w.wmu.Unlock()
		return w.out.Write(p)
	}
	w.buf = append(w.buf, p...)
	full := len(w.buf) >= logBufferMax
	if !full && !w.armed {
		w.armed = true
		w.timer.Reset(logFlushInterval)
	}
	w.mu.Unlock()
	if full {
		return len(p), w.Flush()
	}
	return len(p), nil
}

// Flush writes out everything held.
func (w *logWriter) Flush() error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.Lock()
	buf := w.buf
	w.buf = nil
	w.armed = false
	w.timer.Stop()
	w.mu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_, err := w.out.Write(buf)
	return err
}

// Close writes out everything held; later lines are written at once.
func (w *logWriter) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return w.Flush()
}

// bufferedHandler is a slog.Handler that writes to a logWriter and
// flushes it after every record at warn or above, so that those are
// never held back, and never overtake the lines logged before them; and
// after every record at all while --log-level is debug, which is for
// watching what happens as it happens.
type bufferedHandler struct {
	slog.Handler
	w *logWriter
}

func (h bufferedHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn || h.Handler.Enabled(ctx, slog.LevelDebug) {
		if ferr := h.w.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (h bufferedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return bufferedHandler{h.Handler.WithAttrs(as), h.w}
}

func (h bufferedHandler) WithGroup(name string) slog.Handler {
	return bufferedHandler{h.Handler.WithGroup(name), h.w}
}
