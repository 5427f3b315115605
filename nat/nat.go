// Package nat owns the lifetime of pasvgate's data-connection mappings: it
// draws the public port at random from the data range, asks a rules.Backend
// to install the mapping, arms the connect timeout, and removes the mapping
// again off the critical path, retrying a failed removal, and returning the
// port to the pool only once its rules are gone and, after an abnormal end,
// its data flows flushed.
//
// It also supplies the public address when it follows an interface: an
// AddrWatcher tracks the interface's address through netlink, and
// cmd/pasvgate hands its Current to the proxy as Settings.PublicAddrFunc.
// LocalAddrs, on the same subscription loop, tells the proxy which
// addresses are this host's (Server.IsLocal).
//
// Its caller is package proxy, which decides what to map and when. nat knows
// nothing of FTP; it reaches the kernel's rules only through rules.Backend,
// and its connection tracking only through a FlowFlusher.
package nat

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/rules"
)

// ErrExhausted is returned by Open when every port of the data range is
// mapped (or still being removed).
var ErrExhausted = errors.New("data port range exhausted")

// ErrClosed is returned by Open after Close has begun.
var ErrClosed = errors.New("mapping table closed")

// ErrClientLimit is returned by Open when the request's client (an IPv4
// address, or an IPv6 /64: see ClientKey) already holds the most mappings
// the table allows one client (Config.MaxPerClient), none of which is
// about to give its port back.
var ErrClientLimit = errors.New("mappings per client address at limit")

// Reasons a mapping is released. They appear in logs and, later, in metric
// labels, so they are a small fixed set.
const (
	ReasonTransferDone   = "transfer-done"   // the final reply of its transfer arrived
	ReasonReplaced       = "replaced"        // the client asked for another data port
	ReasonConnectTimeout = "connect-timeout" // no transfer command within the connect timeout
	ReasonSessionEnd     = "session-end"     // the control session ended
	ReasonShutdown       = "shutdown"        // the table was closed with the mapping still open
	ReasonLoggedOut      = "logged-out"      // the session's login ended (REIN) before the mapping was used
	ReasonRelayListen    = "relay-listen"    // a relay's port could not be listened on (another socket holds it)
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Low, High uint16 }

// ParsePortRange parses "LOW-HIGH" (or a single port). Port 0 and a range
// whose low end is above its high end are refused.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	switch {
	case err1 != nil || err2 != nil:
		return PortRange{}, fmt.Errorf("port range %q: want LOW-HIGH with ports 1-65535", s)
	case l == 0:
		return PortRange{}, fmt.Errorf("port range %q: port 0 is not a port", s)
	case l > h:
		return PortRange{}, fmt.Errorf("port range %q: low end above high end", s)
	}
	return PortRange{uint16(l), uint16(h)}, nil
}

// Size is the number of ports in the range.
func (r PortRange) Size() int { return int(r.High) - int(r.Low) + 1 }

// String formats the range as ParsePortRange reads it.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Low, r.High) }

