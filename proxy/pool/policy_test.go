package pool

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// netipAddrPort is a distinct IPv4 client per (g, i).
func netipAddrPort(g, i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(g), byte(i)}), uint16(1024+i))
}

// fakes starts n fake servers named a, b, c, ...
func fakes(t *testing.T, n int) ([]*fakeServer, []string) {
	var fs []*fakeServer
	var addrs []string
	for i := range n {
		f := newFake(t, string(rune('a'+i)), false)
		fs = append(fs, f)
		addrs = append(addrs, f.addr)
	}
	return fs, addrs
}

// names maps addresses to the fakes' names, for readable failures.
func names(fs []*fakeServer) map[string]string {
	m := map[string]string{}
	for _, f := range fs {
		m[f.addr] = f.name
	}
	return m
}

func TestRoundRobinEven(t *testing.T) {
	fs, addrs := fakes(t, 3)
	p, _ := newPool(Config{Members: members(addrs...)})
	name := names(fs)
	var seq strings.Builder
	for range 9 {
		c := dial(t, p, Key{})
		if got, want := greeting(t, c), "220 "+name[c.Member]+" ready"; got != want {
			t.Errorf("Conn to %s read %q, want %q", c.Member, got, want)
		}
		seq.WriteString(name[c.Member])
		c.Close()
	}
	if seq.String() != "abcabcabc" {
		t.Errorf("round-robin order %s, want abcabcabc", seq.String())
	}
}

func TestRoundRobinWeighted(t *testing.T) {
	fs, addrs := fakes(t, 3)
	name := names(fs)
	// nginx's example: smooth, the heavy member's turns spread out.
	p, _ := newPool(Config{Members: []Member{{addrs[0], 5}, {addrs[1], 1}, {addrs[2], 1}}})
	var seq strings.Builder
	for range 14 {
		c := dial(t, p, Key{})
		seq.WriteString(name[c.Member])
		c.Close()
	}
	if seq.String() != "aabacaaaabacaa" {
		t.Errorf("smooth weighted order %s, want aabacaa twice", seq.String())
	}

	p, _ = newPool(Config{Members: []Member{{addrs[0], 3}, {addrs[1], 2}, {addrs[2], 1}}})
	count := map[string]int{}
	for range 60 {
		c := dial(t, p, Key{})
		count[name[c.Member]]++
		c.Close()
	}
	if count["a"] != 30 || count["b"] != 20 || count["c"] != 10 {
		t.Errorf("weights 3:2:1 over 60 dials gave %v", count)
	}
}

func TestLeastConnHeld(t *testing.T) {
	fs, addrs := fakes(t, 3)
	name := names(fs)
	p, _ := newPool(Config{Members: members(addrs...), Policy: LeastConn})
	held := map[string][]*Conn{}
	for range 6 {
		c := dial(t, p, Key{})
		held[name[c.Member]] = append(held[name[c.Member]], c)
	}
	for _, n := range []string{"a", "b", "c"} {
		if len(held[n]) != 2 {
			t.Fatalf("6 held sessions over 3 servers: %s has %d", n, len(held[n]))
		}
	}
	for _, c := range held["b"] {
		c.Close()
	}
	for range 2 {
		c := dial(t, p, Key{})
		if name[c.Member] != "b" {
			t.Errorf("with b emptied, least-conn picked %s", name[c.Member])
		}
		defer c.Close()
	}
	for _, f := range fs {
		waitFor(t, "fake servers to see the sessions", func() bool { return f.open() == 2 })
	}
	for _, st := range p.Status() {
		if st.Sessions != 2 {
			t.Errorf("%s: %d sessions, want 2", name[st.Addr], st.Sessions)
		}
	}
}

func TestLeastConnWeighted(t *testing.T) {
	fs, addrs := fakes(t, 2)
	name := names(fs)
	p, _ := newPool(Config{Members: []Member{{addrs[0], 2}, {addrs[1], 1}}, Policy: LeastConn})
	count := map[string]int{}
	for range 9 {
		c := dial(t, p, Key{})
		count[name[c.Member]]++
		defer c.Close()
	}
	if count["a"] != 6 || count["b"] != 3 {
		t.Errorf("held sessions by weight 2:1: %v, want a:6 b:3", count)
	}

	// Idle (every Conn closed at once): ties go by weight too.
	p, _ = newPool(Config{Members: []Member{{addrs[0], 2}, {addrs[1], 1}}, Policy: LeastConn})
	count = map[string]int{}
	for range 30 {
		c := dial(t, p, Key{})
		count[name[c.Member]]++
		c.Close()
	}
	if count["a"] != 20 || count["b"] != 10 {
		t.Errorf("idle least-conn ties by weight 2:1: %v, want a:20 b:10", count)
	}
}

func TestSourceSticky(t *testing.T) {
	fs, addrs := fakes(t, 3)
	name := names(fs)
	p, _ := newPool(Config{Members: members(addrs...), Policy: Source})
	count := map[string]int{}
	for i := range 60 {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		first := ""
		for port := range 3 {
			c := dial(t, p, Key{Client: netip.AddrPortFrom(ip, uint16(40000+port))})
			c.Close()
			if first == "" {
				first = c.Member
				count[name[c.Member]]++
			} else if c.Member != first {
				t.Errorf("client %s went to %s, then %s", ip, name[first], name[c.Member])
			}
		}
		// A dual-stack listener's view of the same client.
		c := dial(t, p, Key{Client: netip.AddrPortFrom(netip.AddrFrom16(ip.As16()), 1)})
		c.Close()
		if c.Member != first {
			t.Errorf("client %s as IPv4-mapped went to %s, not %s", ip, name[c.Member], name[first])
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		if count[n] < 5 {
			t.Errorf("60 clients spread as %v: %s nearly unused", count, n)
		}
	}
}

func TestSourceStickyIPv6Prefix(t *testing.T) {
	fs, addrs := fakes(t, 3)
	name := names(fs)
	p, _ := newPool(Config{Members: members(addrs...), Policy: Source})
	count := map[string]int{}
	for i := range 60 {
		prefix := fmt.Sprintf("2001:db8:%x:%x:", i, i*7)
		first := ""
		for _, host := range []string{"0:0:0:1", "0:0:0:2", "ffff:1:2:3", "a:b:c:d"} {
			c := dial(t, p, Key{Client: netip.AddrPortFrom(netip.MustParseAddr(prefix+host), 50000)})
			c.Close()
			if first == "" {
				first = c.Member
				count[name[c.Member]]++
			} else if c.Member != first {
				t.Errorf("one /64 (%s) split over %s and %s", prefix, name[first], name[c.Member])
			}
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		if count[n] < 5 {
			t.Errorf("60 /64s spread as %v: %s nearly unused", count, n)
		}
	}
}

func TestUserSticky(t *testing.T) {
	fs, addrs := fakes(t, 3)
	name := names(fs)
	p, _ := newPool(Config{Members: members(addrs...), Policy: User})
	count := map[string]int{}
	for i := range 60 {
		user := fmt.Sprintf("user%d", i)
		first := ""
		for j := range 3 {
			// From another address each time: only the name counts.
			c := dial(t, p, Key{Client: netipAddrPort(j, i), User: user})
			c.Close()
			if first == "" {
				first = c.Member
				count[name[c.Member]]++
			} else if c.Member != first {
				t.Errorf("user %s went to %s, then %s", user, name[first], name[c.Member])
			}
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		if count[n] < 5 {
			t.Errorf("60 users spread as %v: %s nearly unused", count, n)
		}
	}
}

// picks returns, for each key, the member the pool would try first.
func picks(p *Pool, pol Policy, keys []Key) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, len(keys))
	for i, k := range keys {
		c := p.candidatesLocked(k)
		if len(c) > 0 {
			out[i] = c[0].addr
		}
	}
	return out
}

func TestRendezvousMovesOnlyDownKeys(t *testing.T) {
	addrs := []string{"192.0.2.1:21", "192.0.2.2:21", "192.0.2.3:21", "192.0.2.4:21"}
	for _, pol := range []Policy{Source, User} {
		t.Run(pol.String(), func(t *testing.T) {
			p := New(Config{Members: members(addrs...), Policy: pol, Health: Health{Interval: time.Hour}}, nil)
			var keys []Key
			for i := range 4000 {
				keys = append(keys, Key{Client: netipAddrPort(i/256, i%256), User: fmt.Sprint("u", i)})
			}
			before := picks(p, pol, keys)
			markDown(p, addrs[1], "test")
			during := picks(p, pol, keys)
			movedTo := map[string]int{}
			for i := range keys {
				switch {
				case before[i] != addrs[1] && during[i] != before[i]:
					t.Fatalf("key %d moved from %s (up) to %s", i, before[i], during[i])
				case before[i] == addrs[1] && during[i] == addrs[1]:
					t.Fatalf("key %d stayed on the down member", i)
				case before[i] == addrs[1]:
					movedTo[during[i]]++
				}
			}
			for _, a := range []string{addrs[0], addrs[2], addrs[3]} {
				if movedTo[a] < 100 {
					t.Errorf("the down member's keys went %v: not spread", movedTo)
				}
			}
			p.mu.Lock()
			p.markUpLocked(p.members[1], p.members[1].since, "test")
			p.mu.Unlock()
			after := picks(p, pol, keys)
			for i := range keys {
				if after[i] != before[i] {
					t.Fatalf("key %d: %s before, %s after coming back", i, before[i], after[i])
				}
			}
			// Drained: the same as down for the other keys.
			p.Update(Config{Members: []Member{{addrs[0], 1}, {addrs[1], 0}, {addrs[2], 1}, {addrs[3], 1}}, Policy: pol})
			drained := picks(p, pol, keys)
			for i := range keys {
				if drained[i] != during[i] {
					t.Fatalf("key %d: %s with the member down, %s with it drained", i, during[i], drained[i])
				}
			}
		})
	}
}

func TestRendezvousWeighted(t *testing.T) {
	addrs := []string{"192.0.2.1:21", "192.0.2.2:21", "192.0.2.3:21"}
	p := New(Config{Members: []Member{{addrs[0], 1}, {addrs[1], 2}, {addrs[2], 3}}, Policy: User}, nil)
	var keys []Key
	for i := range 12000 {
		keys = append(keys, Key{User: fmt.Sprint("user-", i)})
	}
	count := map[string]int{}
	for _, a := range picks(p, User, keys) {
		count[a]++
	}
	for i, a := range addrs {
		want := float64(len(keys)) * float64(i+1) / 6
		if got := float64(count[a]); math.Abs(got-want) > 0.1*want {
			t.Errorf("weight %d of 6: %v keys, want about %v", i+1, got, want)
		}
	}
}

func TestCandidateOrder(t *testing.T) {
	addrs := []string{"192.0.2.1:21", "192.0.2.2:21", "192.0.2.3:21", "192.0.2.4:21"}
	for _, pol := range []Policy{RoundRobin, LeastConn, Source, User} {
		p := New(Config{Members: []Member{{addrs[0], 1}, {addrs[1], 1}, {addrs[2], 0}, {addrs[3], 1}}, Policy: pol}, nil)
		markDown(p, addrs[0], "test")
		for i := range 10 {
			p.mu.Lock()
			c := p.candidatesLocked(Key{Client: netipAddrPort(1, i), User: fmt.Sprint(i)})
			p.mu.Unlock()
			var got []string
			for _, m := range c {
				got = append(got, m.addr)
			}
			if len(got) != 3 || got[2] != addrs[0] {
				t.Errorf("%v: candidates %v: want 3, the down member last, no drained one", pol, got)
			}
		}
	}
}

func TestScoreSpread(t *testing.T) {
	// Keys that differ only at the end must not score alike.
	seen := map[float64]bool{}
	for i := range 1000 {
		seen[score([]byte(fmt.Sprint("user", i)), "192.0.2.1:21", 1)] = true
	}
	if len(seen) != 1000 {
		t.Errorf("1000 keys gave %d distinct scores", len(seen))
	}
}
