package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// A session's code is split by concern, one file each:
//
//	session.go   the session's state, its start and its end
//	commands.go  the client's commands: the dispatch, and the refusals table
//	passive.go   PASV/EPSV: the server's 227/229, checked, mapped, rewritten
//	active.go    PORT/EPRT: the no-bounce check, mapped, rewritten
//	replies.go   the server's replies, and pasvgate's own, in command order
//	limits.go    what bounds a peer: line length, pipelining, idle and login
//	             time, data ports only after login and one at a time
//	auth.go      FTPS: AUTH, PBSZ, PROT, CCC, and the TLS upgrade of each leg
//	tls.go       FTPS: the modes, and each leg's TLS configuration
//	relay.go     FTPS: protected data connections, which pasvgate relays
//	route.go     routes: a listener's pools, public address, announced
//	             addresses and data ports
//	upstream.go  the session's server: picked from its pool and connected
//	prelogin.go  the user policy: pasvgate greets, and waits for USER

// pending is one expected reply, in the order the server (or pasvgate) will
// give it.
type pending struct {
	verb ftp.Verb
	// mapping is the data mapping a transfer command is using; it is
	// released when the transfer's final reply has been forwarded.
	mapping *nat.Mapping
	// arg and sent are a transfer command's argument and time, for its
	// transfer log line.
	arg  string
	sent time.Time
	// flowing says the transfer's preliminary reply (150, 125) has been
	// forwarded: its data connection exists, or is being opened.
	flowing bool
	// local, if not nil, is a reply pasvgate made itself. It is queued
	// behind server replies still to come so that the client sees replies
	// in the order of its commands, and never inside a multi-line reply.
	local []byte
	// end, with local, is the reason the session ends once local has
	// been sent: a closing 421 that waits its turn (see closeWith).
	end string
	// loggedIn, for REIN, is whether the session was logged in before
	// it: a server that refuses REIN leaves its login as it was.
	loggedIn bool
	// protP, for a PROT passed on to the server, is whether it asked for
	// P: the server's side is protected so from its 2xx on.
	protP bool
}

// session is one client's control connection and its connection to the
// server. Two goroutines run it: commands (client to server) and replies
// (server to client); mu guards the state they share and every write to
// the client, so that replies from both never interleave.
type session struct {
	srv *Server
	id  string
	log *slog.Logger
	// client and server are what the session reads and writes: the TCP
	// connections, or the TLS connections over them once a leg is
	// upgraded. Each is replaced, under mu, only while the goroutine that
	// reads it waits (auth.go). rawClient and rawServer are the TCP
	// connections, for addresses and for closing: closing them ends any
	// read, write or handshake at once, where closing a TLS connection
	// would first try to send its close_notify.
	client, rawClient net.Conn
	server, rawServer net.Conn // set under mu once dialed: Shutdown may end the session first
	upstream          string   // the server's address as dialed, for its TLS name
	// routeName is the route of the listener the session came in on (set
	// before the session is registered, then read only: the live view
	// reads it), and rt that route as it was when the session started:
	// its pool is the session's for good, its addresses are read anew
	// (currentRoute).
	routeName string
	rt        Route
	// poolName and member name the pool and the server the session went
	// to, for logs; poolConn, closed when the session ends, ends its count
	// in the pool (least-conn).
	poolName, member string
	poolConn         io.Closer
	// greeted says the client has had its 220 already (from pasvgate,
	// under the user policy): the server's greeting is not expected.
	// Set under mu (preLogin).
	// first is the command that made pasvgate pick the server (USER),
	// handled before any other.
	greeted          bool
	first, firstText []byte
	// cr, if set, is the reader of the client's commands that preLogin
	// used, which may hold commands the client sent after USER.
	cr    *ftp.Reader
	peer  netip.Addr // the client's address: the only source a data mapping admits
	start time.Time
	canon []byte // the commands goroutine's buffer for canonical lines
	// unread is how many bytes of the client's followed the command being
	// handled, already read: after AUTH they would be cleartext where TLS
	// must come. Commands goroutine only.
	unread int
	// greeting, if set, is the server's greeting, already read by
	// startServerTLS: it goes to the client first.
	greeting []byte
	// ctlTLS and dataTLS serve the client's control and protected data
	// connections, with this session's own ticket keys (sessionTLS);
	// upTLS is the server leg's, whose session cache lets data
	// connections resume the control connection's session. Set before
	// the leg is upgraded, then read only.
	ctlTLS, dataTLS, upTLS *tls.Config
	// upDataTLS is upTLS for data connections, limited to the key
	// exchange the control connection settled on (upstreamDataTLS).
	upDataTLS *tls.Config
	// relays are the session's protected data connections (relay.go),
	// waited for when it ends.
	relays sync.WaitGroup
	// fromClient, fromServer and relayed count this session's bytes for
	// the live view (view.go): control bytes each way, as the server's
	// counters do, and the data bytes of its protected transfers that
	// pasvgate relayed. Atomics: they move on every line and every
	// relayed read, and a snapshot must not wait for either.
	fromClient, fromServer, relayed atomic.Uint64
	// loginFrom is when the login window (--login-timeout) opened: the
	// session's start, or the REIN of a logged-in session. Written by the
	// commands goroutine under mu.
	loginFrom time.Time

	mu        sync.Mutex
	queue     []pending
	midReply  bool          // a multi-line reply is half forwarded
	current   *nat.Mapping  // the data mapping from the latest PASV/EPSV
	epsvAll   bool          // RFC 2428 EPSV ALL was sent
	transfers int           // transfer commands whose final reply is still due
	flowing   int           // those of them whose preliminary reply has come (pending.flowing)
	popped    chan struct{} // a reply retired a command, or the session ended: see awaitLogin
	ended     bool
	over      chan struct{} // closed when the session ends
	reason    string
	user      string // the last USER argument, for transfer logs
	loggedIn  bool   // a 230 reply has been forwarded
	draining  bool   // the server is shutting down: end after the transfer
	clientTLS bool   // the client's control channel is TLS
	serverTLS bool   // the server's control channel is TLS
	// clientProt and serverProt are each leg's data protection: the
	// client's PROT P (from the command on), and the server's (from its
	// 2xx to a PROT P pasvgate sent, see protection and startServerTLS).
	// When either is set, data connections are relayed (relay.go).
	clientProt, serverProt bool
	bye                    bool // the server has said 221: it is closing the session
}

// Reasons a session ends, for its log line.
const (
	endClientClosed = "client closed"
	endServerClosed = "server closed"
	endIdle         = "idle timeout"
	endShutdown     = "shutdown"
	endTooMany      = "too many pipelined commands"
	endLogin        = "login timeout"
	endLineEndless  = "endless line"
	endReplyTooLong = "server reply too long"
	endClientTLS    = "client TLS failed"
	endServerTLS    = "server TLS failed"
)

// run relays until either side ends, then closes both, releases the
// session's mappings, and returns why it ended.
func (s *session) run(ctx context.Context) string {
	setOOBInline(s.rawClient)
	setOOBInline(s.rawServer)
	// Under mu: the live view (view.go) reads the queue from the moment
	// the session has its server.
	s.mu.Lock()
	s.queue = make([]pending, 0, 8)
	switch {
	case s.greeted:
		// pasvgate's own 220 has gone; the server's was read (upstream.go).
	case s.greeting == nil:
		s.queue = append(s.queue, pending{}) // the server's greeting
	default:
		s.writeClientLocked(s.greeting)
	}
	s.mu.Unlock()
	s.popped = make(chan struct{}, 1)
	stop := context.AfterFunc(ctx, func() {
		s.say421AndEnd("Service closing: pasvgate is shutting down.", endShutdown)
	})
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.end(s.replies(ctx))
	}()
	s.end(s.commands(ctx))
	<-done
	s.relays.Wait() // each ends on s.over
	if s.poolConn != nil {
		s.poolConn.Close() // the socket is closed already: this ends its count
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != nil {
		s.current.Release(nat.ReasonSessionEnd)
		s.current = nil
	}
	for _, p := range s.queue {
		if p.mapping != nil {
			p.mapping.Release(nat.ReasonSessionEnd)
		}
	}
	s.queue = nil
	s.srv.stats.endSession(s.reason)
	return s.reason
}

// say421AndEnd tells the client the service is closing (unless that would
// land inside a multi-line reply) and ends the session.
func (s *session) say421AndEnd(text, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.midReply && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, text))
	}
	s.endLocked(reason)
}

