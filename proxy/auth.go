package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// The FTPS commands (RFC 4217): AUTH, PBSZ, PROT and CCC, and the two
// upgrades AUTH sets off. pasvgate answers PBSZ and PROT itself when the
// server's leg is clear, and passes them on in canonical form when it is
// TLS, so that the server's data protection is always what pasvgate
// agreed with the client.
//
// PROT C data takes the kernel path, as plain FTP's does; PROT P data is
// relayed by pasvgate (relay.go).

// authMechanism reports whether AUTH's argument asks for TLS. "SSL" is
// what curl sends first, and means the same to every server pasvgate is
// tested with; "TLS-C" is RFC 4217's other name for TLS. "TLS-P" (an old
// draft's TLS with data protected by default) is not offered.
func authMechanism(arg []byte) bool {
	a := ftp.TrimSpace(arg)
	return bytes.EqualFold(a, []byte("TLS")) || bytes.EqualFold(a, []byte("TLS-C")) || bytes.EqualFold(a, []byte("SSL"))
}

// protLevel returns PROT's level letter, upper case, or 0 if the argument
// is not one letter.
func protLevel(arg []byte) byte {
	a := ftp.TrimSpace(arg)
	if len(a) != 1 {
		return 0
	}
	return a[0] &^ 0x20
}

// tlsRefusals are the refusals of the FTPS commands, in the order they are
// checked; commands.go's refusals table runs them in its turn. Read only.
var tlsRefusals = [...]struct {
	applies func(*session, ftp.Command) bool
	refusal
}{{
	// Once the channel is encrypted pasvgate must read the 227 it
	// rewrites, so without a certificate TLS is refused, not let through
	// blind.
	func(s *session, c ftp.Command) bool { return c.Verb == ftp.VerbAUTH && s.srv.settings().TLS == TLSOff },
	refusal{ftp.CodePolicyRefused, "AUTH is not supported through this gateway: FTPS is not available.", "auth-tls"},
}, {
	// --tls require: no password crosses the client's link in clear.
	// The server never sees the command.
	func(s *session, c ftp.Command) bool {
		switch c.Verb {
		case ftp.VerbUSER, ftp.VerbPASS, ftp.VerbACCT:
			return s.srv.settings().TLS == TLSRequire && !s.isClientTLS()
		}
		return false
	},
	refusal{ftp.CodeNotLoggedIn, "TLS required: send AUTH TLS first.", "tls-required"},
}, {
	func(s *session, c ftp.Command) bool { return c.Verb == ftp.VerbAUTH && s.isClientTLS() },
	refusal{ftp.CodeBadSequence, "Already using TLS.", "auth-again"},
}, {
	func(_ *session, c ftp.Command) bool { return c.Verb == ftp.VerbAUTH && !authMechanism(c.Arg) },
	refusal{ftp.CodeParamNotImplemented, "AUTH TLS or AUTH SSL only.", "auth-mechanism"},
}, {
	// The handshake starts right after the 234: replies still owed to
	// earlier commands would land in it.
	func(s *session, c ftp.Command) bool { return c.Verb == ftp.VerbAUTH && s.owesReplies() },
	refusal{ftp.CodeBadSequence, "AUTH must wait for the replies to earlier commands.", "auth-pipelined"},
}, {
	func(s *session, c ftp.Command) bool {
		switch c.Verb {
		case ftp.VerbPBSZ, ftp.VerbPROT, ftp.VerbCCC:
			return !s.isClientTLS()
		}
		return false
	},
	refusal{ftp.CodeBadSequence, "Send AUTH TLS first.", "tls-sequence"},
}, {
	// RFC 4217 8: TLS uses no protection buffer, so PBSZ is 0; a client
	// asking for more is told 0 by its 200 (as vsftpd does), but the
	// argument must be a number.
	func(_ *session, c ftp.Command) bool { return c.Verb == ftp.VerbPBSZ && !decimal(ftp.TrimSpace(c.Arg)) },
	refusal{ftp.CodeArgSyntaxError, "PBSZ takes a number.", "pbsz-syntax"},
}, {
	// S and E have no meaning for TLS (RFC 4217 9).
	func(_ *session, c ftp.Command) bool {
		l := protLevel(c.Arg)
		return c.Verb == ftp.VerbPROT && (l == 'S' || l == 'E')
	},
	refusal{ftp.CodeProtLevelNotSupported, "PROT S and E are not supported: use PROT C or P.", "prot-level"},
}, {
	func(_ *session, c ftp.Command) bool {
		l := protLevel(c.Arg)
		return c.Verb == ftp.VerbPROT && l != 'C' && l != 'P'
	},
	refusal{ftp.CodeParamNotImplemented, "PROT C or P only.", "prot-syntax"},
}, {
	// CCC would put the rest of the session, and its next PASS after a
	// REIN, in clear on the client's link, and a clear control channel is
	// what pasvgate can already read without it: nothing is gained.
	func(_ *session, c ftp.Command) bool { return c.Verb == ftp.VerbCCC },
	refusal{ftp.CodePolicyRefused, "CCC is refused: the control channel stays encrypted.", "ccc"},
}}

