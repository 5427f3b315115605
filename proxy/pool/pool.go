package pool

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Member is one server of a pool.
type Member struct {
	Addr   string // "host:port"; an IP literal or a name resolved at each dial
	Weight int    // relative share; 0 (or less) = drained
}

// Health configures the active health checks.
type Health struct {
	Interval   time.Duration // between the starts of two check rounds; 0: no active checks
	Timeout    time.Duration // bound on connect + reading the 220 (default 2 s if 0)
	Fall, Rise int           // consecutive failures to go down, successes to come back (default 2 each if 0)
}

// Defaults of Health's zero fields.
const (
	DefaultTimeout = 2 * time.Second
	DefaultFall    = 2
	DefaultRise    = 2
)

// defaultRetry is how long a member a failed connect took down stays down
// when there are no active checks to bring it back.
const defaultRetry = 10 * time.Second

// Config is a pool's configuration. Members are identified by Addr: a
// second entry with the same Addr is ignored.
type Config struct {
	Name          string // in logs and metrics
	Members       []Member
	Policy        Policy
	ProxyProtocol ProxyProtocol
	Health        Health
}

// Key is what Dial knows of the session it connects.
type Key struct {
	Client netip.AddrPort // the client (stickiness for Source, PROXY header source)
	Local  netip.AddrPort // the address the client connected to (PROXY header destination)
	User   string         // the login name, for Policy User
}

// State is a member's place in rotation.
type State uint8

// States. Their String forms are metric label values.
const (
	Up    State = iota // picked by the policy
	Down               // a connect or the health checks failed: tried only when no Up member answers
	Drain              // weight 0: never picked; open sessions go on
)

// numStates is the number of States, for arrays indexed by State.
const numStates = 3

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	case Drain:
		return "drain"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Status is a snapshot of one member, for metrics and the live view.
type Status struct {
	Addr     string
	Weight   int
	State    State
	Sessions int              // open Conns to it
	Since    time.Time        // when State last changed (or the member was added)
	Reason   string           // why it is down, "" otherwise
	Changes  map[State]uint64 // transitions into each state, for the metric
}

// ErrNoServer is returned by Dial when the pool has no member with weight
// above 0.
var ErrNoServer = errors.New("no upstream server with weight above 0")

// Pool is a group of servers sessions are spread over. Its methods are safe
// for concurrent use.
type Pool struct {
	log  *slog.Logger
	wake chan struct{} // Update tells Run to check new members at once

	// retry is how long a member a connect took down stays down with
	// checks off. A field, not a constant, only so tests need not wait
	// 10 s; set before the pool is used.
	retry time.Duration

	mu      sync.Mutex
	cfg     Config    // as given, for Config
	health  Health    // cfg.Health with defaults filled in
	members []*member // in configuration order
}

// member is a member's state. Its fields are guarded by Pool.mu. A member
// removed by Update is no longer in Pool.members but lives on in the Conns
// open to it.
type member struct {
	addr     string
	weight   int
	healthy  bool      // as far as connects and checks tell
	reason   string    // why not healthy
	retryAt  time.Time // when an unhealthy member is tried again if checks are (or are turned) off
	fails    int       // consecutive failed checks
	oks      int       // consecutive passed checks
	state    State     // the effective state last logged
	since    time.Time // when state last changed
	changes  [numStates]uint64
	sessions int // open Conns
	dialing  int // connects in progress
	current  int // smooth round-robin score
	removed  bool
}

// New makes a pool. log may be nil (no logging).
func New(cfg Config, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{log: log, wake: make(chan struct{}, 1), retry: defaultRetry}
	p.Update(cfg)
	return p
}

// Config returns the configuration last given to New or Update.
func (p *Pool) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg := p.cfg
	cfg.Members = slices.Clone(cfg.Members)
	return cfg
}

