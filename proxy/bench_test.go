package proxy_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// noopServer answers every line with "200 OK" and allocates nothing per
// line, so that allocations measured around it are pasvgate's.
func noopServer(tb testing.TB) string {
	ok := []byte("200 OK\r\n")
	return scriptedServer(tb, func([]byte) []byte { return ok })
}

// transferServer is a scripted FTP server for BenchmarkPassiveTransfer: it
// logs anyone in, answers PASV with its own address, and answers RETR with
// 150 and 226 at once, without a data connection. It allocates nothing
// per line.
func transferServer(tb testing.TB) string {
	replies := map[string][]byte{
		"USER": []byte("331 password\r\n"),
		"PASS": []byte("230 logged in\r\n"),
		"PASV": []byte("227 Entering Passive Mode (127,0,0,2,82,8).\r\n"),
		"EPSV": []byte("229 Entering Extended Passive Mode (|||21000|)\r\n"),
		"RETR": []byte("150 sending\r\n226 done\r\n"),
	}
	other := []byte("200 OK\r\n")
	return scriptedServer(tb, func(line []byte) []byte {
		if len(line) >= 4 {
			if r, ok := replies[string(line[:4])]; ok {
				return r
			}
		}
		return other
	})
}

// scriptedServer greets every connection with 220 and writes answer's
// reply to each line it reads. It allocates nothing per line of its own.
func scriptedServer(tb testing.TB, answer func(line []byte) []byte) string {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte("220 ready\r\n"))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					if _, err := c.Write(answer(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// startProxy runs pasvgate in front of upstream with the fake backend.
func startProxy(tb testing.TB, upstream string) string {
	return startProxyLogging(tb, upstream, nil)
}

// startProxyLogging is startProxy with log as the proxy's Logger.
func startProxyLogging(tb testing.TB, upstream string, log *slog.Logger) string {
	var b fake.Backend
	_ = b.Setup(context.Background())
	table, err := nat.New(&b, nat.Config{Ports: nat.PortRange{Low: 20000, High: 20999}})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", clientDial+":0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	srv := &proxy.Server{Settings: proxy.Settings{Upstream: upstream}, NAT: table, Logger: log}
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	tb.Cleanup(func() { cancel(); <-done; _ = table.Close(context.Background()) })
	return ln.Addr().String()
}

// roundTripper sends NOOP and reads the reply without allocating.
type roundTripper struct {
	c net.Conn
	r *bufio.Reader
}

func dialRT(tb testing.TB, addr string) *roundTripper {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	rt := &roundTripper{c: c, r: bufio.NewReader(c)}
	if _, err := rt.r.ReadSlice('\n'); err != nil { // banner
		tb.Fatal(err)
	}
	return rt
}

var noop = []byte("NOOP\r\n")

func (rt *roundTripper) do(tb testing.TB) {
	if _, err := rt.c.Write(noop); err != nil {
		tb.Fatal(err)
	}
	if _, err := rt.r.ReadSlice('\n'); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkNOOP measures a NOOP round trip directly to the server and
// through pasvgate, interleaved in the same run, and reports what pasvgate
// adds. allocs/op counts the proxied round trip: two relayed lines.
func BenchmarkNOOP(b *testing.B) {
	upstream := noopServer(b)
	direct := dialRT(b, upstream)
	proxied := dialRT(b, startProxy(b, upstream))
	for i := 0; i < 1000; i++ { // warm up buffers and the scheduler
		direct.do(b)
		proxied.do(b)
	}
	var dDirect, dProxy time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		direct.do(b)
		t1 := time.Now()
		proxied.do(b)
		dProxy += time.Since(t1)
		dDirect += t1.Sub(t0)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(dDirect.Nanoseconds())/n/1000, "direct-µs/rt")
	b.ReportMetric(float64(dProxy.Nanoseconds())/n/1000, "proxied-µs/rt")
	b.ReportMetric(float64((dProxy-dDirect).Nanoseconds())/n/1000, "added-µs/rt")
}

// TestRelayedLinesDoNotAllocate pins the zero-allocation pass-through path:
// a NOOP and its reply relayed through pasvgate allocate nothing.
func TestRelayedLinesDoNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count needs a quiet process")
	}
	upstream := noopServer(t)
	proxied := dialRT(t, startProxy(t, upstream))
	for i := 0; i < 100; i++ {
		proxied.do(t)
	}
	if avg := testing.AllocsPerRun(2000, func() { proxied.do(t) }); avg >= 1 {
		t.Fatalf("%.2f allocations per relayed NOOP round trip, want 0", avg)
	}
}

// BenchmarkPassiveTransfer measures pasvgate's own work for one small
// passive download, as a session goes through it back to back: PASV and its
// 227 (a mapping opened on the fake backend), RETR and its 150 and 226 (the
// mapping released, the transfer logged at info, as by default). The
// server answers at once and nothing is installed in a kernel, so ns/op
// and allocs/op are the proxy's: the CPU every transfer spends on the
// gateway beyond relaying lines (compare BenchmarkNOOP, two lines).
func BenchmarkPassiveTransfer(b *testing.B) {
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rt := dialRT(b, startProxyLogging(b, transferServer(b), log))
	rt.send(b, "USER u\r\n", 1)
	rt.send(b, "PASS p\r\n", 1)
	for _, verb := range []string{"PASV", "EPSV"} {
		b.Run(verb, func(b *testing.B) {
			pasv := verb + "\r\n"
			for i := 0; i < 200; i++ { // warm up
				rt.send(b, pasv, 1)
				rt.send(b, "RETR f\r\n", 2)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rt.send(b, pasv, 1)
				rt.send(b, "RETR f\r\n", 2)
			}
		})
	}
}

// send writes line and reads n reply lines, checking none is a 4xx or 5xx.
func (rt *roundTripper) send(tb testing.TB, line string, n int) {
	if _, err := io.WriteString(rt.c, line); err != nil {
		tb.Fatal(err)
	}
	for range n {
		got, err := rt.r.ReadSlice('\n')
		if err != nil {
			tb.Fatal(err)
		}
		if got[0] >= '4' {
			tb.Fatalf("%q: %q", line, got)
		}
	}
}