func decimal(b []byte) bool {
	if len(b) == 0 || len(b) > 10 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Lines pasvgate sends the server for PBSZ and PROT: canonical, whatever
// the client wrote.
var (
	linePBSZ0 = []byte("PBSZ 0\r\n")
	linePROTC = []byte("PROT C\r\n")
	linePROTP = []byte("PROT P\r\n")
	lineAUTH  = []byte("AUTH TLS\r\n")
)

// protection handles an accepted PBSZ or PROT (C or P). PBSZ is
// pasvgate's to answer: the server's leg had its PBSZ 0 when it was
// upgraded (upgradeServer, startServerTLS). PROT is passed on canonical
// when the server's leg is TLS, so that the server protects its side of
// the data connections when the client does, and answered by pasvgate
// when it is clear. It returns the line to send the server, or nil when
// pasvgate has answered.
//
// RFC 4217 puts PBSZ before PROT, but vsftpd, ProFTPD, pure-ftpd and
// ftpserverlib all take a PROT without it, and Python's FTP_TLS.prot_c()
// sends none: so does pasvgate.
//
// The client's level is in force from the command on, not from the
// server's 200: a data command pipelined behind PROT must be judged by
// it. The server's is in force from its 2xx (popLocked): a server that
// refuses PROT C (ProFTPD's TLSRequired on) keeps its side protected, and
// its data connections are then relayed even for a clear client's.
func (s *session) protection(c ftp.Command) []byte {
	if c.Verb == ftp.VerbPBSZ {
		s.reply(ftp.CodeOK, "PBSZ=0")
		return nil
	}
	p := protLevel(c.Arg) == 'P'
	s.mu.Lock()
	s.clientProt = p
	serverTLS := s.serverTLS
	s.mu.Unlock()
	switch {
	case serverTLS && p:
		return linePROTP
	case serverTLS:
		return linePROTC
	case p:
		s.reply(ftp.CodeOK, "Protection level set to Private.")
	default:
		s.reply(ftp.CodeOK, "Protection level set to Clear.")
	}
	return nil
}

// protectedLegs reports each leg's data protection now: whether the
// client's side, and the server's, of a data connection are TLS.
func (s *session) protectedLegs() (client, server bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientProt, s.serverProt
}

// auth upgrades the client's control channel after an AUTH that passed
// its refusals. When the server's leg is to follow (--upstream-tls auto),
// the server is asked first, and a refusal of its own is the client's
// answer: the client's channel then stays clear, as the server's does. It
// returns a reason to end the session, or "".
func (s *session) auth(ctx context.Context) string {
	if s.unread > 0 {
		// The client must wait for the 234 before its ClientHello; bytes
		// already here were sent in clear after AUTH, and would be read
		// as TLS, or as commands, by different parties.
		s.srv.stats.tlsFailed(tlsFailCleartextAfter)
		s.log.Warn("session closed: the client sent more after AUTH without waiting for the reply", "bytes", s.unread)
		return s.closeWith("Data after AUTH before its reply: closing control connection.", endClientTLS)
	}
	if s.srv.settings().UpstreamTLS == UpstreamTLSAuto && !s.isServerTLS() {
		if reason := s.authUpstream(ctx); reason != "" {
			return reason
		}
		if !s.isServerTLS() {
			return "" // the server's refusal has been forwarded
		}
	}
	return s.upgradeClient(ctx)
}

// authUpstream sends the server AUTH TLS and waits until its reply has
// retired the command: a 234 upgrades the server's leg (the replies
// goroutine, upgradeServer), anything else goes to the client. It returns
// a reason to end the session, or "".
func (s *session) authUpstream(ctx context.Context) string {
	if reason := s.enqueue(pending{verb: ftp.VerbAUTH}); reason != "" {
		return reason
	}
	if err := s.writeServer(lineAUTH); err != nil {
		return endServerClosed
	}
	t := time.NewTimer(s.srv.handshakeTimeout() + replyGrace)
	defer t.Stop()
	for {
		s.mu.Lock()
		waiting := !s.ended && len(s.queue) > 0 && s.queue[0].verb == ftp.VerbAUTH
		s.mu.Unlock()
		if !waiting {
			return s.endedWith()
		}
		select {
		case <-s.popped:
		case <-t.C:
			s.srv.stats.tlsFailed(tlsFailUpstreamProtocol)
			s.log.Warn("session closed: the server did not answer AUTH TLS in time")
			s.say421AndEnd("The FTP server did not answer AUTH TLS.", endServerTLS)
			return endServerTLS
		case <-ctx.Done():
			return endShutdown
		}
	}
}

// upgradeServer runs on the replies goroutine when the server has
// answered pasvgate's AUTH TLS with 234: it makes the TLS handshake with
// the server, retires the AUTH (which wakes the commands goroutine, see
// authUpstream) and returns the reader for the server's now encrypted
// replies. The client hears nothing of the server's 234: it gets
// pasvgate's own, from upgradeClient.
func (s *session) upgradeServer(ctx context.Context, r *ftp.Reader) (*ftp.Reader, string) {
	if n := r.Buffered(); n > 0 {
		s.srv.stats.tlsFailed(tlsFailUpstreamProtocol)
		s.log.Warn("session closed: the server sent more after its 234", "bytes", n)
		s.say421AndEnd("TLS to the FTP server failed.", endServerTLS)
		return nil, endServerTLS
	}
	s.upTLS = upstreamTLS(s.srv.settings(), s.upstream)
	tc := tls.Client(s.rawServer, s.upTLS)
	if err := handshake(ctx, tc, s.srv.handshakeTimeout()); err != nil {
		why := upstreamFailure(err)
		s.srv.stats.tlsFailed(why)
		s.log.Warn("session closed: TLS handshake with the server failed", "reason", why, "err", err)
		s.say421AndEnd("TLS to the FTP server failed.", endServerTLS)
		return nil, endServerTLS
	}
	s.srv.stats.tlsHandshake("server")
	// PBSZ 0 now, as startServerTLS does: the client's own PBSZ is then
	// pasvgate's to answer, and its PROT, with or without a PBSZ, finds
	// the server ready. The commands goroutine waits for the AUTH
	// (authUpstream), so nothing else writes to the server meanwhile.
	nr := ftp.NewReader(tc, s.maxLine())
	_ = s.rawServer.SetDeadline(time.Now().Add(s.srv.handshakeTimeout()))
	_, err := tc.Write(linePBSZ0)
	code := 0
	if err == nil {
		_, code, err = readReply(nr)
	}
	_ = s.rawServer.SetDeadline(time.Time{})
	if err != nil || code/100 != 2 {
		s.srv.stats.tlsFailed(tlsFailUpstreamRefused)
		s.log.Warn("session closed: the server refused PBSZ 0 after AUTH TLS", "code", code, "err", err)
		s.say421AndEnd("TLS to the FTP server failed.", endServerTLS)
		return nil, endServerTLS
	}
	s.upDataTLS = upstreamDataTLS(s.upTLS, tc.ConnectionState())
	s.mu.Lock()
	s.server = tc
	s.serverTLS = true
	s.popLocked(ftp.CodeAuthOK)
	s.mu.Unlock()
	return nr, ""
}

// upgradeClient answers AUTH with 234 and makes the TLS handshake with
// the client. It holds s.mu throughout, so that no reply is written to
// the client in clear once the 234 has gone; the handshake is bounded by
// the handshake timeout. The commands goroutine then reads s.client, now the
// TLS connection.
func (s *session) upgradeClient(ctx context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return s.reason
	}
	if s.midReply {
		// A server's unsolicited multi-line notice is half forwarded:
		// the 234 cannot go now, and the client waits for it in clear.
		s.srv.stats.tlsFailed(tlsFailClientHandshake)
		s.log.Warn("session closed: AUTH TLS came while a server notice was half forwarded")
		s.endLocked(endClientTLS)
		return endClientTLS
	}
	s.writeClientLocked(ftp.AppendReply(nil, ftp.CodeAuthOK, "AUTH TLS successful."))
	tc := tls.Server(s.rawClient, s.sessionTLS())
	if err := handshake(ctx, tc, s.srv.handshakeTimeout()); err != nil {
		s.srv.stats.tlsFailed(tlsFailClientHandshake)
		s.log.Warn("session closed: TLS handshake with the client failed", "err", err)
		s.endLocked(endClientTLS)
		return endClientTLS
	}
	s.srv.stats.tlsHandshake("client")
	s.client = tc
	s.clientTLS = true
	s.log.Info("control channel is TLS", "version", tls.VersionName(tc.ConnectionState().Version),
		"server_tls", s.serverTLS)
	return ""
}

