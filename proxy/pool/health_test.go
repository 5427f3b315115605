package pool

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestReadGreeting(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code int
		err  bool
	}{
		{in: "220 hello\r\n", code: 220},
		{in: "220 hello\n", code: 220},
		{in: "220\r\n", code: 220},
		{in: "220-welcome\r\n220-to the server\r\n220 ready\r\n", code: 220},
		{in: "220-welcome\r\n 421 a quoted line\r\n220-still\r\n220 ready\r\n", code: 220},
		{in: "220-welcome\r\n220\r\n", code: 220},
		{in: "120 wait 5 minutes\r\n", code: 120},
		{in: "421 Too many users\r\n", code: 421},
		{in: "421-busy\r\n421 go away\r\n", code: 421},
		{in: "SSH-2.0-OpenSSH\r\n", err: true},
		{in: "", err: true},
		{in: "220 no line end", err: true},
		{in: "220-open\r\n220-never closed\r\n", err: true},
		{in: strings.Repeat("x", 10000), err: true},
		{in: "220-" + strings.Repeat("x", 5000) + "\r\n220 ok\r\n", err: true},
		{in: strings.Repeat("220-line\r\n", 500) + "220 ok\r\n", err: true}, // past 4 KiB in all
	} {
		code, _, err := readGreeting(strings.NewReader(tc.in))
		if (err != nil) != tc.err || code != tc.code {
			t.Errorf("readGreeting(%.40q) = %d, %v; want %d, error %v", tc.in, code, err, tc.code, tc.err)
		}
	}
}

// endless is a server that never stops sending.
type endless struct{ n int }

func (e *endless) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = "220-"[e.n%4]
		e.n++
	}
	return len(b), nil
}

func TestReadGreetingBounded(t *testing.T) {
	e := &endless{}
	_, _, err := readGreeting(e)
	if !errors.Is(err, errGreetingTooLong) {
		t.Errorf("endless greeting: %v", err)
	}
	if e.n > maxGreeting {
		t.Errorf("read %d bytes of an endless greeting, want at most %d", e.n, maxGreeting)
	}
}

func TestReadGreetingText(t *testing.T) {
	_, text, err := readGreeting(strings.NewReader("421 \x1b[31mred\x00 " + strings.Repeat("y", 200) + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(text) > 80 || strings.ContainsAny(text, "\x1b\x00") || !strings.HasPrefix(text, "421 ?[31mred? ") {
		t.Errorf("greeting text for a log: %q", text)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		mode int32
		ok   bool
		why  string
	}{
		{mode: greet, ok: true},
		{mode: multi, ok: true},
		{mode: stall, why: "timeout"},
		{mode: busy, why: "421"},
		{mode: hangup, why: "EOF"},
		{mode: flood, why: "longer than"},
		{mode: garbage, why: "malformed"},
	} {
		f := newFake(t, "f", false)
		f.mode.Store(tc.mode)
		start := time.Now()
		err := check(context.Background(), f.addr, 300*time.Millisecond, ProxyOff)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), tc.why)) {
			t.Errorf("mode %d: check: %v; want ok %v, reason with %q", tc.mode, err, tc.ok, tc.why)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("mode %d: check took %v with a 300ms timeout", tc.mode, d)
		}
		f.close()
	}
	if err := check(context.Background(), refusedAddr(t), time.Second, ProxyOff); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("check of a refused port: %v", err)
	}
}

func TestCheckSendsQuit(t *testing.T) {
	f := newFake(t, "f", false)
	if err := check(context.Background(), f.addr, 5*time.Second, ProxyOff); err != nil {
		t.Fatal(err)
	}
	// The fake server ends a connection by itself only on QUIT.
	waitFor(t, "the server to see QUIT", func() bool { return f.open() == 0 })
}

