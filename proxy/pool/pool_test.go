package pool

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	for _, p := range []Policy{RoundRobin, LeastConn, Source, User} {
		got, err := ParsePolicy(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %v", p.String(), got, err, p)
		}
	}
	for _, s := range []string{"", "roundrobin", "Round-Robin", "random"} {
		if _, err := ParsePolicy(s); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", s)
		}
	}
	if s := Policy(9).String(); s != "policy(9)" {
		t.Errorf("Policy(9).String() = %q", s)
	}
}

func TestParseProxyProtocol(t *testing.T) {
	for s, want := range map[string]ProxyProtocol{"": ProxyOff, "off": ProxyOff, "v1": ProxyV1, "v2": ProxyV2} {
		got, err := ParseProxyProtocol(s)
		if err != nil || got != want {
			t.Errorf("ParseProxyProtocol(%q) = %v, %v; want %v", s, got, err, want)
		}
		if s != "" && got.String() != s {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), s)
		}
	}
	for _, s := range []string{"on", "v3", "V1", "2"} {
		if _, err := ParseProxyProtocol(s); err == nil {
			t.Errorf("ParseProxyProtocol(%q) accepted", s)
		}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Up: "up", Down: "down", Drain: "drain", State(7): "state(7)"} {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q, want %q", s, s.String(), want)
		}
	}
}

func TestNoServer(t *testing.T) {
	a := newFake(t, "a", false)
	for name, ms := range map[string][]Member{
		"no members":  nil,
		"all drained": {{Addr: a.addr, Weight: 0}, {Addr: refusedAddr(t), Weight: 0}},
		"negative":    {{Addr: a.addr, Weight: -1}},
	} {
		p, _ := newPool(Config{Name: "p", Members: ms})
		_, err := p.Dial(context.Background(), nil, Key{})
		if !errors.Is(err, ErrNoServer) {
			t.Errorf("%s: Dial error %v, want ErrNoServer", name, err)
		}
	}
	if n := a.accepted.Load(); n != 0 {
		t.Errorf("a drained server got %d connections", n)
	}
}

func TestConfigAndDefaults(t *testing.T) {
	cfg := Config{Name: "p", Members: members("192.0.2.1:21"), Policy: LeastConn, ProxyProtocol: ProxyV2}
	p := New(cfg, nil)
	got := p.Config()
	if got.Name != "p" || got.Policy != LeastConn || got.ProxyProtocol != ProxyV2 || len(got.Members) != 1 {
		t.Errorf("Config() = %+v", got)
	}
	got.Members[0].Weight = 9 // a copy: the pool's must not change
	cfg.Members[0].Weight = 8 // nor through the caller's slice
	if w := p.Status()[0].Weight; w != 1 {
		t.Errorf("weight changed to %d through a slice", w)
	}
	if h := p.health; h.Timeout != DefaultTimeout || h.Fall != DefaultFall || h.Rise != DefaultRise || h.Interval != 0 {
		t.Errorf("defaults: %+v", h)
	}
}

func TestDuplicateAddrIgnored(t *testing.T) {
	p := New(Config{Members: []Member{{Addr: "192.0.2.1:21", Weight: 1}, {Addr: "192.0.2.2:21", Weight: 1}, {Addr: "192.0.2.1:21", Weight: 5}}}, nil)
	st := p.Status()
	if len(st) != 2 || st[0].Weight != 1 {
		t.Errorf("Status = %+v, want two members, the first entry's weight", st)
	}
}

func TestConnCloseOnce(t *testing.T) {
	a := newFake(t, "a", false)
	p, _ := newPool(Config{Members: members(a.addr)})
	c1, c2 := dial(t, p, Key{}), dial(t, p, Key{})
	if n := statusOf(t, p, a.addr).Sessions; n != 2 {
		t.Fatalf("sessions %d, want 2", n)
	}
	c1.Close()
	c1.Close()
	if n := statusOf(t, p, a.addr).Sessions; n != 1 {
		t.Errorf("sessions %d after closing one Conn twice, want 1", n)
	}
	c2.Close()
	if n := statusOf(t, p, a.addr).Sessions; n != 0 {
		t.Errorf("sessions %d after closing both, want 0", n)
	}
}

