package scale

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/ftpctl"
)

// setupWorkers bounds the sessions being opened at once (connect, greeting,
// login, PASV), so that SYN and accept backlogs never overflow: a dropped
// SYN would cost a one-second retransmission, not a failure, but would
// hide what the test measures.
const setupWorkers = 200

// TestConcurrentTransfers runs 1,000 passive downloads through one
// pasvgate at the same time, every one of the 1,000 mappings live at
// once. Every fourth session uses EPSV, the others PASV.
func TestConcurrentTransfers(t *testing.T) {
	const n = 1000
	l := newLab(t)
	t.Cleanup(func() { logOutput(t, l.pasvgate) })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The data connections can only go where the 227 said: the server's
	// own address is unreachable from the client.
	if c, err := l.client.Dial(ctx, "tcp", "", serverAddr+":21"); err == nil {
		c.Close()
		t.Fatalf("the client reaches %s directly; the lab must not let it", serverAddr)
	}

	sessions := make([]*ftpConn, n)
	data := make([]netip.AddrPort, n)
	t.Cleanup(func() {
		for _, f := range sessions {
			if f != nil {
				f.c.Close()
			}
		}
	})
	listen, public := netip.MustParseAddr(listenAddr), netip.MustParseAddr(publicAddr)
	var bad failed
	start := time.Now()
	err := inNS(l.client, setupWorkers, n, func(i int) {
		f, err := dialFTP(ctx, listenAddr+":21")
		if err != nil {
			bad.add(i, err)
			return
		}
		sessions[i] = f
		if err := f.login(); err != nil {
			bad.add(i, err)
			return
		}
		if _, err := f.Cmd("TYPE I", 200); err != nil {
			bad.add(i, err)
			return
		}
		if i%4 == 3 {
			line, err := f.Cmd("EPSV", 229)
			if err == nil {
				var p uint16
				p, err = ftpctl.Parse229(line)
				// EPSV clients connect back to the address they dialed.
				data[i] = netip.AddrPortFrom(listen, p)
			}
			if err != nil {
				bad.add(i, err)
			}
			return
		}
		line, err := f.Cmd("PASV", 227)
		if err == nil {
			data[i], err = ftpctl.Parse227(line)
		}
		if err == nil && data[i].Addr() != public {
			err = fmt.Errorf("227 names %s, want the public address %s", data[i].Addr(), public)
		}
		if err != nil {
			bad.add(i, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	setup := time.Since(start)
	if bad.count() > 0 {
		t.Fatalf("setting up %d sessions: %s", n, &bad)
	}
	ports := map[uint16]bool{}
	for _, ap := range data {
		ports[ap.Port()] = true
	}
	if len(ports) != n {
		t.Errorf("%d sessions got %d distinct data ports, want all distinct", n, len(ports))
	}

	// The barrier: every session holds its 227/229, so every mapping must
	// be in the kernel now.
	dnat, err := l.mapElems("dnat_map")
	if err != nil {
		t.Fatal(err)
	}
	snat, err := l.mapElems("snat_map")
	if err != nil {
		t.Fatal(err)
	}
	listed, err := l.listedMappings()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d sessions set up in %v; at the barrier: dnat_map %d elements, snat_map %d, `pasvgate rules list` %d mappings",
		n, setup.Round(time.Millisecond), dnat, snat, listed)
	// A PASV mapping has a second dnat_map element, for the address its
	// client dialed (listen), since the 227 names another (public): the
	// mapping admits the client there too, for clients that ignore the
	// 227 address. EPSV mappings (every fourth session) have none.
	wantDNAT := n
	for i := 0; i < n; i++ {
		if i%4 != 3 {
			wantDNAT++
		}
	}
	if dnat != wantDNAT || snat != n || listed != n {
		t.Errorf("at the barrier: dnat_map %d, snat_map %d elements, rules list %d mappings; want %d, %d, %d", dnat, snat, listed, wantDNAT, n, n)
	}

	// All transfers at once: one worker per session, released together.
	var wrong failed
	var ready sync.WaitGroup
	ready.Add(n)
	release := make(chan struct{})
	go func() {
		allReady := make(chan struct{})
		go func() { ready.Wait(); close(allReady) }()
		select {
		case <-allReady:
		case <-time.After(30 * time.Second):
			// A worker that could not enter the namespace never counts
			// itself; go on with the others rather than hang.
		}
		close(release)
	}()
	var transferTime time.Duration
	var startOnce sync.Once
	err = inNS(l.client, n, n, func(i int) {
		ready.Done()
		<-release
		startOnce.Do(func() { start = time.Now() })
		if err := transfer(ctx, sessions[i], data[i], l.file); err != nil {
			wrong.add(i, err)
		}
	})
	transferTime = time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if wrong.count() > 0 {
		t.Errorf("transfers: %s", &wrong)
	}
	t.Logf("%d concurrent transfers of %d bytes each (and QUIT) took %v", n, len(l.file), transferTime.Round(time.Millisecond))

	// Every session has ended: no element may stay behind. Removal is
	// queued after the final reply, so allow it a bounded while.
	start = time.Now()
	for {
		dnat, err1 := l.mapElems("dnat_map")
		snat, err2 := l.mapElems("snat_map")
		if err1 == nil && err2 == nil && dnat == 0 && snat == 0 {
			t.Logf("maps empty %v after the last transfer", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("10s after the last session: dnat_map %d, snat_map %d elements left (%v, %v), want none", dnat, snat, err1, err2)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	m, err := l.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if bad := failures(m); len(bad) > 0 {
		t.Errorf("pasvgate counted failures: %v", bad)
	}
	if got := m["pasvgate_mappings_opened_total"]; got != n {
		t.Errorf("pasvgate_mappings_opened_total = %v, want %d", got, n)
	}

	// After all that, a stop is still clean: SIGTERM, exit status 0.
	l.pasvgate.Stop()
	if l.pasvgate.Err() != nil {
		t.Errorf("pasvgate did not stop cleanly: %v", l.pasvgate.Err())
	}
}

// transfer downloads the file on the data address its PASV or EPSV gave,
// checks every byte, and quits. It must run inside the client namespace.
func transfer(ctx context.Context, f *ftpConn, addr netip.AddrPort, want []byte) error {
	d := net.Dialer{Timeout: opTimeout}
	dc, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer dc.Close()
	if _, err := f.Cmd("RETR /"+fileName, 150, 125); err != nil {
		return err
	}
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	got, err := io.ReadAll(io.LimitReader(dc, int64(len(want))+1))
	if err != nil {
		return fmt.Errorf("reading the data connection: %w", err)
	}
	dc.Close()
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got %d bytes sha256 %x, want %d bytes sha256 %x", len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
	if _, err := f.Expect(226, 250); err != nil {
		return fmt.Errorf("after the data: %w", err)
	}
	if _, err := f.Cmd("QUIT", 221); err != nil {
		return err
	}
	return f.c.Close()
}

// TestIdleSessions holds 10,000 logged-in control sessions (1,000 with
// -short) open through one pasvgate and checks that all were admitted and
// all still answer. It logs the memory they cost; that is reported, not
// asserted.
func TestIdleSessions(t *testing.T) {
	want := 10000
	if testing.Short() {
		want = 1000
	}
	n, why := maxSessions(want)
	if why != "" {
		t.Log(why)
	}
	l := newLab(t)
	t.Cleanup(func() { logOutput(t, l.pasvgate) })
	r := idleSessions(t, l, n)
	t.Logf("%d sessions opened and logged in in %v, NOOP on all in %v", n, r.open.Round(time.Millisecond), r.noop.Round(time.Millisecond))
	t.Logf("pasvgate memory: baseline %v; with %d sessions %v; after they ended %v", r.base, n, r.with, r.after)
	t.Logf("per session: %.1f KiB Rss, %.1f KiB anonymous (target: 32 KiB Rss)", r.perSession(), r.anonPerSession())
}

// BenchmarkIdleSessions reports pasvgate's resident memory per idle,
// logged-in control session, measured with 10,000 of them open.
func BenchmarkIdleSessions(b *testing.B) {
	n, why := maxSessions(10000)
	if why != "" {
		b.Log(why)
	}
	for range b.N {
		l := newLab(b)
		r := idleSessions(b, l, n)
		b.ReportMetric(r.perSession(), "KiB-RSS/session")
		b.ReportMetric(r.anonPerSession(), "KiB-anon/session")
		b.ReportMetric(float64(r.base.rss), "KiB-RSS-baseline")
		b.ReportMetric(float64(r.with.rss), "KiB-RSS-with")
	}
}

// idleResult is what idleSessions measured.
type idleResult struct {
	n                 int
	base, with, after mem
	open, noop        time.Duration
}

func (r idleResult) perSession() float64 { return float64(r.with.rss-r.base.rss) / float64(r.n) }

func (r idleResult) anonPerSession() float64 {
	return float64(r.with.anon-r.base.anon) / float64(r.n)
}

// idleSessions opens n control sessions through l's pasvgate, logs each in,
// checks each answers NOOP, and measures pasvgate's memory before and with
// them; then it closes them and checks pasvgate lets them all go.
func idleSessions(tb testing.TB, l *lab, n int) idleResult {
	tb.Helper()
	expectPID(tb, l.pasvgate)
	r := idleResult{n: n}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	sessions := make([]*ftpConn, n)
	closeAll := func() {
		for i, f := range sessions {
			if f != nil {
				f.c.Close()
				sessions[i] = nil
			}
		}
	}
	tb.Cleanup(closeAll)
	var bad failed
	open := func(count int) error {
		return inNS(l.client, setupWorkers, count, func(i int) {
			f, err := dialFTP(ctx, listenAddr+":21")
			if err != nil {
				bad.add(i, err)
				return
			}
			sessions[i] = f
			if err := f.login(); err != nil {
				bad.add(i, err)
			}
		})
	}

	// A few sessions first, so that the baseline includes what the first
	// session pays once (code paged in, pools and maps made).
	const warm = 20
	if err := open(warm); err != nil {
		tb.Fatal(err)
	}
	if bad.count() > 0 {
		tb.Fatalf("warm-up sessions: %s", &bad)
	}
	closeAll()
	l.waitSessions(tb, 0)
	var err error
	if r.base, err = readMem(l.pasvgate.Pid()); err != nil {
		tb.Fatal(err)
	}

	start := time.Now()
	if err := open(n); err != nil {
		tb.Fatal(err)
	}
	r.open = time.Since(start)
	if bad.count() > 0 {
		tb.Fatalf("opening %d sessions: %s", n, &bad)
	}

	// A thousand at a time: plenty of concurrency, and within the race
	// detector's limit on live goroutines.
	start = time.Now()
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(n, 1000) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := sessions[i].Cmd("NOOP", 200); err != nil {
					bad.add(i, err)
				}
			}
		}()
	}
	wg.Wait()
	r.noop = time.Since(start)
	if bad.count() > 0 {
		tb.Fatalf("NOOP on %d sessions: %s", n, &bad)
	}

	m, err := l.metrics()
	if err != nil {
		tb.Fatal(err)
	}
	if got := m["pasvgate_sessions_active"]; got != float64(n) {
		tb.Errorf("pasvgate_sessions_active = %v with %d sessions open", got, n)
	}
	if bad := failures(m); len(bad) > 0 {
		tb.Errorf("pasvgate counted failures: %v", bad)
	}
	if r.with, err = readMem(l.pasvgate.Pid()); err != nil {
		tb.Fatal(err)
	}

	closeAll()
	l.waitSessions(tb, 0)
	if r.after, err = readMem(l.pasvgate.Pid()); err != nil {
		tb.Fatal(err)
	}
	return r
}

// waitSessions waits (bounded) until pasvgate reports want active
// sessions: the client's close reaches it asynchronously.
func (l *lab) waitSessions(tb testing.TB, want int) {
	tb.Helper()
	var got float64
	for i := 0; i < 300; i++ {
		m, err := l.metrics()
		if err != nil {
			tb.Fatal(err)
		}
		if got = m["pasvgate_sessions_active"]; got == float64(want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("pasvgate_sessions_active = %v after 30s, want %d", got, want)
}