// runPool starts p.Run and stops it at the end of the test.
func runPool(t *testing.T, p *Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

var quickChecks = Health{Interval: 30 * time.Millisecond, Timeout: 200 * time.Millisecond, Fall: 2, Rise: 2}

func TestHealthDownAndUp(t *testing.T) {
	for _, tc := range []struct {
		mode int32
		why  string
	}{{stall, "timeout"}, {busy, "421"}, {hangup, "EOF"}} {
		a, b := newFake(t, "a", false), newFake(t, "b", false)
		p, rec := newPool(Config{Name: "p", Members: members(a.addr, b.addr), Health: quickChecks})
		runPool(t, p)
		waitFor(t, "a few checks", func() bool { return a.accepted.Load() >= 3 })
		if st := statusOf(t, p, a.addr); st.State != Up {
			t.Fatalf("healthy member %v", st.State)
		}

		a.mode.Store(tc.mode)
		waitFor(t, "the member to go down", func() bool { return statusOf(t, p, a.addr).State == Down })
		if st := statusOf(t, p, a.addr); !strings.Contains(st.Reason, tc.why) {
			t.Errorf("mode %d: reason %q, want %q in it", tc.mode, st.Reason, tc.why)
		}
		for range 5 {
			c := dial(t, p, Key{})
			if c.Member != b.addr {
				t.Errorf("Dial picked the down member")
			}
			c.Close()
		}

		a.mode.Store(greet)
		waitFor(t, "the member to come back", func() bool { return statusOf(t, p, a.addr).State == Up })
		if n := len(rec.find("upstream server down", a.addr)); n != 1 {
			t.Errorf("down logged %d times, want once", n)
		}
		if n := len(rec.find("upstream server up", a.addr)); n != 1 {
			t.Errorf("up logged %d times, want once", n)
		}
		if len(rec.find("upstream server down", b.addr)) != 0 {
			t.Error("the healthy member was logged down")
		}
		st := statusOf(t, p, a.addr)
		if st.Changes[Down] != 1 || st.Changes[Up] != 1 || st.Reason != "" {
			t.Errorf("after one outage: %+v", st)
		}
	}
}

func TestHealthFallRise(t *testing.T) {
	a := newFake(t, "a", false)
	p, _ := newPool(Config{Members: members(a.addr), Health: Health{Interval: time.Hour, Fall: 3, Rise: 2}})
	p.mu.Lock()
	m := p.members[0]
	p.mu.Unlock()
	failed := errors.New("x")
	for i, step := range []struct {
		err  error
		want State
	}{
		{failed, Up}, {failed, Up}, {nil, Up}, // not 3 in a row
		{failed, Up}, {failed, Up}, {failed, Down},
		{nil, Down}, {failed, Down}, {nil, Down}, {nil, Up},
	} {
		p.record(m, step.err)
		if got := p.Status()[0].State; got != step.want {
			t.Fatalf("step %d: %v, want %v", i, got, step.want)
		}
	}
}

func TestHealthMultiLineBringsBack(t *testing.T) {
	a := newFake(t, "a", false)
	a.mode.Store(multi)
	p, _ := newPool(Config{Members: members(a.addr), Health: quickChecks})
	markDown(p, a.addr, "test")
	runPool(t, p)
	waitFor(t, "a multi-line 220 to count", func() bool { return p.Status()[0].State == Up })
}

func TestHealthDrainedStillChecked(t *testing.T) {
	a := newFake(t, "a", false)
	p, rec := newPool(Config{Members: []Member{{Addr: a.addr, Weight: 0}}, Health: quickChecks})
	a.mode.Store(busy)
	runPool(t, p)
	waitFor(t, "checks", func() bool { return a.accepted.Load() >= 3 })
	if st := p.Status()[0]; st.State != Drain {
		t.Errorf("drained member %v", st.State)
	}
	if len(rec.find("upstream server down", a.addr)) != 0 {
		t.Error("a drained member's failed checks were logged as down")
	}
	// Undrained, it is what its checks found.
	p.Update(Config{Members: members(a.addr), Health: quickChecks})
	if st := p.Status()[0]; st.State != Down || !strings.Contains(st.Reason, "421") {
		t.Errorf("undrained failing member: %+v", st)
	}
	if len(rec.find("upstream server down", a.addr)) != 1 {
		t.Error("undraining into Down was not logged")
	}
}

func TestRunChecksNewMemberAtOnce(t *testing.T) {
	a, b := newFake(t, "a", false), newFake(t, "b", false)
	h := Health{Interval: time.Hour, Timeout: time.Second}
	p, _ := newPool(Config{Members: members(a.addr), Health: h})
	runPool(t, p)
	waitFor(t, "the first round", func() bool { return a.accepted.Load() == 1 })
	p.Update(Config{Members: members(a.addr, b.addr), Health: h})
	waitFor(t, "the new member's check", func() bool { return b.accepted.Load() == 1 })
	if n := a.accepted.Load(); n > 2 {
		t.Errorf("a checked %d times within an hour's interval", n)
	}
}

func TestRunFollowsInterval(t *testing.T) {
	a := newFake(t, "a", false)
	p, _ := newPool(Config{Members: members(a.addr)})
	runPool(t, p)
	time.Sleep(50 * time.Millisecond)
	if n := a.accepted.Load(); n != 0 {
		t.Fatalf("checks off, yet %d checks", n)
	}
	p.Update(Config{Members: members(a.addr), Health: quickChecks})
	waitFor(t, "checks turned on by Update", func() bool { return a.accepted.Load() >= 3 })
	p.Update(Config{Members: members(a.addr)})
	time.Sleep(100 * time.Millisecond) // a round may be under way
	n := a.accepted.Load()
	time.Sleep(200 * time.Millisecond)
	if m := a.accepted.Load(); m != n {
		t.Errorf("checks turned off, yet %d more", m-n)
	}
}

func TestRunStopsDuringCheck(t *testing.T) {
	a := newFake(t, "a", false)
	a.mode.Store(stall)
	p, rec := newPool(Config{Members: members(a.addr), Health: Health{Interval: time.Hour, Timeout: time.Hour, Fall: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitFor(t, "the check to connect", func() bool { return a.open() == 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if p.Status()[0].State != Up || len(rec.find("upstream server down", a.addr)) != 0 {
		t.Error("shutting down counted as the server's failure")
	}
}

func TestQuitBounded(t *testing.T) {
	// A server that greets and then ignores QUIT costs a check at most
	// quitWait more, however long its timeout.
	f := newFake(t, "f", false)
	f.mode.Store(mute)
	start := time.Now()
	if err := check(context.Background(), f.addr, time.Minute, ProxyOff); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > quitWait+5*time.Second {
		t.Errorf("check took %v against a server ignoring QUIT", d)
	}
}