// Config configures a Table.
type Config struct {
	// Ports is the data range public ports are drawn from. Required.
	Ports PortRange
	// ConnectTimeout is how long an opened mapping waits for the transfer
	// it was made for to be claimed before it is released. Default 30 s.
	ConnectTimeout time.Duration
	// InstallTimeout bounds one Install call, on the client's critical
	// path. Default 10 s.
	InstallTimeout time.Duration
	// RemoveTimeout bounds one Remove call, and one flush of a mapping's
	// data flows. Default 10 s.
	RemoveTimeout time.Duration
	// RemoveRetries is how often a failed removal is tried again before
	// the table gives up on it (its port then stays out of the pool, and
	// the next start's sweep removes its rules). Default 6; negative: no
	// retries.
	RemoveRetries int
	// RemoveBackoff is the wait before the first retry of a failed
	// removal; each further retry waits twice as long as the one before,
	// up to RemoveBackoffMax. Defaults 1 s and 30 s: with RemoveRetries 6,
	// retries come 1, 2, 4, 8, 16 and 30 s apart, about a minute in all.
	RemoveBackoff, RemoveBackoffMax time.Duration
	// RemoveDelay is how long a released mapping may wait for others to
	// be released after it, so that they are all removed in one kernel
	// transaction, when the backend is a rules.BatchRemover. A used
	// mapping admits nothing more in the meantime (the kernel spent its
	// one connection); an unused one stays open that much longer than its
	// release. Default 10 ms; negative: no wait. Close does not wait.
	RemoveDelay time.Duration
	// Logger receives a line per mapping opened (debug) and closed (debug
	// after a finished transfer, info otherwise). Default: discard.
	Logger *slog.Logger
	// Flows, if set, deletes the conntrack entries of a mapping's data
	// connections after its rules are gone, when the mapping ended
	// abnormally (its session died, timed out or was shut down), so that
	// no half-open data flow stays pinned through the gateway. Flushes run
	// on their own worker, never in the way of removals; the mapping's
	// port returns to the pool only after its flush.
	Flows FlowFlusher
	// ObserveInstall, if set, is told how long each install took and how
	// it ended (for the install latency histogram).
	ObserveInstall func(d time.Duration, err error)
	// MaxPerClient bounds the mappings one client holds at once, counted
	// by Request.Client per ClientKey, so that one client cannot take the
	// whole data range from the others. 0 means no limit. SetMaxPerClient
	// changes it while the table runs.
	MaxPerClient int
}

// DefaultRemoveDelay is Config.RemoveDelay's default. At the pace of one
// client's back-to-back small downloads (a transfer a millisecond or so),
// about ten removals share a transaction, which takes the removals' kernel
// work nearly off the installs' way.
const DefaultRemoveDelay = 10 * time.Millisecond

// Request is what a caller wants mapped. Public carries only the address:
// the port is drawn by Open.
type Request struct {
	// Session names the control session that owns the mapping, for logs.
	Session string
	// Source is the only address allowed to make the data connection.
	Source netip.Addr
	// Public is the gateway address the data connection will be made to.
	Public netip.Addr
	// Dialed, if valid, is a second gateway address that admits the data
	// connection on the same port (rules.Mapping.Dialed): the address the
	// client dialed, for clients that ignore the 227's address.
	Dialed netip.Addr
	// Target is where the data connection is forwarded.
	Target netip.AddrPort
	// SNAT, if valid, is the source address given to the forwarded connection.
	SNAT netip.Addr
	// Client is the control client the mapping is charged to, for
	// Config.MaxPerClient. It is not always Source: in active mode the
	// data connection comes from the server. Invalid means Source.
	Client netip.Addr
	// Ports, if not zero, is the range the public port is drawn from in
	// place of Config.Ports: a route's own (one public service of
	// several). Ranges of different routes must not overlap: a port is
	// busy in the table whichever range it was drawn for.
	Ports PortRange
	// Relay asks for the port alone: the caller relays the data
	// connection itself (a protected FTPS transfer, which it must decrypt)
	// and listens on Public. Nothing is installed in the kernel; the port
	// is drawn from the range and counted against Client like any
	// mapping's, its connect timeout runs the same, and a release returns
	// it at once. Done tells the caller when to stop listening.
	Relay bool
}

// ClientKey is the unit in which clients are counted: an IPv4 address
// whole, an IPv6 address by its /64. A /64 is what one host or one site
// network is given, and a host picks addresses in it at will (RFC 8981
// temporary addresses), so counting single IPv6 addresses would let one
// client escape any per-client limit.
func ClientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64) // an invalid address gives the zero Prefix: one shared key
	return p
}

// clientUse is what one client (ClientKey) has of the data range: mappings
// being installed or open (held), and mappings released whose rules are
// still being removed (leaving). Both count against Config.MaxPerClient:
// a leaving mapping's port is no more anyone else's than a held one's.
type clientUse struct{ held, leaving int }

