package proxy

import (
	"cmp"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/pasvgate/pasvgate/nat"
)

// The live view: what each open session is doing now, for the admin
// listener's /sessions and `pasvgate sessions`. It is what an operator
// reaches for when a user says "my upload hangs": which server the user
// is on, whether a transfer is open and its 150 has come, which data
// port it holds, and whether bytes still move.

// Session states (SessionInfo.State). A session is in exactly one: busy
// if its state cannot be read now, or else the first that applies in
// this order.
const (
	// StateEnding: the session is ending (its connections are being
	// closed and its mappings released).
	StateEnding = "ending"
	// StateConnecting: the server's leg is not up yet: pasvgate is
	// dialing it (or making its TLS handshake), or its greeting has not
	// come.
	StateConnecting = "connecting"
	// StateTransfer: a transfer command (RETR, STOR, STOU, APPE, LIST,
	// NLST, MLSD) awaits its final reply; SessionInfo.Transfer says
	// which, since when, and whether its 150 has come.
	StateTransfer = "transfer"
	// StateLogin: not logged in: no 230 yet, or a REIN since.
	StateLogin = "login"
	// StateCommand: logged in, and a command other than a transfer
	// awaits its reply (SessionInfo.Awaiting names it).
	StateCommand = "command"
	// StateIdle: logged in, nothing awaits a reply.
	StateIdle = "idle"
	// StateBusy: the session's state could not be read without waiting:
	// pasvgate is blocked writing to its client (a client that does not
	// read its replies), or in a TLS handshake with it. Only ID, Route,
	// Client, Bytes and the times are shown.
	StateBusy = "busy"
)

// viewMaxString bounds every string a peer chose (the user name, a
// transfer's argument) that a snapshot copies: a snapshot of many
// sessions stays small whatever their clients sent.
const viewMaxString = 256

// SessionInfo is one open session as the live view shows it. Everything
// a peer chose is a plain string, cut to at most 256 bytes.
type SessionInfo struct {
	// ID is the session's id, as in its log lines ("s42").
	ID string `json:"id"`
	// Route is the name of the route the client came in on; "" for the
	// default route.
	Route string `json:"route"`
	// Client is the client's ADDR:PORT.
	Client string `json:"client"`
	// Server is the ADDR:PORT of the server the session is connected to;
	// "" until it is.
	Server string `json:"server"`
	// User is the argument of the client's last USER command; "" before
	// one.
	User string `json:"user"`
	// State is one of the State constants: ending, connecting, transfer,
	// login, command, idle, busy.
	State string `json:"state"`
	// Awaiting is the command whose reply is due next, by the name
	// pasvgate knows it under (OTHER for the commands it passes without
	// looking: CWD, SIZE, ...); "" when no reply is due.
	Awaiting string `json:"awaiting,omitempty"`
	// Transfer is the transfer whose final reply is due, if any.
	Transfer *TransferInfo `json:"transfer,omitempty"`
	// TLS is what is protected on each leg.
	TLS TLSInfo `json:"tls"`
	// Mapping is the session's data port, if it holds one: the one its
	// transfer is using, or else the one its latest PASV, EPSV, PORT or
	// EPRT opened.
	Mapping *MappingInfo `json:"mapping,omitempty"`
	// Bytes counts what the session has moved so far.
	Bytes ByteInfo `json:"bytes"`
	// Started is when the client connected.
	Started time.Time `json:"started"`
	// AgeSeconds is the time since Started, in seconds.
	AgeSeconds float64 `json:"age_seconds"`
}

// TransferInfo is a transfer command whose final reply is due.
type TransferInfo struct {
	// Command is the verb: RETR, STOR, STOU, APPE, LIST, NLST or MLSD.
	Command string `json:"command"`
	// Arg is its argument (a file name, a listing's path or options),
	// cut to 256 bytes.
	Arg string `json:"arg"`
	// Since is when pasvgate sent it to the server.
	Since time.Time `json:"since"`
	// Seconds is the time since Since.
	Seconds float64 `json:"seconds"`
	// Started says the server's preliminary reply (150 or 125) has come:
	// the data connection is open, or being opened. A transfer that
	// hangs without it never got its data connection.
	Started bool `json:"started"`
}

// TLSInfo is what TLS protects in a session: each leg's control channel
// and data connections (PROT P).
type TLSInfo struct {
	// Client and Server are whether each leg's control channel is TLS.
	Client bool `json:"client"`
	Server bool `json:"server"`
	// ClientData and ServerData are whether each leg's data connections
	// are protected: the client's PROT P, and the server's acceptance of
	// pasvgate's. Either makes pasvgate relay the data itself.
	ClientData bool `json:"client_data"`
	ServerData bool `json:"server_data"`
}

// MappingInfo is a session's data port.
type MappingInfo struct {
	// ID is the mapping's id, as in logs and rule comments.
	ID string `json:"id"`
	// Public is the gateway ADDR:PORT the data connection is made to.
	Public string `json:"public"`
	// Source is the only address admitted on it: the client's in passive
	// mode, the server's in active mode.
	Source string `json:"source"`
	// Target is where the data connection goes: the server's data port
	// in passive mode, the client's in active mode.
	Target string `json:"target"`
	// Path is "kernel" (a DNAT entry: clear data) or "relay" (pasvgate
	// relays the connection itself: PROT P).
	Path string `json:"path"`
	// Claimed says a transfer command has been sent for it. An unclaimed
	// mapping waits for one; past --data-connect-timeout it has been
	// removed, and stays shown until the session's next PASV, EPSV,
	// PORT, EPRT or transfer command.
	Claimed bool `json:"claimed"`
	// Created is when it was made, to the second.
	Created time.Time `json:"created"`
	// AgeSeconds is the time since Created, in whole seconds.
	AgeSeconds float64 `json:"age_seconds"`
}

// ByteInfo counts a session's bytes.
type ByteInfo struct {
	// FromClient and FromServer are the control-channel bytes read from
	// each peer (decrypted, for a TLS leg).
	FromClient uint64 `json:"from_client"`
	FromServer uint64 `json:"from_server"`
	// Relayed is the data bytes pasvgate relayed itself for the
	// session's protected (PROT P) transfers, both directions, counted
	// as they move. Clear data takes the kernel path and is not counted
	// here.
	Relayed uint64 `json:"relayed"`
}