func (s *session) isClientTLS() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientTLS
}

func (s *session) isServerTLS() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serverTLS
}

// owesReplies reports whether a reply is still due to the client: the
// server's, or pasvgate's own queued behind it.
func (s *session) owesReplies() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) > 0 || s.midReply
}

// startServerTLS upgrades the server's leg before the client's first
// command reaches it (--upstream-tls always, or auto for a client of an
// implicit-TLS listener): it reads the server's greeting, which it
// returns for the client, then sends AUTH TLS, makes the handshake, and
// sets PBSZ 0 and PROT C, so that data is clear until the client asks
// otherwise; or PROT P for a server that refuses clear data, which
// protected reports. On failure it returns the reason for
// Stats.TLSFailures.
func startServerTLS(ctx context.Context, u net.Conn, st *Settings, cfg *tls.Config, maxLine int) (greeting []byte, tc *tls.Conn, protected bool, why string, err error) {
	d := durationOr(st.HandshakeTimeout, defaultHandshakeTimeout)
	_ = u.SetDeadline(time.Now().Add(d))
	r := ftp.NewReader(u, maxLine)
	greeting, code, err := readReply(r)
	switch {
	case err != nil:
		return nil, nil, false, tlsFailUpstreamProtocol, fmt.Errorf("reading the greeting: %w", err)
	case code != ftp.CodeServiceReady:
		return nil, nil, false, tlsFailUpstreamProtocol, fmt.Errorf("greeting is %d, not 220", code)
	}
	if _, err := u.Write(lineAUTH); err != nil {
		return nil, nil, false, tlsFailUpstreamProtocol, fmt.Errorf("sending AUTH TLS: %w", err)
	}
	if _, code, err = readReply(r); err != nil || code != ftp.CodeAuthOK {
		return nil, nil, false, tlsFailUpstreamRefused, fmt.Errorf("AUTH TLS answered %d (%v)", code, err)
	}
	if r.Buffered() > 0 {
		return nil, nil, false, tlsFailUpstreamProtocol, errors.New("the server sent more after its 234")
	}
	tc = tls.Client(u, cfg)
	if err := handshake(ctx, tc, d); err != nil {
		return nil, nil, false, upstreamFailure(err), fmt.Errorf("TLS handshake: %w", err)
	}
	r = ftp.NewReader(tc, maxLine)
	ask := func(line []byte) (int, error) {
		if _, err := tc.Write(line); err != nil {
			return 0, fmt.Errorf("sending %s: %w", bytes.TrimSpace(line), err)
		}
		reply, code, err := readReply(r)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", bytes.TrimSpace(line), err)
		}
		if code/100 != 2 {
			return code, fmt.Errorf("%s answered %q", bytes.TrimSpace(line), bytes.TrimSpace(reply))
		}
		return code, nil
	}
	if _, err := ask(linePBSZ0); err != nil {
		return nil, nil, false, tlsFailUpstreamRefused, err
	}
	// Clear data if the server takes it: it then goes through the
	// kernel. A server that requires protected data (ProFTPD's
	// TLSRequired on answers 534) gets PROT P, and its data connections
	// are relayed.
	if code, err := ask(linePROTC); err != nil {
		if code == 0 {
			return nil, nil, false, tlsFailUpstreamProtocol, err
		}
		if _, perr := ask(linePROTP); perr != nil {
			return nil, nil, false, tlsFailUpstreamRefused, fmt.Errorf("%v, and %w", err, perr)
		}
		protected = true
	}
	_ = u.SetDeadline(time.Time{})
	return greeting, tc, protected, "", nil
}

// readReply reads one whole reply and returns its raw bytes and code.
func readReply(r *ftp.Reader) ([]byte, int, error) {
	var st ftp.ReplyState
	var out []byte
	for lines := 0; lines < maxPassiveLines*4; lines++ {
		raw, text, err := r.ReadLine()
		if err != nil {
			return nil, 0, err
		}
		code, last, err := st.Feed(text)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, raw...)
		if last {
			return out, code, nil
		}
	}
	return nil, 0, errors.New("reply too long")
}

// tlsFeatures are the FEAT lines pasvgate adds when it offers TLS (RFC
// 4217 6): in place of the server's, which speak of the server's leg.
var tlsFeatures = []byte(" AUTH TLS\r\n PBSZ\r\n PROT\r\n")