func TestUpdateKeepsState(t *testing.T) {
	a, c := newFake(t, "a", false), newFake(t, "c", false)
	b := refusedAddr(t)
	p, rec := newPool(Config{Name: "p", Members: members(a.addr, b)})
	p.retry = time.Hour

	held := dial(t, p, Key{}) // a
	dial(t, p, Key{}).Close() // b refused: marked down, goes to a
	if held.Member != a.addr {
		t.Fatalf("first Dial went to %s, want %s", held.Member, a.addr)
	}
	st := statusOf(t, p, b)
	if st.State != Down || st.Reason == "" {
		t.Fatalf("refused member: %+v, want Down with a reason", st)
	}
	since := st.Since

	p.Update(Config{Name: "p", Members: []Member{{Addr: b, Weight: 1}, {Addr: a.addr, Weight: 2}, {Addr: c.addr, Weight: 1}}})
	got := p.Status()
	if len(got) != 3 || got[0].Addr != b || got[1].Addr != a.addr || got[2].Addr != c.addr {
		t.Fatalf("Status not in the new member order: %+v", got)
	}
	if got[0].State != Down || !got[0].Since.Equal(since) || got[0].Reason != st.Reason || got[0].Changes[Down] != 1 {
		t.Errorf("kept Down member lost its state: %+v", got[0])
	}
	if got[1].Sessions != 1 || got[1].Weight != 2 || got[1].State != Up {
		t.Errorf("kept member: %+v, want 1 session, weight 2, up", got[1])
	}
	if got[2].State != Up || got[2].Sessions != 0 {
		t.Errorf("new member: %+v, want Up (optimistic)", got[2])
	}
	held.Close()
	if n := statusOf(t, p, a.addr).Sessions; n != 0 {
		t.Errorf("sessions %d after Close, want 0", n)
	}
	if n := len(rec.find("upstream server up", a.addr)); n != 0 {
		t.Errorf("a weight change from 1 to 2 logged %d state changes", n)
	}
}

func TestUpdateRemovedMember(t *testing.T) {
	a, b := newFake(t, "a", false), newFake(t, "b", false)
	p, _ := newPool(Config{Name: "p", Members: members(a.addr, b.addr)})
	held := dial(t, p, Key{})
	if held.Member != a.addr {
		t.Fatalf("first Dial went to %s", held.Member)
	}
	p.Update(Config{Name: "p", Members: members(b.addr)})
	for range 5 {
		c := dial(t, p, Key{})
		if c.Member != b.addr {
			t.Errorf("Dial after removal went to %s", c.Member)
		}
		c.Close()
	}
	// The removed member's session goes on, and ends without harm.
	if _, err := held.Write([]byte("NOOP\r\n")); err != nil {
		t.Errorf("session to a removed member broken: %v", err)
	}
	held.Close()
	held.Close()
	// Added again, it starts afresh.
	p.Update(Config{Name: "p", Members: members(a.addr, b.addr)})
	if st := statusOf(t, p, a.addr); st.Sessions != 0 || st.State != Up {
		t.Errorf("re-added member: %+v", st)
	}
}

