package pool

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFailoverRefused(t *testing.T) {
	b := newFake(t, "b", false)
	refused := refusedAddr(t)
	for _, pol := range []Policy{RoundRobin, LeastConn, Source, User} {
		t.Run(pol.String(), func(t *testing.T) {
			p, rec := newPool(Config{Name: "p", Members: members(refused, b.addr), Policy: pol})
			p.retry = time.Hour
			for i := range 20 {
				c := dial(t, p, Key{Client: netipAddrPort(0, i), User: "u" + string(rune('a'+i))})
				if c.Member != b.addr {
					t.Errorf("Dial %d went to %s", i, c.Member)
				}
				if got := greeting(t, c); got != "220 b ready" {
					t.Errorf("client read %q", got)
				}
				c.Close()
			}
			st := statusOf(t, p, refused)
			if st.State != Down || !strings.Contains(st.Reason, "refused") || st.Changes[Down] != 1 {
				t.Errorf("refusing member: %+v, want Down, reason 'refused', one change", st)
			}
			logs := rec.find("upstream server down", refused)
			if len(logs) != 1 {
				t.Fatalf("down logged %d times, want once", len(logs))
			}
			if logs[0].level != slog.LevelWarn || logs[0].attrs["pool"] != "p" || !strings.Contains(logs[0].attrs["reason"], "refused") {
				t.Errorf("down log: %+v", logs[0])
			}
		})
	}
}

func TestAllDownStillTried(t *testing.T) {
	a, b := newFake(t, "a", false), newFake(t, "b", false)
	// Checks on (but not running), so nothing brings them back by itself.
	p, _ := newPool(Config{Members: members(a.addr, b.addr), Health: Health{Interval: time.Hour}})
	markDown(p, a.addr, "test")
	for range 3 {
		c := dial(t, p, Key{})
		if c.Member != b.addr {
			t.Errorf("with a down, Dial went to %s", c.Member)
		}
		c.Close()
	}
	markDown(p, b.addr, "test")
	c := dial(t, p, Key{})
	if got := greeting(t, c); !strings.HasPrefix(got, "220 ") {
		t.Errorf("all down: the client read %q", got)
	}
	c.Close()
	if st := statusOf(t, p, c.Member); st.State != Down {
		t.Errorf("with checks on, a connect put %s back as %v: the checks should", c.Member, st.State)
	}
}

func TestAllRefused(t *testing.T) {
	r1, r2 := refusedAddr(t), refusedAddr(t)
	p, _ := newPool(Config{Name: "p", Members: members(r1, r2)})
	p.retry = time.Hour
	for range 2 { // the second time, both are Down and tried all the same
		_, err := p.Dial(context.Background(), nil, Key{})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("Dial error %v, want it to wrap ECONNREFUSED", err)
		}
		if !strings.Contains(err.Error(), r1) || !strings.Contains(err.Error(), r2) {
			t.Errorf("error %q does not name both servers", err)
		}
	}
}

func TestRetryWithChecksOff(t *testing.T) {
	b := newFake(t, "b", false)
	refused := refusedAddr(t)
	p, rec := newPool(Config{Name: "p", Members: members(refused, b.addr)})
	p.retry = 50 * time.Millisecond
	dial(t, p, Key{}).Close()
	if st := statusOf(t, p, refused); st.State != Down {
		t.Fatalf("refusing member %v", st.State)
	}
	waitFor(t, "the member to be retried", func() bool { return statusOf(t, p, refused).State == Up })
	if n := len(rec.find("upstream server up", refused)); n != 1 {
		t.Errorf("retry logged up %d times, want once", n)
	}
}

func TestDownMemberAnswersWithChecksOff(t *testing.T) {
	a := newFake(t, "a", false)
	p, rec := newPool(Config{Members: members(a.addr)})
	p.retry = time.Hour
	markDown(p, a.addr, "test")
	dial(t, p, Key{}).Close()
	if st := statusOf(t, p, a.addr); st.State != Up {
		t.Errorf("a Down member that answered, with no checks to say so: %v", st.State)
	}
	if n := len(rec.find("upstream server up", a.addr)); n != 1 {
		t.Errorf("up logged %d times", n)
	}
}

func TestLocalErrorMarksNothing(t *testing.T) {
	a, b := newFake(t, "a", false), newFake(t, "b", false)
	p, _ := newPool(Config{Members: members(a.addr, b.addr)})
	calls := 0
	d := &net.Dialer{Timeout: time.Second, Control: func(string, string, syscall.RawConn) error {
		calls++
		return syscall.EMFILE
	}}
	_, err := p.Dial(context.Background(), d, Key{})
	if !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("Dial error %v does not wrap EMFILE", err)
	}
	if calls != 1 {
		t.Errorf("%d connects tried after EMFILE, want 1: the next would fail alike", calls)
	}
	for _, st := range p.Status() {
		if st.State != Up || st.Sessions != 0 {
			t.Errorf("%s after this host's EMFILE: %+v", st.Addr, st)
		}
	}
	p.mu.Lock()
	for _, m := range p.members {
		if m.dialing != 0 {
			t.Errorf("%s: %d connects still counted", m.addr, m.dialing)
		}
	}
	p.mu.Unlock()
}

func TestCanceledMarksNothing(t *testing.T) {
	a := newFake(t, "a", false)
	p, _ := newPool(Config{Members: members(a.addr, refusedAddr(t))})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Dial(ctx, nil, Key{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial error %v, want context.Canceled", err)
	}
	for _, st := range p.Status() {
		if st.State != Up {
			t.Errorf("%s marked %v by the caller's cancel", st.Addr, st.State)
		}
	}
}

func TestDialTimeoutMarksDown(t *testing.T) {
	b := newFake(t, "b", false)
	slow := "192.0.2.1:21" // never dialled: Control stands in for a blackhole
	p, _ := newPool(Config{Members: members(slow, b.addr)})
	p.retry = time.Hour
	d := &net.Dialer{Timeout: time.Second, Control: func(_, addr string, _ syscall.RawConn) error {
		if addr == slow {
			return &timeoutError{}
		}
		return nil
	}}
	c, err := p.Dial(context.Background(), d, Key{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if st := statusOf(t, p, slow); st.State != Down || !strings.Contains(st.Reason, "timeout") {
		t.Errorf("timed-out member: %+v", st)
	}
}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "i/o timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }
