package pool

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// download is what one session that downloaded lab.DataFile saw.
type download struct {
	src     string // the client address it came from
	client  netip.AddrPort
	greeter *lab.Server // the server whose greeting the client got
	backend string      // the server pasvgate's log names for the session
	sum     string
	err     error
}

// downloads runs n sessions, at most workers at a time, session i from
// srcs[i%len(srcs)]: each logs in with the account of the server that
// greets it, downloads lab.DataFile twice and quits. The whole run is bounded
// by 2 minutes.
func (p *poolLab) downloads(ctx context.Context, n, workers int, srcs []string) []download {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res := make([]download, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				res[i] = p.downloadOnce(ctx, srcs[i%len(srcs)])
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return res
}

func (p *poolLab) downloadOnce(ctx context.Context, src string) download {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d := download{src: src}
	s, err := p.dial(ctx, src)
	if err != nil {
		d.err = err
		return d
	}
	defer s.close()
	d.client, d.greeter = s.client, p.greeter(s.greet)
	if d.err = s.login(); d.err != nil {
		return d
	}
	if d.backend, d.err = p.backendOf(d.client); d.err != nil {
		return d
	}
	if d.sum, d.err = s.retr(ctx); d.err != nil {
		return d
	}
	// A second data connection of the same session must reach the same
	// server: pasvgate maps each to the server whose 227 it rewrote.
	again, err := s.retr(ctx)
	if err == nil && again != d.sum {
		err = fmt.Errorf("the session's second download has sha256 %s, its first %s", again, d.sum)
	}
	d.err = err
	return d
}

// checkDownloads fails t for every session that failed, got bytes of no
// server's file, or got them from a server other than its own (the one
// pasvgate's log names for it, and whose greeting it got). It returns the
// sessions per server, and the servers each source address reached.
func (p *poolLab) checkDownloads(t *testing.T, ds []download) (map[*lab.Server]int, map[string]map[*lab.Server]int) {
	t.Helper()
	counts := map[*lab.Server]int{}
	bySrc := map[string]map[*lab.Server]int{}
	for i, d := range ds {
		if d.err != nil {
			t.Errorf("session %d from %s: %v", i, d.src, d.err)
			continue
		}
		from := p.serverBySum(d.sum)
		if from == nil {
			t.Errorf("session %d from %s: downloaded sha256 %s, no server's file", i, d.src, d.sum)
			continue
		}
		backend := d.backend
		if own := p.serverAt(backend); own != from || d.greeter != from {
			t.Errorf("session %d from %v: data from %s, greeting from %v, pasvgate's log says backend=%s: want one server",
				i, d.client, from.Kind, kindOf(d.greeter), backend)
			continue
		}
		counts[from]++
		if bySrc[d.src] == nil {
			bySrc[d.src] = map[*lab.Server]int{}
		}
		bySrc[d.src][from]++
	}
	return counts, bySrc
}

func kindOf(s *lab.Server) string {
	if s == nil {
		return "none"
	}
	return s.Kind
}

// settle waits until pasvgate has ended every session it started (the
// WaitFTP probe's, a previous step's), so that least-conn counts only
// what the test holds.
func (p *poolLab) settle(t *testing.T) {
	t.Helper()
	n := p.pg.Sessions()
	out := p.pg.WaitSessions(n, 5*time.Second)
	if started, ended := len(logLines(out, "session started")), len(logLines(out, "session ended")); started != ended {
		t.Fatalf("pasvgate still has %d of %d sessions open", started-ended, started)
	}
}

// TestPolicies runs the pool under each policy on one lab, each step with
// a freshly started pasvgate, and logs the distribution figures of the
// closing note ("distribution POLICY: vsftpd=N pure-ftpd=N proftpd=N").
// Every download must be byte-exact and from the session's own server.
func TestPolicies(t *testing.T) {
	t.Parallel()
	p := newPoolLab(t, lab.Options{})
	const n = 30 // a multiple of the pool's size: round-robin is exact

	t.Run("round-robin", func(t *testing.T) {
		p.start(t, append(upstreamArgs(), "--balance", "round-robin")...)
		counts, _ := p.checkDownloads(t, p.downloads(t.Context(), n, 3, []string{lab.ClientAddr}))
		t.Logf("distribution round-robin: %s", p.countBy(counts))
		// Each session makes one pick, in the order they arrive: n
		// consecutive picks of smooth weighted round-robin over three
		// equal weights are exactly even, whatever the interleaving.
		for _, s := range p.servers {
			if counts[s] != n/3 {
				t.Errorf("round-robin: %s served %d of %d sessions, want %d (%s)", s.Kind, counts[s], n, n/3, p.countBy(counts))
			}
		}
	})

	t.Run("least-conn", func(t *testing.T) {
		p.start(t, append(upstreamArgs(), "--balance", "least-conn")...)
		p.settle(t)
		p.leastConnHeld(t)
		p.settle(t)
		counts, _ := p.checkDownloads(t, p.downloads(t.Context(), n, 3, []string{lab.ClientAddr}))
		t.Logf("distribution least-conn: %s", p.countBy(counts))
		// Three sessions at a time: each new one goes to a server with
		// the fewest open, so no server is left out for long. (Not an
		// exact figure: when a session's end is counted races with the
		// next session's pick.)
		for _, s := range p.servers {
			if counts[s] < n/6 {
				t.Errorf("least-conn: %s served %d of %d sessions, want at least %d (%s)", s.Kind, counts[s], n, n/6, p.countBy(counts))
			}
		}
	})

	t.Run("source", func(t *testing.T) {
		p.start(t, append(upstreamArgs(), "--balance", "source")...)
		srcs := []string{lab.ClientAddr, lab.IntruderAddr}
		counts, bySrc := p.checkDownloads(t, p.downloads(t.Context(), n, 3, srcs))
		var sticky []string
		for _, src := range srcs {
			if len(bySrc[src]) != 1 {
				t.Errorf("source: sessions from %s went to %s, want all to one server", src, p.countBy(bySrc[src]))
			}
			for s := range bySrc[src] {
				sticky = append(sticky, src+"->"+s.Kind)
			}
		}
		t.Logf("distribution source: %s (%s)", p.countBy(counts), strings.Join(sticky, " "))
	})

	t.Run("user", func(t *testing.T) { p.userPolicy(t) })

	t.Run("killed", func(t *testing.T) { p.killed(t) })
}

// held is a session the test keeps open, and the server pasvgate gave it.
type held struct {
	s      *session
	server *lab.Server
}

// openHeld opens a logged-in session from the client and learns its
// server from pasvgate's log (and checks the greeting agrees).
func (p *poolLab) openHeld(t *testing.T) held {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s, err := p.dial(ctx, lab.ClientAddr)
	if err != nil {
		t.Fatal(err)
	}
	// Idle but held for the rest of the test: no deadline of the dial's.
	_ = s.nc.SetDeadline(time.Now().Add(2 * time.Minute))
	t.Cleanup(s.close)
	if err := s.login(); err != nil {
		t.Fatal(err)
	}
	backend, err := p.backendOf(s.client)
	if err != nil {
		t.Fatal(err)
	}
	srv := p.serverAt(backend)
	if srv == nil || p.greeter(s.greet) != srv {
		t.Fatalf("session %v: backend %s, greeting from %s", s.client, backend, kindOf(p.greeter(s.greet)))
	}
	return held{s, srv}
}

// leastConnHeld shows least-conn with idle sessions held open: six
// sessions opened one after the other spread two per server (each goes to
// a server with the fewest); once the two on one server are closed, the
// next two both go to that server, where round-robin would spread them.
func (p *poolLab) leastConnHeld(t *testing.T) {
	t.Helper()
	var hs []held
	counts := map[*lab.Server]int{}
	for range 6 {
		h := p.openHeld(t)
		hs = append(hs, h)
		counts[h.server]++
	}
	t.Logf("least-conn, 6 sessions held: %s", p.countBy(counts))
	for _, s := range p.servers {
		if counts[s] != 2 {
			t.Fatalf("least-conn: 6 held sessions spread %s, want 2 each", p.countBy(counts))
		}
	}
	emptied := hs[0].server
	for _, h := range hs {
		if h.server == emptied {
			h.s.close()
			if err := p.waitEnded(h.s.client); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 2 {
		h := p.openHeld(t)
		hs = append(hs, h)
		if h.server != emptied {
			t.Errorf("least-conn: new session %d with %s emptied and the others holding 2 went to %s, want %s",
				i+1, emptied.Kind, h.server.Kind, emptied.Kind)
		}
	}
	// All closed here, not at the end of the test, so that the next
	// step starts with no session open.
	for _, h := range hs {
		h.s.close()
	}
}

// userNames are the login names of the user policy's test. Only
// "anonymous" (vsftpd) and the lab's user (pure-ftpd, ProFTPD) log in
// anywhere; the others are refused by every server, after the pick.
var userNames = []string{"anonymous", lab.TestUser, "alice", "bob", "carol", "dave", "erin", "frank", "grace"}

// userPolicy shows stickiness by login name. pasvgate picks the server at
// USER, before any server has seen the name, so the pick shows whatever
// the server answers: each name is sent from three sessions (from two
// client addresses, so the source address cannot be what sticks) and
// must reach one server every time, which pasvgate's log names. Where
// that server knows the name, the session logs in and downloads, and the
// data must come from that server. The three servers share no login
// (see the package doc), so not every name logs in; the built-in server's
// would, but a pool of three built-in servers would test less of what
// real servers do.
func (p *poolLab) userPolicy(t *testing.T) {
	p.start(t, append(upstreamArgs(), "--balance", "user")...)
	const rounds = 3
	picks := map[string]map[*lab.Server]int{}
	counts := map[*lab.Server]int{}
	downloads := 0
	for r := range rounds {
		for i, name := range userNames {
			src := []string{lab.ClientAddr, lab.IntruderAddr}[(r+i)%2]
			srv, got, err := p.userSession(t.Context(), src, name)
			if err != nil {
				t.Errorf("user %s from %s: %v", name, src, err)
				continue
			}
			if picks[name] == nil {
				picks[name] = map[*lab.Server]int{}
			}
			picks[name][srv]++
			counts[srv]++
			if got {
				downloads++
			}
		}
	}
	used := map[*lab.Server]bool{}
	var sticky []string
	for _, name := range userNames {
		if len(picks[name]) != 1 {
			t.Errorf("user: sessions of %q went to %s, want all to one server", name, p.countBy(picks[name]))
		}
		for s := range picks[name] {
			used[s] = true
			sticky = append(sticky, name+"->"+s.Kind)
		}
	}
	t.Logf("distribution user (%d names x %d sessions, %d logged in and downloaded): %s (%s)",
		len(userNames), rounds, downloads, p.countBy(counts), strings.Join(sticky, " "))
	// Nine names hashed over three servers all land on one with
	// probability 3^-8; the hash is fixed, so this fails every time if
	// the policy does not spread names at all.
	if len(used) < 2 {
		t.Errorf("user: all %d names went to one server", len(userNames))
	}
}

// userSession sends USER name from src and returns the server pasvgate
// picked for it. If that server knows the name, it logs in and downloads
// (got is true), and the data must be that server's.
func (p *poolLab) userSession(ctx context.Context, src, name string) (srv *lab.Server, got bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := p.dial(ctx, src)
	if err != nil {
		return nil, false, err
	}
	defer s.close()
	if _, err := fmt.Fprintf(s.nc, "USER %s\r\n", name); err != nil {
		return nil, false, err
	}
	code, text, err := s.reply()
	if err != nil {
		return nil, false, fmt.Errorf("USER: %w", err)
	}
	backend, err := p.backendOf(s.client)
	if err != nil {
		return nil, false, err
	}
	srv = p.serverAt(backend)
	if srv == nil {
		return nil, false, fmt.Errorf("backend %s is not in the pool", backend)
	}
	if srv.User != name {
		return srv, false, nil
	}
	if code != 331 {
		return srv, false, fmt.Errorf("%s knows %q but answered USER with %q", srv.Kind, name, text)
	}
	if _, err := s.cmd(2, "PASS "+srv.Password); err != nil {
		return srv, false, err
	}
	if _, err := s.cmd(2, "TYPE I"); err != nil {
		return srv, false, err
	}
	sum, err := s.retr(ctx)
	if err != nil {
		return srv, false, err
	}
	if from := p.serverBySum(sum); from != srv {
		return srv, false, fmt.Errorf("downloaded %s's file (sha256 %s) through a session on %s", kindOf(from), sum, srv.Kind)
	}
	return srv, true, nil
}

// killed stops one server's process and at once runs sessions: a killed
// server refuses connections, and pasvgate must skip it at connect time,
// so every session succeeds and none is served by it. Health checks are
// off, so that nothing but the connect-time skip can keep the clients
// from it; the failed connect alone must log the state change.
func (p *poolLab) killed(t *testing.T) {
	p.start(t, append(upstreamArgs(), "--balance", "round-robin", "--health-interval", "0")...)
	dead := p.servers[1]
	down := len(stateLines(p.pg.Output(), "upstream server down", hostOf(dead.Addr)))
	dead.Proc.Stop()
	// One at a time: the dead server's turn in the rotation comes up
	// three times in nine picks.
	const m = 9
	counts, _ := p.checkDownloads(t, p.downloads(t.Context(), m, 1, []string{lab.ClientAddr}))
	t.Logf("distribution round-robin, %s killed: %s", dead.Kind, p.countBy(counts))
	if counts[dead] != 0 {
		t.Errorf("killed %s served %d sessions", dead.Kind, counts[dead])
	}
	if _, err := p.waitState("upstream server down", hostOf(dead.Addr), down, 10*time.Second); err != nil {
		t.Errorf("killed %s: %v\n%s", dead.Kind, err, lastLines(p.pg.Output(), 10))
	}
}
