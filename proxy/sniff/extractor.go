package sniff

import (
	"bytes"
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// Dir is the direction of bytes on a control connection.
type Dir uint8

// The two directions.
const (
	ClientToServer Dir = iota // commands
	ServerToClient            // replies
)

// Conn names a control connection by its endpoints, as a capture sees
// them.
type Conn struct {
	Client, Server netip.AddrPort
}

// Handshake is the kind of a segment that opens or refuses a connection,
// which is all an audit needs of data connections.
type Handshake uint8

// The segments of a handshake.
const (
	SYN    Handshake = iota + 1 // SYN without ACK: a connection attempt
	SYNACK                      // SYN with ACK: the attempt was answered
	RST                         // RST: refused (or reset)
)

// Limits bound the memory an audit uses, whatever the capture holds. The
// zero value of each field means its default.
type Limits struct {
	// MaxLine is the longest control line, as the proxy's --max-line
	// (default ftp.DefaultMaxLine). Each direction of each followed
	// connection buffers at most this much.
	MaxLine int
	// MaxOpen is how many control connections are followed at once
	// (default 1024). Segments of further connections are counted and
	// dropped.
	MaxOpen int
	// MaxSessions is how many sessions a report lists in full (default
	// 10000); the rest only count in the server summary.
	MaxSessions int
	// MaxEvents is how many data addresses a session lists in full
	// (default 256); the rest only count.
	MaxEvents int
	// MaxServers is how many servers the summary lists (default 1024).
	MaxServers int
	// DataTimeout is how long after an address was announced a
	// connection attempt to it still counts as its data connection
	// (default 60s).
	DataTimeout time.Duration
	// IdleTimeout is how long a control connection may go without a
	// segment before it is no longer followed (default 15m). FTP control
	// connections are quiet during long transfers, so this is long.
	IdleTimeout time.Duration
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxLine, ftp.DefaultMaxLine)
	def(&l.MaxOpen, 1024)
	def(&l.MaxSessions, 10000)
	def(&l.MaxEvents, 256)
	def(&l.MaxServers, 1024)
	if l.DataTimeout <= 0 {
		l.DataTimeout = 60 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 15 * time.Minute
	}
	return l
}

// Bounds that need no knob: each exists so that a hostile or broken
// capture cannot grow a structure without end.
const (
	maxPending   = 64  // commands waiting for their reply, per session
	maxExpects   = 8   // addresses awaiting a connection attempt, per session
	maxSYNWaits  = 8   // attempts awaiting their answer, per session
	maxUnretired = 8   // omitted events still tracked, per session
	maxLineShown = 200 // bytes of a line kept for the report
)

// Extractor turns the bytes of FTP control connections into sessions. It
// is fed the reassembled payload of each direction of each connection
// (Data), the connections' ends (End), and the handshakes of every TCP
// connection in the capture (Handshake), from which it tells whether a
// data connection to an announced address was tried and answered.
//
// Calls must come in capture order and from one goroutine. An Extractor
// keeps only bounded state (see Limits); Report ends it.
type Extractor struct {
	lim     Limits
	open    map[Conn]*session
	nextID  int
	kept    []*Session
	omitted int
	servers map[netip.AddrPort]*ServerSummary
	unsumm  int
	// expect maps an announced address to the announcement waiting for
	// a connection attempt to it; syns maps an attempt (its source and
	// destination) to the announcement waiting for its answer.
	expect   map[netip.AddrPort]*expectation
	syns     map[flowKey]*expectation
	dropped  uint64
	lost     uint64
	problems int
	ended    bool
}

type flowKey struct{ src, dst netip.AddrPort }

type expectation struct {
	owner *session
	ev    *DataAddr
	// control is set for the second key of a 227 that named another
	// host: the control connection's address with the announced port,
	// where clients that ignore the 227 address connect instead.
	control bool
	until   time.Time
}

// session is the state of one followed control connection.
type session struct {
	rep     *Session
	lines   [2]lineFeed
	replies ftp.ReplyState
	pending []pending
	// held is the text of an open 227/229 reply, its lines joined with
	// "\n" as ParsePASV takes them; shown is what the report prints.
	held, shown []byte
	heldOver    bool
	// replyStart is set while the next server line starts a reply.
	replyStart bool
	last       *DataAddr // the latest data address, which a transfer uses
	unretired  []*DataAddr
	tally      tally
	expects    []netip.AddrPort
	syns       []flowKey
	stopped    bool // TLS: bytes are counted and dropped
}

// pending is a command waiting for its final reply.
type pending struct {
	verb ftp.Verb
	ev   *DataAddr // the PORT/EPRT this command announced
	xfer *DataAddr // the data address this transfer command uses
	arg  string    // AUTH's argument
}

// NewExtractor returns an Extractor bounded by lim.
func NewExtractor(lim Limits) *Extractor {
	return &Extractor{
		lim:     lim.withDefaults(),
		open:    make(map[Conn]*session),
		servers: make(map[netip.AddrPort]*ServerSummary),
		expect:  make(map[netip.AddrPort]*expectation),
		syns:    make(map[flowKey]*expectation),
	}
}

// Limits returns the limits in force, defaults filled in.
func (e *Extractor) Limits() Limits { return e.lim }

// Open returns how many connections are being followed.
func (e *Extractor) Open() int { return len(e.open) }

// Begin starts following c, first seen at t; fromStart says its
// handshake is in the capture. It reports false when c cannot be
// followed because Limits.MaxOpen connections already are. Data begins a
// connection by itself; Begin is for a connection seen before its first
// byte of payload.
func (e *Extractor) Begin(c Conn, t time.Time, fromStart bool) bool {
	s := e.session(c, t)
	if s != nil && fromStart {
		s.rep.FromStart = true
	}
	return s != nil
}

// Data hands over bytes sent on c in direction dir, received at t, in
// stream order. b is not retained.
func (e *Extractor) Data(c Conn, dir Dir, b []byte, t time.Time) {
	s := e.session(c, t)
	if s == nil {
		e.dropped++
		return
	}
	s.touch(t)
	if dir == ClientToServer {
		s.rep.ClientBytes += uint64(len(b))
	} else {
		s.rep.ServerBytes += uint64(len(b))
	}
	if s.stopped || len(b) == 0 {
		return
	}
	first := s.rep.ClientBytes == uint64(len(b))
	if dir == ServerToClient {
		first = s.rep.ServerBytes == uint64(len(b))
	}
	if first && looksLikeTLS(b) {
		// No FTP line starts like a TLS record: this is implicit FTPS
		// (from the handshake on), or a session picked up after its
		// AUTH TLS.
		s.rep.TLS = &TLSStart{Time: t, Implicit: s.rep.FromStart}
		s.stop()
		return
	}
	lf := &s.lines[dir&1]
	lf.feed(b, e.lim.MaxLine)
	for !s.stopped {
		_, text, err := lf.r.ReadLine()
		switch {
		case err == nil:
		case errors.Is(err, ftp.ErrLineTooLong):
			s.rep.LongLines++
			continue
		case errors.Is(err, ftp.ErrLineEndless):
			continue // counted once, as too long
		default:
			// errMore: everything handed over has been read.
			lf.src.rest = nil
			return
		}
		if dir == ClientToServer {
			e.command(s, text, t)
		} else {
			e.reply(s, text, t)
		}
	}
	lf.src.rest = nil // stopped: the rest is TLS
}

// looksLikeTLS reports whether b starts with a TLS record header: a
// content type 20-23 (change cipher spec, alert, handshake, application
// data) and a version 3.0-3.4.
func looksLikeTLS(b []byte) bool {
	return len(b) >= 3 && b[0] >= 20 && b[0] <= 23 && b[1] == 3 && b[2] <= 4
}

// Lost tells that n bytes of c in direction dir are missing from the
// capture. The line they were part of is dropped, as the reader cannot
// know where it ended.
func (e *Extractor) Lost(c Conn, dir Dir, n int, t time.Time) {
	e.lost += uint64(max(n, 0))
	s := e.open[c]
	if s == nil {
		return
	}
	s.touch(t)
	s.rep.LostBytes += uint64(max(n, 0))
	s.lines[dir&1] = lineFeed{}
	if dir == ServerToClient {
		// The reply that was open may have ended in the gap.
		s.replies = ftp.ReplyState{}
		s.held, s.shown, s.heldOver = s.held[:0], s.shown[:0], false
	}
}