// Stats are the table's counters since New.
type Stats struct {
	Active        int
	Opened        uint64
	InstallFailed uint64
	Exhausted     uint64
	// RemoveFailed counts removals given up after their last retry.
	RemoveFailed uint64
	// RemoveRetries counts retries of failed removals.
	RemoveRetries uint64
	Closed        map[string]uint64 // by reason
	// PortsBusy are the ports mapped, being removed or flushed, or held
	// by a removal given up; PortsTotal the size of the range.
	PortsBusy, PortsTotal int
	// FlowsFlushed counts conntrack entries deleted after abnormal ends.
	FlowsFlushed uint64
}

// Table hands out mappings. It is safe for concurrent use.
type Table struct {
	backend rules.Backend
	cfg     Config
	log     *slog.Logger
	rnd     *rand.Rand // guarded by mu

	mu sync.Mutex
	// busy holds a port from allocate until its rules are gone and, after
	// an abnormal end, its flows flushed; or for good, when its removal
	// was given up.
	busy  map[uint16]bool
	open  map[string]*Mapping // installed: from Open until removed or given up
	queue []*Mapping          // awaiting removal
	// backoff holds the mappings whose failed removal waits for its retry
	// timer, by id.
	backoff map[string]*Mapping
	wake    chan struct{}
	// batching is set while the removal worker waits for releases to
	// join its batch (awaitBatchLocked).
	batching bool
	closing  bool
	// flushQ holds mappings whose rules are gone and whose flows await
	// their flush. It is bounded by the port range: each holds a busy port.
	flushQ      []*Mapping
	flushWake   chan struct{}
	removalDone bool // the removal worker has ended: no more flushes come
	closed      map[string]uint64
	opened      uint64
	failed      uint64
	exhaust     uint64
	rmFailed    uint64
	rmRetries   uint64
	// installing counts Opens between allocate and the end of Install, so
	// that Close waits for a mapping that is being installed as it begins.
	installing int
	ids        uint32
	flushed    uint64
	// clients is each client's use of the range, by ClientKey; a client
	// with none has no entry, so the map is as big as the clients that
	// hold ports.
	clients      map[netip.Prefix]clientUse
	maxPerClient int
	// freed is closed (and replaced) whenever a client's leaving mapping
	// is gone or the limit changes: Opens waiting at the limit look again.
	freed chan struct{}

	// flushCtx is the parent of every flush; Close cancels it when its
	// own context ends, so that a stop does not wait out a slow flush.
	flushCtx    context.Context
	cancelFlush context.CancelFunc
	workers     sync.WaitGroup
}

// New returns a table that installs through b. The caller must call Close.
func New(b rules.Backend, cfg Config) (*Table, error) {
	if cfg.Ports.Low == 0 || cfg.Ports.Low > cfg.Ports.High {
		return nil, fmt.Errorf("nat: invalid port range %v", cfg.Ports)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.InstallTimeout <= 0 {
		cfg.InstallTimeout = 10 * time.Second
	}
	if cfg.RemoveTimeout <= 0 {
		cfg.RemoveTimeout = 10 * time.Second
	}
	switch {
	case cfg.RemoveRetries == 0:
		cfg.RemoveRetries = 6
	case cfg.RemoveRetries < 0:
		cfg.RemoveRetries = 0
	}
	if cfg.RemoveBackoff <= 0 {
		cfg.RemoveBackoff = time.Second
	}
	if cfg.RemoveBackoffMax <= 0 {
		cfg.RemoveBackoffMax = 30 * time.Second
	}
	switch {
	case cfg.RemoveDelay == 0:
		cfg.RemoveDelay = DefaultRemoveDelay
	case cfg.RemoveDelay < 0:
		cfg.RemoveDelay = 0
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The public port must not be predictable by a third party who would
	// race the client to it, so the generator is seeded from crypto/rand.
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("nat: seeding port generator: %w", err)
	}
	t := &Table{
		backend:   b,
		cfg:       cfg,
		log:       log,
		rnd:       rand.New(rand.NewChaCha8(seed)),
		busy:      map[uint16]bool{},
		open:      map[string]*Mapping{},
		backoff:   map[string]*Mapping{},
		wake:      make(chan struct{}, 1),
		flushWake: make(chan struct{}, 1),
		closed:    map[string]uint64{},

		clients:      map[netip.Prefix]clientUse{},
		maxPerClient: cfg.MaxPerClient,
		freed:        make(chan struct{}),
	}
	t.flushCtx, t.cancelFlush = context.WithCancel(context.Background())
	t.workers.Add(2)
	go t.removeLoop()
	go t.flushLoop()
	return t, nil
}

// Mapping is one installed data mapping. Its rules.Mapping is read-only.
type Mapping struct {
	rules.Mapping
	// Session is the owning control session, from the Request.
	Session string

	t *Table
	// opened is when Open allocated the mapping, with Go's monotonic
	// clock, for the age logged when it closes: Created is kept to the
	// second, as the backends store it.
	opened time.Time
	timer  *time.Timer
	client netip.Prefix // whose count it is in: ClientKey(Request.Client)
	// state is guarded by t.mu.
	claimed  bool
	released bool
	reason   string
	// attempts counts failed removals; retry is the timer of the next.
	attempts int
	retry    *time.Timer
	// queuedAt is when the mapping last joined the removal queue on its
	// release; zero for a retry, which waits for nothing more.
	queuedAt time.Time
	// done, for a relay (Request.Relay), is closed on release.
	done chan struct{}
}

// Relay reports whether the mapping is a port for a relay of the caller's
// own (Request.Relay): nothing of it is in the kernel.
func (m *Mapping) Relay() bool { return m.done != nil }

// Done is closed when a relay's port is released (for any reason: its
// transfer's end, its connect timeout, its session's end): the relay must
// stop accepting on it. It is nil for a kernel mapping.
func (m *Mapping) Done() <-chan struct{} { return m.done }

// Open allocates a public port, installs the mapping and arms its connect
// timeout. Only when Open returns without error is the mapping in the
// kernel; on error nothing of it is. ctx bounds the install (together with
// Config.InstallTimeout).
//
// A client at Config.MaxPerClient gets ErrClientLimit at once when every
// one of its mappings is held; when some are only waiting for their rules
// to go, Open waits (up to Config.InstallTimeout) for one of them, so that
// a client doing transfers back to back is slowed to the pace of removals
// rather than refused.
func (t *Table) Open(ctx context.Context, req Request) (*Mapping, error) {
	client := req.Client
	if !client.IsValid() {
		client = req.Source
	}
	key := ClientKey(client)
	ports := req.Ports
	if ports.Low == 0 || ports.Low > ports.High {
		ports = t.cfg.Ports
	}
	port, err := t.allocate(ctx, key, ports)
	if err != nil {
		t.log.Warn("mapping refused", "session", req.Session, "source", req.Source, "client", client,
			"target", req.Target, "reason", err.Error())
		return nil, err
	}
	now := time.Now()
	m := &Mapping{
		Mapping: rules.Mapping{
			ID:      t.newID(),
			Source:  req.Source,
			Public:  netip.AddrPortFrom(req.Public, port),
			Dialed:  req.Dialed,
			Target:  req.Target,
			SNAT:    req.SNAT,
			Created: now.Truncate(time.Second),
		},
		Session: req.Session,
		t:       t,
		opened:  now,
		client:  key,
	}
	start := time.Now()
	if req.Relay {
		m.done = make(chan struct{})
	} else {
		ictx, cancel := context.WithTimeout(ctx, t.cfg.InstallTimeout)
		err = t.backend.Install(ictx, m.Mapping)
		cancel()
		if t.cfg.ObserveInstall != nil {
			t.cfg.ObserveInstall(time.Since(start), err)
		}
	}
	if err != nil {
		t.mu.Lock()
		delete(t.busy, port)
		t.failed++
		t.installing--
		t.chargeLocked(key, -1, 0)
		t.mu.Unlock()
		t.poke()
		t.log.Error("mapping install failed", "session", req.Session, "id", m.ID,
			"source", req.Source, "target", req.Target, "public", m.Public, "err", err)
		return nil, fmt.Errorf("installing mapping: %w", err)
	}
	t.mu.Lock()
	t.installing--
	if t.closing {
		// Close began while we installed: the mapping goes straight to the
		// removal queue so that Close's wait covers it.
		t.open[m.ID] = m
		t.releaseLocked(m, ReasonShutdown)
		t.mu.Unlock()
		return nil, ErrClosed
	}
	t.open[m.ID] = m
	t.opened++
	m.timer = time.AfterFunc(t.cfg.ConnectTimeout, func() { m.release(ReasonConnectTimeout, true) })
	t.mu.Unlock()
	// Debug: a finished transfer's log line names the mapping, and one
	// line per transfer is what a busy gateway can afford to write. The
	// check first, because the arguments cost allocations even when the
	// line is not written.
	if t.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []any{"session", req.Session, "id", m.ID, "source", req.Source, "public", m.Public}
		if req.Dialed.IsValid() {
			attrs = append(attrs, "dialed", req.Dialed)
		}
		attrs = append(attrs, "target", req.Target, "snat", req.SNAT, "relay", req.Relay,
			"install_ms", float64(time.Since(start).Microseconds())/1000)
		t.log.Debug("mapping opened", attrs...)
	}
	return m, nil
}

// Claim records that the transfer the mapping was made for has been asked
// for, which stops its connect timeout. It returns false if the mapping was
// already released (for example by that timeout): the transfer cannot work.
func (m *Mapping) Claim() bool {
	m.t.mu.Lock()
	defer m.t.mu.Unlock()
	if m.released {
		return false
	}
	m.claimed = true
	m.timer.Stop()
	return true
}

// Claimed reports whether Claim succeeded: a transfer command was sent
// for the mapping, whose final reply releases it.
func (m *Mapping) Claimed() bool {
	m.t.mu.Lock()
	defer m.t.mu.Unlock()
	return m.claimed
}

// Release queues the mapping for removal and returns at once: removal is
// never on a client's critical path. Releasing twice is harmless; the first
// reason is the one logged.
func (m *Mapping) Release(reason string) { m.release(reason, false) }

func (m *Mapping) release(reason string, fromTimer bool) {
	m.t.mu.Lock()
	defer m.t.mu.Unlock()
	if fromTimer && m.claimed {
		return
	}
	m.t.releaseLocked(m, reason)
}

func (t *Table) releaseLocked(m *Mapping, reason string) {
	if m.released {
		return
	}
	m.released = true
	m.reason = reason
	if m.timer != nil {
		m.timer.Stop()
	}
	if m.done != nil {
		// A relay's port: nothing to remove from the kernel, and no
		// flow the kernel tracks. The caller stops listening on it when
		// Done is closed; a relay that draws the port again before then
		// fails to listen and its client gets 425, a window of
		// microseconds on one port of the range.
		close(m.done)
		delete(t.open, m.ID)
		t.closed[m.reason]++
		t.chargeLocked(m.client, -1, 0)
		delete(t.busy, m.Public.Port())
		return
	}
	t.chargeLocked(m.client, -1, +1)
	m.queuedAt = time.Now()
	t.queue = append(t.queue, m)
	if !t.batching || len(t.queue) >= maxRemoveBatch {
		// A worker waiting for its batch to fill takes this one along
		// when its wait ends: waking it for each release would cost a
		// goroutine switch a transfer for nothing.
		t.poke()
	}
}

// poke wakes the removal worker without blocking.
func (t *Table) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// chargeLocked moves client's counts by dheld and dleaving, and tells the
// Opens waiting at the limit when a leaving mapping is gone.
func (t *Table) chargeLocked(client netip.Prefix, dheld, dleaving int) {
	u := t.clients[client]
	u.held += dheld
	u.leaving += dleaving
	if u.held <= 0 && u.leaving <= 0 {
		delete(t.clients, client)
	} else {
		t.clients[client] = u
	}
	if dleaving < 0 {
		close(t.freed)
		t.freed = make(chan struct{})
	}
}

