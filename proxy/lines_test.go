package proxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLongLineAnsweredAtOnce sends a command line past --max-line and
// stops before its end: pasvgate must answer 500 then, not when (or if)
// the line ends (issue 12, item 6). The rest of the line, within another
// --max-line, is dropped and the session goes on.
func TestLongLineAnsweredAtOnce(t *testing.T) {
	h := newHarness(t, options{maxLine: 512})
	c := h.dial(t)
	c.login()
	if _, err := io.WriteString(c.c, "NOOP "+strings.Repeat("x", 600)); err != nil {
		t.Fatal(err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := c.reply(); got != "500 Command line too long." {
		t.Fatalf("after 605 bytes with no end: %q, want 500 at once", got)
	}
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	c.send(strings.Repeat("y", 300)) // the line ends 905 bytes in: under twice the limit
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP after the over-long line: %q (its rest was read as a command?)", got)
	}
	if sent := h.tap.sent(); strings.Contains(sent, "xxx") || strings.Contains(sent, "yyy") {
		t.Errorf("part of the over-long line reached the server: %q", sent)
	}
	if st := h.proxy.Stats(); st.Refused["line-too-long"] != 1 {
		t.Errorf("refusals %v, want one line-too-long", st.Refused)
	}
}

// TestEndlessLineClosesSession sends a line that goes on past twice
// --max-line: the client gets 500 when the limit is passed, then 421 and
// the end of its session, however much more it would send.
func TestEndlessLineClosesSession(t *testing.T) {
	h := newHarness(t, options{maxLine: 512})
	c := h.dial(t)
	c.login()
	done := make(chan error, 1)
	go func() {
		// Up to 1 MiB, in pieces; the write fails once pasvgate closes.
		chunk := strings.Repeat("z", 4096)
		for range 256 {
			if _, err := io.WriteString(c.c, chunk); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got := c.reply(); got != "500 Command line too long." {
		t.Fatalf("first reply %q, want 500", got)
	}
	if got := c.reply(); !strings.HasPrefix(got, "421 ") {
		t.Fatalf("second reply %q, want 421", got)
	}
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("connection still open after the 421: %v", err)
	}
	if err := <-done; err == nil {
		t.Error("pasvgate read 1 MiB of one line without closing the session")
	}
	h.waitLog(t, "reason=\"endless line\"")
	if sent := h.tap.sent(); strings.Contains(sent, "zzz") {
		t.Errorf("part of the endless line reached the server: %q", sent[:min(len(sent), 200)])
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// TestServerLongLinesBounded has the server answer NOOP with a line three
// times --max-line long, then the real reply: the long line is dropped
// and logged, as a client line is, and the client gets the reply after it.
func TestServerLongLinesBounded(t *testing.T) {
	up := fakeUpstream(t, func(cmd string, w *bufio.Writer) {
		switch {
		case strings.HasPrefix(cmd, "NOOP"):
			w.WriteString("200-" + strings.Repeat("s", 1600) + "\r\n200 ok\r\n")
		default:
			w.WriteString("200 ok\r\n")
		}
	})
	h := newHarness(t, options{maxLine: 512, upstream: up})
	c := h.dial(t)
	if got := c.cmd("NOOP"); got != "200 ok" {
		t.Fatalf("NOOP: %q, want the reply after the over-long line", got)
	}
	h.waitLog(t, "server line too long, dropped")
	h.waitLog(t, "server line goes on past twice the limit")
}

// fakeUpstream is a minimal FTP server: it greets, then answers each
// command line with what answer writes.
func fakeUpstream(t *testing.T, answer func(cmd string, w *bufio.Writer)) string {
	t.Helper()
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				w := bufio.NewWriter(c)
				w.WriteString("220 fake\r\n")
				w.Flush()
				r := bufio.NewReader(io.LimitReader(c, 1<<20))
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					answer(line, w)
					if w.Flush() != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