// Update replaces the configuration (reload). Members kept (same Addr)
// keep their state and session counts; new members start Up (optimistic)
// and are checked at once; removed members leave rotation, their open
// sessions go on. A member whose weight goes to 0 is logged as draining.
func (p *Pool) Update(cfg Config) {
	cfg.Members = slices.Clone(cfg.Members)
	now := time.Now()

	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	interval := p.health.Interval
	p.health = withDefaults(cfg.Health)

	old := make(map[string]*member, len(p.members))
	for _, m := range p.members {
		old[m.addr] = m
	}
	members := make([]*member, 0, len(cfg.Members))
	seen := make(map[string]bool, len(cfg.Members))
	added := false
	for _, mc := range cfg.Members {
		if seen[mc.Addr] {
			continue
		}
		seen[mc.Addr] = true
		w := max(mc.Weight, 0)
		m, ok := old[mc.Addr]
		if ok {
			delete(old, mc.Addr)
			if m.weight != w {
				m.weight = w
				p.settleLocked(m, now, "weight "+strconv.Itoa(w))
			}
		} else {
			m = &member{addr: mc.Addr, weight: w, healthy: true, since: now}
			m.state = m.effective()
			added = true
			p.log.Debug("upstream server added", "pool", cfg.Name, "server", m.addr, "weight", w)
		}
		members = append(members, m)
	}
	for _, m := range old {
		m.removed = true
		p.log.Debug("upstream server removed", "pool", cfg.Name, "server", m.addr, "sessions", m.sessions)
	}
	p.members = members
	if added || p.health.Interval != interval {
		// New members are checked at once, and Run learns of the new
		// interval (or that checks are now on).
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// withDefaults fills in the zero (or negative) fields of h.
func withDefaults(h Health) Health {
	if h.Interval < 0 {
		h.Interval = 0
	}
	if h.Timeout <= 0 {
		h.Timeout = DefaultTimeout
	}
	if h.Fall <= 0 {
		h.Fall = DefaultFall
	}
	if h.Rise <= 0 {
		h.Rise = DefaultRise
	}
	return h
}

// Status returns a snapshot of every member, in configuration order.
func (p *Pool) Status() []Status {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expireLocked(now)
	st := make([]Status, len(p.members))
	for i, m := range p.members {
		changes := make(map[State]uint64, numStates)
		for s, n := range m.changes {
			if n > 0 {
				changes[State(s)] = n
			}
		}
		st[i] = Status{
			Addr:     m.addr,
			Weight:   m.weight,
			State:    m.state,
			Sessions: m.sessions,
			Since:    m.since,
			Changes:  changes,
		}
		if m.state == Down {
			st[i].Reason = m.reason
		}
	}
	return st
}

// effective is the member's State as its weight and health make it.
func (m *member) effective() State {
	switch {
	case m.weight <= 0:
		return Drain
	case m.healthy:
		return Up
	}
	return Down
}

// settleLocked brings m.state up to date after a change of weight or
// health, and logs and counts the change if there is one, so that each
// change is logged exactly once whatever caused it. Members no longer in
// the pool change silently: nobody reads their state any more.
func (p *Pool) settleLocked(m *member, now time.Time, why string) {
	s := m.effective()
	if s == m.state || m.removed {
		m.state = s
		return
	}
	m.state, m.since = s, now
	m.changes[s]++
	switch s {
	case Up:
		p.log.Info("upstream server up", "pool", p.cfg.Name, "server", m.addr, "reason", why)
	case Down:
		p.log.Warn("upstream server down", "pool", p.cfg.Name, "server", m.addr, "reason", m.reason)
	case Drain:
		p.log.Info("upstream server draining", "pool", p.cfg.Name, "server", m.addr, "reason", why, "sessions", m.sessions)
	}
}

// markDownLocked records that m failed (a connect or the checks).
func (p *Pool) markDownLocked(m *member, now time.Time, reason string) {
	m.healthy, m.reason = false, reason
	m.fails, m.oks = 0, 0
	m.retryAt = now.Add(p.retry)
	p.settleLocked(m, now, reason)
}

// markUpLocked records that m answered again.
func (p *Pool) markUpLocked(m *member, now time.Time, why string) {
	m.healthy, m.reason = true, ""
	m.retryAt = time.Time{}
	p.settleLocked(m, now, why)
}

// expireLocked puts back in rotation, with checks off, the members whose
// retry time has come. It runs lazily, from Dial and Status, rather than
// on a timer, so that the pool owns no goroutine when checks are off.
func (p *Pool) expireLocked(now time.Time) {
	if p.health.Interval > 0 {
		return
	}
	for _, m := range p.members {
		if !m.healthy && !m.retryAt.IsZero() && !now.Before(m.retryAt) {
			p.markUpLocked(m, now, "retry after "+p.retry.String())
		}
	}
}

// release ends one of m's sessions.
func (p *Pool) release(m *member) {
	p.mu.Lock()
	m.sessions--
	p.mu.Unlock()
}