// SetMaxPerClient changes Config.MaxPerClient for the Opens from now on
// (a reload). Mappings already open stay, even above a lowered limit.
func (t *Table) SetMaxPerClient(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.maxPerClient = n
	close(t.freed)
	t.freed = make(chan struct{})
}

// allocate charges a mapping to client, waiting at its limit while one of
// its mappings is leaving, then draws a free port at random from ports
// and marks it busy.
func (t *Table) allocate(ctx context.Context, client netip.Prefix, ports PortRange) (uint16, error) {
	var wait <-chan time.Time
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if t.closing {
			return 0, ErrClosed
		}
		u := t.clients[client]
		if t.maxPerClient <= 0 || u.held+u.leaving < t.maxPerClient {
			break
		}
		if u.leaving == 0 {
			return 0, ErrClientLimit
		}
		if wait == nil {
			timer := time.NewTimer(t.cfg.InstallTimeout)
			defer timer.Stop()
			wait = timer.C
		}
		freed := t.freed
		t.mu.Unlock()
		var err error
		select {
		case <-freed:
		case <-wait:
			err = ErrClientLimit
		case <-ctx.Done():
			err = fmt.Errorf("waiting for a port of the client's own: %w", ctx.Err())
		}
		t.mu.Lock()
		if err != nil {
			return 0, err
		}
	}
	size := ports.Size()
	// Probe from a random start: with the range mostly free the first try
	// wins; when it is nearly full the scan is bounded by its size.
	start := t.rnd.IntN(size)
	for i := 0; i < size; i++ {
		p := ports.Low + uint16((start+i)%size)
		if !t.busy[p] {
			t.busy[p] = true
			t.installing++
			t.chargeLocked(client, +1, 0)
			return p, nil
		}
	}
	t.exhaust++
	return 0, ErrExhausted
}

// Close refuses new mappings, releases every open one, and waits until all
// removals and flushes are done or ctx ends. Removals waiting for a retry
// are tried at once, and a removal that fails while closing is not retried
// (the next start's sweep removes what it left). When ctx ends first,
// flushes still running or queued are cancelled.
func (t *Table) Close(ctx context.Context) error {
	t.mu.Lock()
	t.closing = true
	for _, m := range t.open {
		t.releaseLocked(m, ReasonShutdown)
	}
	for id, m := range t.backoff {
		// A timer that has already fired queues its mapping itself.
		if m.retry.Stop() {
			delete(t.backoff, id)
			t.queue = append(t.queue, m)
		}
	}
	t.mu.Unlock()
	t.poke()
	done := make(chan struct{})
	go func() { t.workers.Wait(); close(done) }()
	select {
	case <-done:
		t.cancelFlush()
		return nil
	case <-ctx.Done():
		t.cancelFlush()
		return fmt.Errorf("nat: waiting for removals: %w", ctx.Err())
	}
}

// Stats returns a snapshot of the counters.
func (t *Table) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Stats{
		Active: len(t.open), Opened: t.opened, InstallFailed: t.failed,
		Exhausted: t.exhaust, RemoveFailed: t.rmFailed, RemoveRetries: t.rmRetries, Closed: map[string]uint64{},
		PortsBusy: len(t.busy), PortsTotal: t.cfg.Ports.Size(), FlowsFlushed: t.flushed,
	}
	for k, v := range t.closed {
		s.Closed[k] = v
	}
	return s
}

// newID makes a mapping id: a counter makes it unique within the process
// even if the random part repeats, the random part across restarts.
func (t *Table) newID() string {
	var b [4]byte
	_, _ = crand.Read(b[:])
	t.mu.Lock()
	t.ids++
	n := t.ids
	t.mu.Unlock()
	return hex.EncodeToString(b[:]) + "-" + strconv.FormatUint(uint64(n), 36)
}
