package sniff

import (
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// synthetic writes a large capture to out, in rounds of concurrent
// sessions, with two hostile connections mixed in: a server that sends
// one endless line, and a flood of control SYNs that never complete. It
// calls sample every 10000 frames. It returns the number of sessions
// that completed a login.
func synthetic(tb testing.TB, out io.Writer, frames int, sample func(n int)) (sessions int) {
	w := newWire(tb, out)
	endless := w.dial(ap("198.51.100.200:40000"), ap("192.0.2.200:21"))
	next := 10000
	check := func() {
		if w.n >= next {
			sample(w.n)
			next += 10000
		}
	}
	flood := 0
	for round := 0; w.n < frames; round++ {
		const perRound = 100
		conns := make([]*conn, perRound)
		for i := range conns {
			c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i)}), uint16(10000+round%50000))
			s := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%5)}), 21)
			conns[i] = w.dial(c, s)
		}
		steps := []func(k *conn){
			func(k *conn) { k.reply("220 synthetic\r\n") },
			func(k *conn) { k.cmd("USER u\r\n"); k.reply("331 p\r\n"); k.cmd("PASS p\r\n"); k.reply("230 ok\r\n") },
			func(k *conn) {
				k.cmd("PASV\r\n")
				h := k.s.Addr().As4()
				k.reply(fmt.Sprintf("227 Entering Passive Mode (%d,%d,%d,%d,117,48).\r\n", h[0], h[1], h[2], h[3]))
				w.dataDial(netip.AddrPortFrom(k.c.Addr(), k.c.Port()+1), netip.AddrPortFrom(k.s.Addr(), 30000), true, false)
			},
			func(k *conn) { k.cmd("LIST\r\n"); k.reply("150 here\r\n226 done\r\n") },
			func(k *conn) { k.cmd("QUIT\r\n"); k.reply("221 bye\r\n"); k.close() },
		}
		for _, step := range steps {
			for _, k := range conns {
				step(k)
				check()
			}
			// The hostile ones, once per step.
			endless.reply(strings.Repeat("x", 1400))
			for range 20 {
				flood++
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(flood)}), uint16(1024+flood%60000))
				w.frame(src, ap("192.0.2.250:21"), 1, 0, tcpFlags{syn: true}, nil)
			}
			w.tick(time.Second)
		}
		sessions += perRound
	}
	return sessions
}

// TestMemoryBounded feeds a capture of 100k frames through ReadPcap as a
// stream (a pipe: the file never exists whole) and samples the live heap
// as it goes. With limits on what the report keeps, the heap must not
// grow with the capture: the last samples may exceed the first by no more
// than a fixed margin.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("100k frames")
	}
	const frames = 100000
	pr, pw := io.Pipe()
	var samples, objects []uint64
	done := make(chan int, 1)
	go func() {
		n := synthetic(t, pw, frames, func(int) {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			samples = append(samples, ms.HeapAlloc)
			objects = append(objects, ms.HeapObjects)
		})
		pw.Close()
		done <- n
	}()
	lim := Limits{MaxOpen: 256, MaxSessions: 100, MaxEvents: 16}
	r, err := ReadPcap(pr, Config{Limits: lim})
	sessions := <-done
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var end runtime.MemStats
	runtime.ReadMemStats(&end)

	if len(samples) < 5 {
		t.Fatalf("only %d samples", len(samples))
	}
	base, peak := samples[1], uint64(0) // samples[0] still has start-up garbage
	for _, s := range samples[1:] {
		peak = max(peak, s)
	}
	t.Logf("%d frames, %d sessions; heap after 20k frames %.1f MiB, peak %.1f MiB, after the report %.1f MiB; samples %v",
		r.Stats.Packets, sessions, mib(base), mib(peak), mib(end.HeapAlloc), samplesMiB(samples))
	t.Logf("live heap objects %v", objects)
	// Bytes catch buffers that grow (a line, a stream, the file); live
	// objects catch state kept per session or per packet, which is small
	// but adds up: with the report's limits lifted, this capture grows
	// the heap by 12000 objects, here it stays within a few hundred.
	const margin, objMargin = 3 << 20, 2000
	if peak > base+margin {
		t.Errorf("heap grew with the capture: %.1f MiB after 20k frames, peak %.1f MiB", mib(base), mib(peak))
	}
	if p := slices.Max(objects[1:]); p > objects[1]+objMargin {
		t.Errorf("live objects grew with the capture: %d after 20k frames, peak %d", objects[1], p)
	}

	// The limits held, and the counts add up.
	if len(r.Sessions) != lim.MaxSessions {
		t.Errorf("%d sessions listed, want %d", len(r.Sessions), lim.MaxSessions)
	}
	total := 0
	for _, s := range r.Servers {
		total += s.Sessions
	}
	if total != len(r.Sessions)+r.SessionsOmitted {
		t.Errorf("summary counts %d sessions, report %d + %d omitted", total, len(r.Sessions), r.SessionsOmitted)
	}
	if r.SessionsOmitted < sessions-lim.MaxSessions {
		t.Errorf("%d sessions omitted, want at least %d", r.SessionsOmitted, sessions-lim.MaxSessions)
	}
	if r.Stats.SegmentsNotFollowed == 0 {
		t.Error("the SYN flood never hit MaxOpen")
	}
	for _, s := range r.Servers {
		if s.Server.Addr() != netip.MustParseAddr("192.0.2.200") && s.Server.Addr() != netip.MustParseAddr("192.0.2.250") &&
			(s.Verdict != VerdictOK || s.BadAddress != 0) {
			t.Errorf("server %+v", s)
		}
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func samplesMiB(s []uint64) string {
	var b strings.Builder
	for i, v := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f", mib(v))
	}
	return b.String()
}

// TestEndlessLineBounded: a control connection that never sends a line
// end costs one line's buffer, however long it runs, and the lines after
// it are read.
func TestEndlessLineBounded(t *testing.T) {
	e := NewExtractor(Limits{})
	c := Conn{Client: client, Server: server}
	chunk := []byte(strings.Repeat("x", 64<<10))
	var before, after runtime.MemStats
	e.Data(c, ServerToClient, chunk, time.Now())
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 1000 { // 64 MiB of one line
		e.Data(c, ServerToClient, chunk, time.Now())
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc > before.HeapAlloc+1<<20 {
		t.Errorf("heap grew from %.1f to %.1f MiB on one endless line", mib(before.HeapAlloc), mib(after.HeapAlloc))
	}
	e.Data(c, ClientToServer, []byte("PASV\r\n"), time.Now())
	e.Data(c, ServerToClient, []byte("\r\n227 Entering Passive Mode (192,0,2,10,1,2)\r\n"), time.Now())
	r := e.Report()
	s := r.Sessions[0]
	if s.LongLines != 1 || len(s.DataAddrs) != 1 || s.DataAddrs[0].Addr != ap("192.0.2.10:258") {
		t.Errorf("%+v %+v", s, s.DataAddrs)
	}
}

// BenchmarkReadPcap reports the cost per frame of a realistic capture.
func BenchmarkReadPcap(b *testing.B) {
	pr, pw := io.Pipe()
	go func() {
		synthetic(b, pw, 20000, func(int) {})
		pw.Close()
	}()
	data, _ := io.ReadAll(pr)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := ReadPcap(strings.NewReader(string(data)), Config{Limits: Limits{MaxSessions: 100}}); err != nil {
			b.Fatal(err)
		}
	}
}