// End stops following c: its connection closed, was reset, or went idle
// (why), at t. Lines left without their terminator are dropped.
func (e *Extractor) End(c Conn, t time.Time, why EndReason) {
	s := e.open[c]
	if s == nil {
		return
	}
	s.touch(t)
	s.rep.Ended = why
	delete(e.open, c)
	e.finish(s)
}

// Handshake tells of a SYN, SYN-ACK or RST from src to dst at t, on any
// connection. Attempts to an announced data address are recorded with
// that address.
func (e *Extractor) Handshake(k Handshake, src, dst netip.AddrPort, t time.Time) {
	switch k {
	case SYN:
		x := e.expect[dst]
		if x == nil || t.After(x.until) {
			return
		}
		d := &x.ev.Data
		if d.SYNs == 0 {
			d.From, d.To, d.ToControlAddress = src, dst, x.control
		}
		d.SYNs++
		fk := flowKey{src, dst}
		// A retransmission is already awaited; the same endpoints
		// announced again by someone else take the attempt over.
		if e.syns[fk] != x {
			o := x.owner
			if len(o.syns) == maxSYNWaits {
				e.unwaitSYN(o, o.syns[0])
				o.syns = o.syns[:copy(o.syns, o.syns[1:])]
			}
			o.syns = append(o.syns, fk)
			e.syns[fk] = x
		}
	case SYNACK, RST:
		// The answer travels back: its source is the attempt's
		// destination.
		fk := flowKey{dst, src}
		x := e.syns[fk]
		if x == nil {
			return
		}
		if k == SYNACK {
			x.ev.Data.SYNACK = true
		} else if !x.ev.Data.SYNACK {
			x.ev.Data.Reset = true
		}
		delete(e.syns, fk)
	}
}

// Report ends every connection still followed (EndCapture) and returns
// what was found. The Extractor is done: later calls change nothing in
// the report.
func (e *Extractor) Report() *Report {
	if !e.ended {
		e.ended = true
		open := make([]*session, 0, len(e.open))
		for _, s := range e.open {
			open = append(open, s)
		}
		// In the order they began, so IDs and the report do not depend
		// on map order.
		slices.SortFunc(open, func(a, b *session) int { return cmp.Compare(a.rep.ID, b.rep.ID) })
		for _, s := range open {
			s.rep.Ended = EndCapture
			delete(e.open, Conn{s.rep.Client, s.rep.Server})
			e.finish(s)
		}
	}
	r := &Report{
		Sessions:              slices.Clone(e.kept),
		SessionsOmitted:       e.omitted,
		SessionsNotSummarized: e.unsumm,
		Problems:              e.problems,
		Stats: Stats{
			SegmentsNotFollowed: e.dropped,
			LostBytes:           e.lost,
		},
	}
	if r.Sessions == nil {
		r.Sessions = []*Session{}
	}
	slices.SortFunc(r.Sessions, func(a, b *Session) int { return cmp.Compare(a.ID, b.ID) })
	r.Servers = make([]*ServerSummary, 0, len(e.servers))
	for _, sum := range e.servers {
		r.Servers = append(r.Servers, sum)
	}
	slices.SortFunc(r.Servers, func(a, b *ServerSummary) int { return a.Server.Compare(b.Server) })
	if e.unsumm > 0 {
		r.Warnings = append(r.Warnings, pluralf(e.unsumm, "session", "of servers beyond the summary's limit not summed up"))
	}
	if e.omitted > 0 {
		r.Warnings = append(r.Warnings, pluralf(e.omitted, "session", "beyond the report's limit only summed up"))
	}
	if e.dropped > 0 {
		r.Warnings = append(r.Warnings, pluralf(int(min(e.dropped, 1<<31)), "control segment", "not followed: too many connections at once"))
	}
	return r
}

// session returns the state of c, creating it if there is room.
func (e *Extractor) session(c Conn, t time.Time) *session {
	if s := e.open[c]; s != nil {
		return s
	}
	if e.ended || len(e.open) >= e.lim.MaxOpen {
		return nil
	}
	e.nextID++
	s := &session{
		rep:        &Session{ID: e.nextID, Client: c.Client, Server: c.Server, Start: t, End: t, DataAddrs: []*DataAddr{}},
		replyStart: true,
	}
	e.open[c] = s
	return s
}

func (s *session) touch(t time.Time) {
	if t.After(s.rep.End) {
		s.rep.End = t
	}
}

// stop makes the session unreadable from here on: after TLS starts,
// bytes are counted and dropped.
func (s *session) stop() {
	s.stopped = true
	s.lines = [2]lineFeed{}
	s.held, s.shown = nil, nil
}

// command handles one line from the client.
func (e *Extractor) command(s *session, text []byte, t time.Time) {
	s.rep.Commands++
	verb, arg := ftp.ParseCommand(text)
	p := pending{verb: verb}
	switch {
	case verb == ftp.VerbPORT || verb == ftp.VerbEPRT:
		kind, parse := KindPORT, ftp.ParsePORT
		if verb == ftp.VerbEPRT {
			kind, parse = KindEPRT, ftp.ParseEPRT
		}
		ev := e.newEvent(s, kind, t)
		ev.Line = clean(text)
		if ap, err := parse(arg); err != nil {
			ev.Error = err.Error()
		} else {
			ev.Addr = ap
			e.expectConn(s, ev, ap, false, t)
		}
		p.ev = ev
	case verb == ftp.VerbAUTH:
		p.arg = clean(arg)
	case verb.IsTransfer():
		if ev := s.last; ev != nil && ev.Transfer == "" {
			ev.Transfer = verb.String()
			p.xfer = ev
		}
	}
	if len(s.pending) == maxPending {
		// A client far ahead of its server, or replies the capture
		// missed: forget the oldest.
		s.pending = s.pending[:copy(s.pending, s.pending[1:])]
	}
	s.pending = append(s.pending, p)
}

// reply handles one line from the server.
func (e *Extractor) reply(s *session, text []byte, t time.Time) {
	first := s.replyStart
	code, last, err := s.replies.Feed(text)
	if err != nil {
		s.rep.MalformedReplies++
		return
	}
	s.replyStart = last
	if code == ftp.CodeServiceReady && first && s.rep.Banner == "" {
		s.rep.Banner = clean(text)
	}
	if code == ftp.CodeEnteringPassive || code == ftp.CodeEnteringExtPassive {
		s.hold(text, first, last, e.lim.MaxLine)
	}
	if !last {
		return
	}
	s.rep.Replies++
	if code < 200 {
		return // preliminary: the command still waits for its final reply
	}
	var head pending
	answered := len(s.pending) > 0
	if answered {
		head = s.pending[0]
		s.pending = s.pending[:copy(s.pending, s.pending[1:])]
	}
	switch code {
	case ftp.CodeEnteringPassive, ftp.CodeEnteringExtPassive:
		e.passive(s, code, head, answered, t)
	case ftp.CodeAuthOK:
		// RFC 2228: 234 answers AUTH and nothing else, and the TLS
		// handshake follows at once; even if the command was missed,
		// nothing after this line is FTP text.
		cmd := "AUTH"
		if head.verb == ftp.VerbAUTH && head.arg != "" {
			cmd += " " + head.arg
		}
		s.rep.TLS = &TLSStart{Time: t, Command: cmd}
		s.stop()
		return
	}
	if head.ev != nil && head.ev.Reply == 0 {
		head.ev.Reply = code
	}
	if head.xfer != nil && head.xfer.TransferReply == 0 {
		head.xfer.TransferReply = code
	}
}

// hold collects a line of a 227/229 reply: its text for parsing, as the
// proxy collects it, and a short form to show.
func (s *session) hold(text []byte, first, last bool, maxLine int) {
	if first {
		s.held, s.shown, s.heldOver = s.held[:0], s.shown[:0], false
	}
	// A multi-line reply may run on without end; the proxy would hold
	// it all, an audit stops at a few lines' worth and says so.
	if len(s.held)+len(text)+1 > 4*maxLine {
		s.heldOver = true
	} else {
		s.held = append(s.held, text...)
		s.held = append(s.held, '\n')
	}
	if first || last {
		if !first {
			s.shown = append(s.shown, " / "...)
		}
		s.shown = append(s.shown, clean(text)...)
		if len(s.shown) > maxLineShown {
			s.shown = s.shown[:maxLineShown]
		}
	}
}