func TestDrainByUpdate(t *testing.T) {
	a, b := newFake(t, "a", false), newFake(t, "b", false)
	p, rec := newPool(Config{Name: "p", Members: members(a.addr, b.addr)})
	held := dial(t, p, Key{}) // a
	p.Update(Config{Name: "p", Members: []Member{{Addr: a.addr, Weight: 0}, {Addr: b.addr, Weight: 1}}})
	p.Update(Config{Name: "p", Members: []Member{{Addr: a.addr, Weight: 0}, {Addr: b.addr, Weight: 1}}}) // again: no new change

	st := statusOf(t, p, a.addr)
	if st.State != Drain || st.Sessions != 1 || st.Changes[Drain] != 1 {
		t.Errorf("drained member: %+v", st)
	}
	logs := rec.find("upstream server draining", a.addr)
	if len(logs) != 1 {
		t.Fatalf("draining logged %d times, want once", len(logs))
	}
	if logs[0].attrs["pool"] != "p" || logs[0].attrs["reason"] == "" {
		t.Errorf("draining log attributes: %v", logs[0].attrs)
	}
	waitFor(t, "a to accept its session", func() bool { return a.accepted.Load() == 1 })
	for range 10 {
		c := dial(t, p, Key{})
		if c.Member != b.addr {
			t.Errorf("Dial picked drained %s", c.Member)
		}
		c.Close()
	}
	time.Sleep(50 * time.Millisecond) // for a stray connect to be accepted
	if n := a.accepted.Load(); n != 1 {
		t.Errorf("a drained server was connected to (%d connections)", n-1)
	}
	// Its open session is untouched.
	if got := greeting(t, held); got != "220 a ready" {
		t.Errorf("drained member's session read %q", got)
	}
	held.Close()

	p.Update(Config{Name: "p", Members: members(a.addr, b.addr)})
	if st := statusOf(t, p, a.addr); st.State != Up {
		t.Errorf("undrained member %v", st.State)
	}
	if n := len(rec.find("upstream server up", a.addr)); n != 1 {
		t.Errorf("undrain logged up %d times, want once", n)
	}
}

func TestUpdateTurnsChecksOffRetries(t *testing.T) {
	p, _ := newPool(Config{Members: members("192.0.2.1:21"), Health: Health{Interval: time.Hour}})
	p.retry = 10 * time.Millisecond
	markDown(p, "192.0.2.1:21", "x")
	time.Sleep(20 * time.Millisecond)
	if st := p.Status()[0]; st.State != Down {
		t.Fatalf("with checks on, a Down member came back by itself: %v", st.State)
	}
	p.Update(Config{Members: members("192.0.2.1:21")})
	waitFor(t, "retry with checks off", func() bool { return p.Status()[0].State == Up })
}

// TestConcurrentUse runs everything at once, for the race detector.
func TestConcurrentUse(t *testing.T) {
	a, b, c := newFake(t, "a", false), newFake(t, "b", false), newFake(t, "c", false)
	refused := refusedAddr(t)
	cfgs := []Config{
		{Name: "p", Members: members(a.addr, b.addr, refused), Policy: LeastConn, Health: Health{Interval: 5 * time.Millisecond, Timeout: time.Second, Fall: 1, Rise: 1}},
		{Name: "p", Members: []Member{{Addr: a.addr, Weight: 0}, {Addr: c.addr, Weight: 3}}, Policy: Source, Health: Health{Interval: 5 * time.Millisecond, Timeout: time.Second}},
		{Name: "p", Members: members(c.addr, b.addr), Policy: RoundRobin},
	}
	p, _ := newPool(cfgs[0])
	p.retry = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	run.Go(func() { p.Run(ctx) })

	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				k := Key{Client: netipAddrPort(g, i), User: "u"}
				conn, err := p.Dial(context.Background(), &net.Dialer{Timeout: 5 * time.Second}, k)
				if err != nil {
					if !errors.Is(err, ErrNoServer) {
						t.Errorf("Dial: %v", err)
					}
					continue
				}
				conn.Close()
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			p.Update(cfgs[i%len(cfgs)])
			p.Status()
			p.Config()
		}
	})
	wg.Wait()
	cancel()
	run.Wait()
	for _, st := range p.Status() {
		if st.Sessions != 0 {
			t.Errorf("%s: %d sessions left after every Conn closed", st.Addr, st.Sessions)
		}
	}
}
