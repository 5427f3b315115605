package proxy

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strconv"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// passive handles a complete 227 or 229 reply: check the address, open the
// mapping, and only then send the client the rewritten reply. Any failure
// gives the client 425 and leaves nothing installed.
func (s *session) passive(ctx context.Context, code int, text, raw []byte) {
	want := ftp.VerbPASV
	if code == ftp.CodeEnteringExtPassive {
		want = ftp.VerbEPSV
	}
	var line []byte
	var m *nat.Mapping
	if s.srv.transparent() {
		line = s.fixPassive(code, text, raw)
	} else {
		line, m = s.openPassive(ctx, code, want, text)
	}
	s.mu.Lock()
	if m != nil {
		if s.ended {
			m.Release(nat.ReasonSessionEnd)
		} else {
			s.replaceMappingLocked(m)
		}
	}
	s.writeClientLocked(line)
	s.midReply = false
	done := s.popLocked(code)
	s.mu.Unlock()
	s.logFinished(done)
}

// openPassive returns the line to send the client for a 227/229 reply, and
// the mapping it opened, if any.
func (s *session) openPassive(ctx context.Context, code int, want ftp.Verb, text []byte) ([]byte, *nat.Mapping) {
	cant := func() []byte {
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	if got := s.headVerb(); got != want {
		s.log.Warn("passive reply refused: no matching command", "code", code, "pending", got.String())
		return cant(), nil
	}
	if !s.isLoggedIn() {
		// The PASV went out logged in, but a REIN has ended the login
		// since: nothing is mapped without one.
		s.log.Warn("passive reply refused: not logged in", "code", code)
		return cant(), nil
	}
	server := addrPortOf(s.rawServer.RemoteAddr())
	local := addrPortOf(s.rawClient.LocalAddr())
	var backend netip.AddrPort
	if code == ftp.CodeEnteringPassive {
		ap, err := ftp.ParsePASV(text)
		if err != nil {
			s.log.Warn("passive reply refused: unparseable 227", "server", server, "err", err)
			return cant(), nil
		}
		switch a := ap.Addr(); {
		case a.IsUnspecified():
			// RFC 1123 and common practice: 0.0.0.0 means "the address of
			// this control connection".
			backend = netip.AddrPortFrom(server.Addr(), ap.Port())
		case a != server.Addr():
			// A backend must never make the gateway forward to another host.
			s.log.Warn("passive reply refused: server advertised another host",
				"server", server.Addr(), "advertised", a, "port", ap.Port())
			return cant(), nil
		default:
			backend = ap
		}
	} else {
		port, err := ftp.ParseEPSV(text)
		if err != nil {
			s.log.Warn("passive reply refused: unparseable 229", "server", server, "err", err)
			return cant(), nil
		}
		backend = netip.AddrPortFrom(server.Addr(), port)
	}

	// What the client is told, and what the kernel entry matches. EPSV
	// clients connect back to the address they dialed; PASV clients to the
	// public address, which arrives as the local address when the gateway
	// is itself behind a 1:1 NAT.
	st := s.srv.settings()
	rt := s.currentRoute()
	pub, announced := rt.announced(s.peer)
	if !announced {
		if rt.PublicAddrFunc != nil && !rt.PublicAddrFunc().IsValid() {
			// Following an interface that has no usable address right
			// now: nothing to advertise until it has one.
			s.srv.stats.refuse("no-public-address")
			s.log.Warn("passive reply refused: the public interface has no usable address")
			return cant(), nil
		}
		pub = rt.publicAddr()
	}
	public := local.Addr()
	match := local.Addr()
	var dialed netip.Addr
	if code == ftp.CodeEnteringPassive && pub.IsValid() {
		public = pub
		if s.srv.IsLocal == nil || s.srv.IsLocal(public) {
			match = public
			// Some clients ignore the 227's address and connect back to
			// the one they dialed (curl by default, Python ftplib, lftp's
			// ftp:fix-pasv-address): the mapping admits them there too,
			// on the same port, still once.
			if d := local.Addr(); d != match && d.Is4() == match.Is4() && (s.srv.IsLocal == nil || s.srv.IsLocal(d)) {
				dialed = d
			}
		}
	}
	if code == ftp.CodeEnteringPassive && !public.Is4() {
		s.log.Warn("passive reply refused: no IPv4 public address for 227", "public", public)
		return cant(), nil
	}
	req := nat.Request{Session: s.id, Source: s.peer, Public: match, Dialed: dialed, Target: backend, Client: s.peer, Ports: rt.Ports}
	var m *nat.Mapping
	var err error
	if clientProt, serverProt := s.protectedLegs(); clientProt || serverProt {
		// PROT P: pasvgate relays the data connection itself (relay.go),
		// on a port of the range, and dials the server from the control
		// connection's own address.
		locals := []netip.Addr{match}
		if dialed.IsValid() {
			locals = append(locals, dialed)
		}
		m, err = s.openRelay(ctx, req, relay{src: s.peer, locals: locals, target: backend,
			from: addrPortOf(s.rawServer.LocalAddr()).Addr(), clientTLS: clientProt, serverTLS: serverProt})
	} else {
		if st.SNAT {
			req.SNAT = addrPortOf(s.rawServer.LocalAddr()).Addr()
		}
		m, err = s.srv.NAT.Open(ctx, req)
	}
	if errors.Is(err, errRelayListen) {
		s.log.Warn("passive reply refused", "err", err)
		return cant(), nil
	}
	if err != nil {
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, s.mappingRefused(err)), nil
	}
	s.srv.stats.rewrite(strconv.Itoa(code))
	var line []byte
	if code == ftp.CodeEnteringPassive {
		line = ftp.AppendPASV(nil, netip.AddrPortFrom(public, m.Public.Port()))
	} else {
		line = ftp.AppendEPSV(nil, m.Public.Port())
	}
	s.log.Debug("passive reply rewritten", "server_reply", string(bytes.TrimSpace(text)),
		"client_reply", string(bytes.TrimSpace(line)), "mapping", m.ID)
	return line, m
}