// passive records a complete 227 or 229 reply.
func (e *Extractor) passive(s *session, code int, head pending, answered bool, t time.Time) {
	kind := KindPASV
	if code == ftp.CodeEnteringExtPassive {
		kind = KindEPSV
	}
	ev := e.newEvent(s, kind, t)
	if answered {
		ev.Command = head.verb.String()
	}
	ev.Line = string(s.shown)
	server := s.rep.Server
	switch {
	case s.heldOver:
		ev.Error = "reply longer than the limit of " + itoa(4*e.lim.MaxLine) + " bytes"
	case kind == KindPASV:
		ap, err := ftp.ParsePASV(s.held)
		if err != nil {
			ev.Error = err.Error()
			break
		}
		ev.Addr = ap
		target := ap
		if ap.Addr().IsUnspecified() {
			// 0.0.0.0 means "the control connection's address".
			target = netip.AddrPortFrom(server.Addr(), ap.Port())
		}
		e.expectConn(s, ev, target, false, t)
		if target.Addr() != server.Addr() {
			e.expectConn(s, ev, netip.AddrPortFrom(server.Addr(), ap.Port()), true, t)
		}
	default:
		port, err := ftp.ParseEPSV(s.held)
		if err != nil {
			ev.Error = err.Error()
			break
		}
		ev.Addr = netip.AddrPortFrom(server.Addr(), port)
		e.expectConn(s, ev, ev.Addr, false, t)
	}
	s.held, s.shown = s.held[:0], s.shown[:0]
}

// newEvent makes a data address of s. Beyond Limits.MaxEvents it is
// still followed but not listed, and counts in the session's tally.
func (e *Extractor) newEvent(s *session, kind string, t time.Time) *DataAddr {
	ev := &DataAddr{Time: t, Kind: kind}
	s.last = ev
	if len(s.rep.DataAddrs) < e.lim.MaxEvents {
		s.rep.DataAddrs = append(s.rep.DataAddrs, ev)
		return ev
	}
	s.rep.DataAddrsOmitted++
	if len(s.unretired) == maxUnretired {
		s.retire(s.unretired[0])
		s.unretired = s.unretired[:copy(s.unretired, s.unretired[1:])]
	}
	s.unretired = append(s.unretired, ev)
	return ev
}

// retire classifies an omitted event and adds it to the session's tally.
func (s *session) retire(ev *DataAddr) {
	classify(ev, s.rep.Client, s.rep.Server)
	s.tally.add(ev, s.rep.Server.Addr())
}

// expectConn registers ap as where a connection attempt for ev may go.
func (e *Extractor) expectConn(s *session, ev *DataAddr, ap netip.AddrPort, control bool, t time.Time) {
	if len(s.expects) == maxExpects {
		e.unexpect(s, s.expects[0])
		s.expects = s.expects[:copy(s.expects, s.expects[1:])]
	}
	s.expects = append(s.expects, ap)
	// The newest announcement of an address wins: servers reuse passive
	// ports, and a stale one must not claim the next session's attempt.
	e.expect[ap] = &expectation{owner: s, ev: ev, control: control, until: t.Add(e.lim.DataTimeout)}
}

func (e *Extractor) unexpect(s *session, ap netip.AddrPort) {
	if x := e.expect[ap]; x != nil && x.owner == s {
		delete(e.expect, ap)
	}
}

func (e *Extractor) unwaitSYN(s *session, fk flowKey) {
	if x := e.syns[fk]; x != nil && x.owner == s {
		delete(e.syns, fk)
	}
}

// finish ends a session: drop what is left of its lines, judge its data
// addresses, and file it in the report and the summary.
func (e *Extractor) finish(s *session) {
	// A line left without its terminator is dropped, as the proxy drops
	// it at EOF; so are the readers' buffers.
	s.lines = [2]lineFeed{}
	for _, ap := range s.expects {
		e.unexpect(s, ap)
	}
	for _, fk := range s.syns {
		e.unwaitSYN(s, fk)
	}
	for _, ev := range s.unretired {
		s.retire(ev)
	}
	for _, ev := range s.rep.DataAddrs {
		classify(ev, s.rep.Client, s.rep.Server)
		s.tally.add(ev, s.rep.Server.Addr())
	}
	s.rep.Problems = s.tally.problems
	e.problems += s.tally.problems
	if len(e.kept) < e.lim.MaxSessions {
		e.kept = append(e.kept, s.rep)
	} else {
		e.omitted++
	}
	sum := e.servers[s.rep.Server]
	if sum == nil {
		if len(e.servers) >= e.lim.MaxServers {
			e.unsumm++
			return
		}
		sum = &ServerSummary{Server: s.rep.Server}
		e.servers[s.rep.Server] = sum
	}
	sum.Sessions++
	if s.rep.TLS != nil {
		sum.Encrypted++
	}
	s.tally.addTo(sum)
	sum.Verdict = verdict(sum)
}

