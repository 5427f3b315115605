package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingWriter records each write it gets.
type countingWriter struct {
	mu     sync.Mutex
	writes []string
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *countingWriter) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.writes...)
}

// TestLogWriterHolds: info lines are held and go out together within
// logFlushInterval, in order; a warning goes out at once, with the lines
// before it ahead of it; Close writes out what is held, and later lines
// go out at once.
func TestLogWriterHolds(t *testing.T) {
	out := &countingWriter{}
	w := newLogWriter(out)
	level := new(slog.LevelVar)
	log := slog.New(bufferedHandler{slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}), w})

	for i := range 100 {
		log.Info("transfer", "n", i)
	}
	if got := out.got(); len(got) != 0 {
		t.Fatalf("%d writes before the interval, want the lines held", len(got))
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(out.got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := out.got()
	if len(got) != 1 || strings.Count(got[0], "msg=transfer") != 100 {
		t.Fatalf("after the interval: %d writes, want the 100 lines in one", len(got))
	}
	if i, j := strings.Index(got[0], "n=0\n"), strings.Index(got[0], "n=99\n"); i < 0 || j < i {
		t.Errorf("lines out of order: %q...", got[0][:200])
	}

	log.Info("before")
	log.Warn("warning")
	got = out.got()
	if len(got) != 2 || !strings.Contains(got[1], "msg=before") || !strings.Contains(got[1], "msg=warning") ||
		strings.Index(got[1], "msg=before") > strings.Index(got[1], "msg=warning") {
		t.Fatalf("a warning was held, or overtook the line before it: %q", got[1:])
	}

	log.Info("last held")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	log.Info("after close")
	got = out.got()
	if len(got) != 4 || !strings.Contains(got[2], "last held") || !strings.Contains(got[3], "after close") {
		t.Errorf("Close and after: %q", got[2:])
	}
}

// TestLogWriterDebugAtOnce: at --log-level debug nothing is held.
func TestLogWriterDebugAtOnce(t *testing.T) {
	out := &countingWriter{}
	w := newLogWriter(out)
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)
	log := slog.New(bufferedHandler{slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}), w})
	log.Info("one")
	log.Debug("two")
	if got := out.got(); len(got) != 2 {
		t.Fatalf("%d writes at debug, want each line at once", len(got))
	}
	level.Set(slog.LevelInfo)
	log.Info("three")
	if got := out.got(); len(got) != 2 {
		t.Errorf("%d writes after the level went back to info, want the line held", len(got))
	}
	_ = w.Close()
}

// TestLogWriterBounded: a burst past logBufferMax is written out by the
// writers themselves, so what is held never grows past the bound.
func TestLogWriterBounded(t *testing.T) {
	var out bytes.Buffer
	var mu sync.Mutex
	w := newLogWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	}))
	line := []byte(strings.Repeat("x", 1023) + "\n")
	for range 4 * logBufferMax / len(line) {
		if _, err := w.Write(line); err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		held := len(w.buf)
		w.mu.Unlock()
		if held > logBufferMax {
			t.Fatalf("%d bytes held, bound %d", held, logBufferMax)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if out.Len() != 4*logBufferMax/len(line)*len(line) {
		t.Errorf("%d bytes written, want all %d", out.Len(), 4*logBufferMax/len(line)*len(line))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