// Sessions returns a snapshot of the sessions open now, oldest first. It
// does no I/O and never waits on a session: pasvgate holds a session's
// lock while it writes to the client (up to --write-timeout, for a client
// that does not read) and through a client's TLS handshake, and one such
// session must not hold up the view of all the others. A session whose
// lock stays taken through a few brief retries is shown as StateBusy,
// with only what needs no lock.
func (s *Server) Sessions() []SessionInfo {
	now := time.Now()
	todo := s.sessions()
	out := make([]SessionInfo, 0, len(todo))
	for try := 0; len(todo) > 0; try++ {
		if try > 0 {
			time.Sleep(viewRetry)
		}
		busy := todo[:0]
		for _, ss := range todo {
			if si, ok := ss.info(now); ok {
				out = append(out, si)
			} else {
				busy = append(busy, ss)
			}
		}
		todo = busy
		if try == viewTries-1 {
			for _, ss := range todo {
				si := ss.unlockedInfo(now)
				si.State = StateBusy
				out = append(out, si)
			}
			break
		}
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// viewTries and viewRetry bound how long Sessions waits for sessions
// whose lock is taken, all of them together: a write that goes through
// takes microseconds, so a lock still taken after a few milliseconds is
// held by one that waits on its peer.
const (
	viewTries = 4
	viewRetry = time.Millisecond
)

// unlockedInfo is what the view shows of a session without its lock:
// what is fixed at its start, and its byte counters.
func (s *session) unlockedInfo(now time.Time) SessionInfo {
	return SessionInfo{
		ID:         s.id,
		Route:      s.routeName,
		Client:     addrPortOf(s.rawClient.RemoteAddr()).String(),
		Started:    s.start,
		AgeSeconds: seconds(now.Sub(s.start)),
		Bytes: ByteInfo{
			FromClient: s.fromClient.Load(),
			FromServer: s.fromServer.Load(),
			Relayed:    s.relayed.Load(),
		},
	}
}

// info is the session's line in the live view at now, or false if its
// lock is taken.
func (s *session) info(now time.Time) (SessionInfo, bool) {
	if !s.mu.TryLock() {
		return SessionInfo{}, false
	}
	si := s.unlockedInfo(now)
	var m *nat.Mapping
	claimed := false
	si.User = clip(s.user)
	// serveConn writes the TLS flags and the greeting before it sets
	// rawServer under mu, and without mu: they are read only once
	// rawServer is seen set, which orders those writes before this read.
	up := s.rawServer != nil
	if up {
		si.Server = addrPortOf(s.rawServer.RemoteAddr()).String()
		si.TLS = TLSInfo{Client: s.clientTLS, Server: s.serverTLS, ClientData: s.clientProt, ServerData: s.serverProt}
	}
	// The greeting is owed until the server's first byte, unless
	// startServerTLS read it already, or pasvgate greeted the client
	// itself (the user policy: preLogin), which then awaits USER.
	greeted := s.greeted || up && (s.greeting != nil || si.Bytes.FromServer > 0)
	var transfer *pending
	for i := range s.queue {
		p := &s.queue[i]
		if p.local != nil {
			continue // pasvgate's own reply: nothing is awaited from the server
		}
		if si.Awaiting == "" && (greeted || i > 0) {
			si.Awaiting = p.verb.String()
		}
		if transfer == nil && p.verb.IsTransfer() {
			transfer = p
		}
		if m == nil && p.mapping != nil {
			m, claimed = p.mapping, true // a transfer claimed it (commands.go)
		}
	}
	if transfer != nil {
		si.Transfer = &TransferInfo{
			Command: transfer.verb.String(),
			Arg:     clip(transfer.arg),
			Since:   transfer.sent,
			Seconds: seconds(now.Sub(transfer.sent)),
			Started: transfer.flowing,
		}
	}
	if m == nil {
		m = s.current // not claimed: a transfer takes it out of current first
	}
	switch {
	case s.ended:
		si.State = StateEnding
	case !greeted:
		si.State = StateConnecting
	case s.transfers > 0:
		si.State = StateTransfer
	case !s.loggedIn:
		si.State = StateLogin
	case si.Awaiting != "" || s.midReply:
		si.State = StateCommand
	default:
		si.State = StateIdle
	}
	s.mu.Unlock()

	if m != nil {
		// A mapping's fields other than its state are fixed once Open
		// returns it: no lock needed.
		path := "kernel"
		if m.Relay() {
			path = "relay"
		}
		si.Mapping = &MappingInfo{
			ID:         m.ID,
			Public:     m.Public.String(),
			Source:     m.Source.String(),
			Target:     m.Target.String(),
			Path:       path,
			Claimed:    claimed,
			Created:    m.Created,
			AgeSeconds: now.Sub(m.Created).Truncate(time.Second).Seconds(),
		}
	}
	return si, true
}

// seconds is d in seconds, to the millisecond.
func seconds(d time.Duration) float64 {
	return d.Round(time.Millisecond).Seconds()
}

// clip cuts s to viewMaxString bytes, at a character boundary, so that a
// cut never leaves half a UTF-8 sequence.
func clip(s string) string {
	if len(s) <= viewMaxString {
		return s
	}
	n := viewMaxString
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