func verdict(sum *ServerSummary) string {
	switch {
	case sum.BadAddress > 0:
		return VerdictBadAddress
	case sum.Unanswered+sum.Refused > 0:
		return VerdictDataUnreachable
	case sum.Passive > 0:
		return VerdictOK
	case sum.Encrypted > 0 && sum.Encrypted == sum.Sessions:
		return VerdictEncrypted
	}
	return VerdictNoPassive
}

// tally sums up the data addresses of a session for the server summary.
type tally struct {
	passive, bad, unanswered, refused, problems int
	advertised                                  []netip.Addr
}

func (t *tally) add(ev *DataAddr, server netip.Addr) {
	t.problems += len(ev.Problems)
	if ev.Kind != KindPASV && ev.Kind != KindEPSV {
		return // the client's addresses say nothing about the server
	}
	t.passive++
	if hasAddressProblem(ev) {
		t.bad++
		if a := ev.Addr.Addr(); a.IsValid() && a != server && !ev.Own {
			t.advertised = addAddr(t.advertised, a)
		}
	}
	if ev.Data.Reset {
		t.refused++
	} else if ev.Data.SYNs > 0 && !ev.Data.SYNACK {
		t.unanswered++
	}
}

func (t *tally) addTo(sum *ServerSummary) {
	sum.Passive += t.passive
	sum.BadAddress += t.bad
	sum.Unanswered += t.unanswered
	sum.Refused += t.refused
	for _, a := range t.advertised {
		sum.Advertised = addAddr(sum.Advertised, a)
	}
}

// addAddr adds a to the sorted set as, which holds at most maxAdvertised.
func addAddr(as []netip.Addr, a netip.Addr) []netip.Addr {
	i, found := slices.BinarySearchFunc(as, a, netip.Addr.Compare)
	if found || len(as) >= maxAdvertised {
		return as
	}
	return slices.Insert(as, i, a)
}

// lineFeed reads the lines of one direction of a connection with the
// proxy's line reader. The reader pulls, the capture pushes: src hands
// the reader what Data was given and then says errMore, which the
// reader passes up with the unfinished line kept for the next call.
type lineFeed struct {
	src feedSource
	r   *ftp.Reader
}

func (lf *lineFeed) feed(b []byte, maxLine int) {
	if lf.r == nil {
		lf.r = ftp.NewReader(&lf.src, maxLine)
	}
	lf.src.rest = b
}

// errMore tells the line reader that the capture has nothing more yet.
var errMore = errors.New("sniff: need more bytes")

type feedSource struct {
	rest []byte
}

func (f *feedSource) Read(p []byte) (int, error) {
	if len(f.rest) == 0 {
		return 0, errMore
	}
	n := copy(p, f.rest)
	f.rest = f.rest[n:]
	return n, nil
}

// clean makes peer bytes safe to print: printable ASCII stays, anything
// else becomes \xNN, and the result is cut at maxLineShown bytes.
func clean(b []byte) string {
	if bytes.IndexFunc(b, func(r rune) bool { return r < 0x20 || r > 0x7e || r == '\\' }) < 0 && len(b) <= maxLineShown {
		return string(b)
	}
	const hex = "0123456789abcdef"
	out := make([]byte, 0, min(len(b), maxLineShown)+8)
	for _, c := range b {
		if len(out) >= maxLineShown {
			break
		}
		if c < 0x20 || c > 0x7e || c == '\\' {
			out = append(out, '\\', 'x', hex[c>>4], hex[c&15])
			continue
		}
		out = append(out, c)
	}
	if len(out) > maxLineShown {
		out = out[:maxLineShown]
	}
	return string(out)
}