// drain ends the session now if no transfer is in progress, or else as
// soon as its final reply has been forwarded (see popLocked).
func (s *session) drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	if s.transfers == 0 && !s.midReply && !s.ended {
		s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeServiceUnavailable, "Service closing: pasvgate is shutting down."))
		s.endLocked(endShutdown)
	}
}

// end records the first reason the session ends and closes both
// connections, which unblocks both relay goroutines.
func (s *session) end(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(reason)
}

// endedWith returns why the session ended, or "" while it runs.
func (s *session) endedWith() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

func (s *session) endLocked(reason string) {
	if !s.ended {
		s.ended = true
		s.reason = reason
		s.signalLocked()
		close(s.over)
	}
	s.rawClient.Close()
	if s.rawServer != nil { // nil while the session still dials its server
		s.rawServer.Close()
	}
}

// currentRoute is the session's route as the settings now have it (a
// reload may have changed its addresses), or as it was when the session
// started if a reload has removed it.
func (s *session) currentRoute() *Route {
	if rt, ok := s.srv.settings().route(s.routeName); ok {
		return &rt
	}
	return &s.rt
}

// replaceMapping makes m the session's current data mapping and releases
// the one it replaces: a client that asks for a new data port is done with
// the old one.
func (s *session) replaceMapping(m *nat.Mapping) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaceMappingLocked(m)
}

func (s *session) replaceMappingLocked(m *nat.Mapping) {
	if s.current != nil {
		s.current.Release(nat.ReasonReplaced)
	}
	s.current = m
}

// signalLocked wakes the commands goroutine if it waits on s.popped.
func (s *session) signalLocked() {
	select {
	case s.popped <- struct{}{}:
	default:
	}
}

// writeClientLocked writes to the client under s.mu. A failed write ends
// the session through the read side, which then sees the closed socket.
func (s *session) writeClientLocked(b []byte) {
	_ = s.client.SetWriteDeadline(time.Now().Add(durationOr(s.srv.settings().WriteTimeout, 30*time.Second)))
	if _, err := s.client.Write(b); err != nil {
		// Closing both sockets ends both relay loops; the command loop
		// then reports the client as gone.
		s.rawClient.Close()
		if s.rawServer != nil { // nil before the server is connected (preLogin)
			s.rawServer.Close()
		}
	}
}

// writeServer sends b to the server. A Telnet Synch in it (IAC DM, which
// clients send before ABOR with the DM as TCP urgent data) goes on as the
// client sent it: the DM byte as urgent data, so that a server that acts
// on the urgent signal (vsftpd async_abor_enable, others that read the
// control connection only then during a transfer) sees the abort.
// pasvgate reads the DM inline (setOOBInline), so the line holds it in
// place; without this the server would get it as a plain byte.
func (s *session) writeServer(b []byte) error {
	_ = s.server.SetWriteDeadline(time.Now().Add(durationOr(s.srv.settings().WriteTimeout, 30*time.Second)))
	dm := ftp.SynchIndex(b)
	if dm < 0 {
		_, err := s.server.Write(b)
		return err
	}
	if _, err := s.server.Write(b[:dm]); err != nil {
		return err
	}
	if err := writeUrgent(s.server, b[dm]); err != nil {
		return err
	}
	_, err := s.server.Write(b[dm+1:])
	return err
}

// writeUrgent sends one byte as TCP urgent data (MSG_OOB): the kernel
// sets the urgent pointer to it, which raises SIGURG at the peer.
func writeUrgent(c net.Conn, b byte) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		_, err := c.Write([]byte{b})
		return err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("sending urgent data: %w", err)
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		_, serr = syscall.SendmsgN(int(fd), []byte{b}, nil, nil, syscall.MSG_OOB)
		return serr != syscall.EAGAIN
	}); err != nil {
		return fmt.Errorf("sending urgent data: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("sending urgent data: %w", serr)
	}
	return nil
}

// setOOBInline keeps TCP urgent data in the byte stream. A client's Telnet
// Synch before ABOR sends the DM byte as urgent data; without this the
// kernel would take it out of band and pasvgate would forward a broken
// sequence.
func setOOBInline(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1)
	})
}