// fixPassive handles a 227/229 in transparent mode, where the client
// connects out to the server itself through the router's masquerade. A
// 229 passes unchanged; a 227 that names the server's own address is sent
// in canonical form with that address. A 227
// that names anything else (a private or loopback address, another host) is
// rewritten to the server's address the client dialed: the fix for a
// server that advertises the wrong passive address.
func (s *session) fixPassive(code int, text, raw []byte) []byte {
	if code != ftp.CodeEnteringPassive {
		return raw
	}
	server := addrPortOf(s.rawServer.RemoteAddr())
	ap, err := ftp.ParsePASV(text)
	if err != nil {
		s.log.Warn("passive reply refused: unparseable 227", "server", server, "err", err)
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	if ap.Addr() == server.Addr() {
		// Sent as pasvgate formats it, not as the server wrote it: an odd
		// 227 (more numbers, several lines) could read as another address
		// to a client than to pasvgate, which checked this one.
		return ftp.AppendPASV(nil, ap)
	}
	if !server.Addr().Is4() {
		return ftp.AppendReply(nil, ftp.CodeCantOpenData, "Can't open data connection.")
	}
	fixed := netip.AddrPortFrom(server.Addr(), ap.Port())
	s.srv.stats.rewrite("227-fixed")
	s.log.Info("227 rewritten: server advertised an address its clients cannot use",
		"server", server.Addr(), "advertised", ap.Addr(), "port", ap.Port(), "rewritten", fixed)
	return ftp.AppendPASV(nil, fixed)
}

// mappingRefused counts and logs why nat.Open refused a mapping, and
// returns the text of the client's 425.
func (s *session) mappingRefused(err error) string {
	if errors.Is(err, nat.ErrClientLimit) {
		s.srv.stats.refuse("max-mappings-per-ip")
		s.log.Warn("mapping refused: the client's address holds its most data ports", "client", s.peer)
		return "Can't open data connection: too many data connections from your address."
	}
	s.srv.stats.refuse("mapping-failed")
	return "Can't open data connection."
}
