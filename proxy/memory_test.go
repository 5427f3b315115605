package proxy_test

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// heapNow is the live heap after a collection, and the process's resident
// set, in bytes.
func heapNow() (heap, rss uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return m.HeapAlloc, rss
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// growth reports how much the heap and RSS grew since (heap0, rss0); the
// heap figure is the test's measure, RSS only reported (it never shrinks).
func growth(t *testing.T, what string, heap0, rss0 uint64) uint64 {
	t.Helper()
	heap1, rss1 := heapNow()
	var dh uint64
	if heap1 > heap0 {
		dh = heap1 - heap0
	}
	t.Logf("%s: heap %.1f -> %.1f MiB (+%.1f), RSS %.1f -> %.1f MiB", what, mib(heap0), mib(heap1), mib(dh), mib(rss0), mib(rss1))
	return dh
}

// TestHostilePassiveReplyBounded has the server answer PASV with a 227
// reply that goes on for 28 MiB of continuation lines (issue 12, item 3).
// pasvgate holds a 227 back whole until its last line, so the reply must
// be bounded: the client gets 421, the session ends, and the heap does not
// grow with what the server sends. Before the fix 28 MiB grew the heap by
// about 60 MiB.
func TestHostilePassiveReplyBounded(t *testing.T) {
	const total = 28 << 20
	sent := make(chan int, 1)
	up := fakeUpstream(t, func(cmd string, w *bufio.Writer) {
		switch {
		case strings.HasPrefix(cmd, "USER"):
			w.WriteString("331 password\r\n")
		case strings.HasPrefix(cmd, "PASS"):
			w.WriteString("230 in\r\n")
		case strings.HasPrefix(cmd, "PASV"):
			line := []byte("227-" + strings.Repeat("x", 92) + "\r\n")
			chunk := bytes.Repeat(line, 64<<10/len(line))
			n := 0
			w.WriteString("227-Entering Passive Mode (127,0,0,2,4,1)\r\n")
			for n < total {
				k, err := w.Write(chunk)
				n += k
				if err != nil {
					break
				}
			}
			sent <- n
		default:
			w.WriteString("200 ok\r\n")
		}
	})
	h := newHarness(t, options{upstream: up})
	c := h.dial(t)
	c.login()
	heap0, rss0 := heapNow()
	c.send("PASV")
	var n int
	select {
	case n = <-sent:
	case <-time.After(60 * time.Second):
		t.Fatal("the server could not send its reply in 60 s")
	}
	grew := growth(t, "after "+strconv.Itoa(n>>20)+" MiB of one 227 reply", heap0, rss0)
	if grew > 4<<20 {
		t.Errorf("the heap grew by %.1f MiB on one 227 reply, want < 4 MiB", mib(grew))
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got := c.reply(); !strings.HasPrefix(got, "421 ") {
		t.Fatalf("PASV with an endless 227: %q, want 421", got)
	}
	if _, err := c.r.ReadByte(); err != io.EOF && !isReset(err) {
		t.Fatalf("session still open: %v", err)
	}
	h.waitLog(t, "reply is too long")
	h.waitLog(t, `reason="server reply too long"`)
}

// TestRefusalFloodBounded sends 2 MiB of LPSV lines, which pasvgate
// refuses itself, behind a command the server never answers, without
// reading a reply (issue 12, item 4). pasvgate's own replies queue behind
// the server's: the queue must stay bounded, and a client that does not
// read its replies is disconnected. Before the fix the heap grew by about
// 80 MiB.
func TestRefusalFloodBounded(t *testing.T) {
	up := fakeUpstream(t, func(cmd string, w *bufio.Writer) {
		switch {
		case strings.HasPrefix(cmd, "USER"):
			w.WriteString("331 password\r\n")
		case strings.HasPrefix(cmd, "PASS"):
			w.WriteString("230 in\r\n")
		case strings.HasPrefix(cmd, "STAT"):
			// Never answered.
		default:
			w.WriteString("200 ok\r\n")
		}
	})
	h := newHarness(t, options{upstream: up})
	c := h.dial(t)
	c.login()
	heap0, rss0 := heapNow()
	const lines = 2 << 20 / len("LPSV\r\n")
	flood := append([]byte("STAT\r\n"), bytes.Repeat([]byte("LPSV\r\n"), lines)...)
	_ = c.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, werr := c.c.Write(flood)
	// pasvgate has read everything, or ended the session.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st := h.proxy.Stats()
		if st.Refused["long-address"] >= uint64(lines) || st.SessionsActive == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := h.proxy.Stats()
	grew := growth(t, "after "+strconv.FormatUint(st.Refused["long-address"], 10)+" refused LPSV", heap0, rss0)
	if grew > 4<<20 {
		t.Errorf("the heap grew by %.1f MiB on refusals nobody read, want < 4 MiB", mib(grew))
	}
	if st.SessionsActive != 0 {
		t.Fatalf("a client that sent %d commands without reading a reply still has its session (write: %v)", lines+1, werr)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	all, _ := io.ReadAll(c.r)
	if !bytes.Contains(all, []byte("421 Too many commands without reading replies.\r\n")) {
		t.Errorf("the client was not told why: %q", all[max(0, len(all)-200):])
	}
	h.waitLog(t, `reason="too many pipelined commands"`)
}
