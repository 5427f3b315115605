package proxy

import (
	"context"
	"errors"
	"net/netip"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// checkActive applies the no-bounce rule to PORT/EPRT: the address must be
// the client's own and the port unprivileged. It returns the client's data
// address and true when the command may pass, or the refusal to give.
func (s *session) checkActive(verb ftp.Verb, arg []byte) (netip.AddrPort, refusal, bool) {
	var ap netip.AddrPort
	var err error
	if verb == ftp.VerbPORT {
		ap, err = ftp.ParsePORT(arg)
	} else {
		ap, err = ftp.ParseEPRT(arg)
	}
	switch {
	case err != nil:
		return ap, refusal{ftp.CodeArgSyntaxError, "Syntax error in " + verb.String() + " address.", "malformed"}, false
	case ap.Addr().Is4() != s.peer.Is4():
		if s.peer.Is4() {
			return ap, refusal{ftp.CodeNetProtoNotSupported, "Network protocol not supported, use (1)", "wrong-family"}, false
		}
		return ap, refusal{ftp.CodeNetProtoNotSupported, "Network protocol not supported, use (2)", "wrong-family"}, false
	case ap.Addr() != s.peer:
		return ap, refusal{ftp.CodeSyntaxError, "Illegal " + verb.String() + " command: address is not yours.", "bounce-address"}, false
	case ap.Port() < 1024:
		return ap, refusal{ftp.CodeSyntaxError, "Illegal " + verb.String() + " command: privileged port.", "bounce-port"}, false
	}
	return ap, refusal{}, true
}

// openActive maps the server's data connection back to the client's
// PORT/EPRT address and returns the rewritten command: the gateway's
// address towards the server and a public port Q. A mapping admits only the
// server, to the client's address and port. When nothing could be
// installed it returns a nil mapping, and the text of the client's 425.
func (s *session) openActive(ctx context.Context, verb ftp.Verb, client netip.AddrPort) ([]byte, *nat.Mapping, string) {
	const cant = "Can't open data connection."
	server := addrPortOf(s.rawServer.RemoteAddr())
	gw := addrPortOf(s.rawServer.LocalAddr()).Addr()
	if verb == ftp.VerbPORT && !gw.Is4() {
		s.log.Warn("PORT refused: the server is reached over IPv6", "server", server)
		return nil, nil, cant
	}
	if !s.isLoggedIn() {
		// Checked again where the mapping is made: however the command
		// got here, nothing is mapped without a login.
		s.log.Warn(verb.String() + " refused: not logged in")
		return nil, nil, cant
	}
	// The control client is charged for the mapping, though the server
	// makes its data connection.
	req := nat.Request{Session: s.id, Source: server.Addr(), Public: gw, Target: client, Client: s.peer, Ports: s.currentRoute().Ports}
	var m *nat.Mapping
	var err error
	if clientProt, serverProt := s.protectedLegs(); clientProt || serverProt {
		// PROT P: the server connects to pasvgate, which relays to the
		// client (relay.go).
		m, err = s.openRelay(ctx, req, relay{src: server.Addr(), locals: []netip.Addr{gw}, active: true, target: client,
			from: s.clientSideAddr(), clientTLS: clientProt, serverTLS: serverProt})
	} else {
		if !s.srv.transparent() {
			// Reverse mode: the client sees the data connection come
			// from the gateway's public side, the address it dialed.
			req.SNAT = s.clientSideAddr()
		}
		m, err = s.srv.NAT.Open(ctx, req)
	}
	if errors.Is(err, errRelayListen) {
		s.log.Warn(verb.String()+" refused", "err", err)
		return nil, nil, cant
	}
	if err != nil {
		return nil, nil, s.mappingRefused(err)
	}
	s.srv.stats.rewrite(verb.String())
	ap := netip.AddrPortFrom(gw, m.Public.Port())
	if verb == ftp.VerbPORT {
		return ftp.AppendPORT(nil, ap), m, ""
	}
	return ftp.AppendEPRT(nil, ap), m, ""
}

// clientSideAddr is the gateway's address as the client sees it: the
// address announced to the client's network, or the public address, if it
// is set, local and of the client's family; otherwise the address the
// client's control connection arrived at.
func (s *session) clientSideAddr() netip.Addr {
	local := addrPortOf(s.rawClient.LocalAddr()).Addr()
	rt := s.currentRoute()
	pub, ok := rt.announced(s.peer)
	if !ok {
		pub = rt.publicAddr()
	}
	if pub.IsValid() && pub.Is4() == local.Is4() && (s.srv.IsLocal == nil || s.srv.IsLocal(pub)) {
		return pub
	}
	return local
}
