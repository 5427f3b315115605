package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// FTPS (RFC 4217): pasvgate terminates TLS on each leg of the control
// channel, so that it can still read and rewrite the 227/229 and PORT/EPRT
// inside. This file holds the settings and the TLS configurations of both
// legs; auth.go holds the commands (AUTH, PBSZ, PROT, CCC) and the
// upgrades they trigger.

// TLSMode is whether clients may, or must, protect their control channel
// with TLS.
type TLSMode uint8

// The client-side TLS modes (--tls).
const (
	// TLSOff refuses AUTH with 534 and hides TLS from FEAT.
	TLSOff TLSMode = iota
	// TLSAllow offers AUTH TLS (explicit FTPS) and serves clear clients
	// too.
	TLSAllow
	// TLSRequire refuses USER, PASS and ACCT with 530 until the control
	// channel is TLS: no password crosses the client's link in clear.
	TLSRequire
)

// ParseTLSMode parses --tls: off, allow or require.
func ParseTLSMode(s string) (TLSMode, error) {
	switch s {
	case "off":
		return TLSOff, nil
	case "allow":
		return TLSAllow, nil
	case "require":
		return TLSRequire, nil
	}
	return TLSOff, fmt.Errorf("%q: want off, allow or require", s)
}

// String returns the mode as --tls spells it.
func (m TLSMode) String() string {
	return [...]string{"off", "allow", "require"}[m]
}

// UpstreamTLS is when pasvgate speaks TLS to the server.
type UpstreamTLS uint8

// The server-side TLS modes (--upstream-tls).
const (
	// UpstreamTLSAuto: when the client's control channel is TLS. pasvgate
	// sends the server AUTH TLS when the client sends AUTH, and at the
	// start of a session on an implicit-TLS listener.
	UpstreamTLSAuto UpstreamTLS = iota
	// UpstreamTLSAlways: at the start of every session, for clear clients
	// too, towards a server that requires TLS.
	UpstreamTLSAlways
	// UpstreamTLSNever: the server's leg stays clear (TLS offload, for a
	// server in a private LAN).
	UpstreamTLSNever
)

// ParseUpstreamTLS parses --upstream-tls: auto, always or never.
func ParseUpstreamTLS(s string) (UpstreamTLS, error) {
	switch s {
	case "auto":
		return UpstreamTLSAuto, nil
	case "always":
		return UpstreamTLSAlways, nil
	case "never":
		return UpstreamTLSNever, nil
	}
	return UpstreamTLSAuto, fmt.Errorf("%q: want auto, always or never", s)
}

// String returns the mode as --upstream-tls spells it.
func (m UpstreamTLS) String() string {
	return [...]string{"auto", "always", "never"}[m]
}

// defaultHandshakeTimeout bounds a TLS handshake on either leg
// (Settings.HandshakeTimeout). A client that trickles its ClientHello
// holds a session slot no longer than this; real handshakes take
// milliseconds, and a few round trips on a slow link well under a second.
const defaultHandshakeTimeout = 10 * time.Second

// handshakeTimeout is the bound in force on a TLS handshake.
func (s *Server) handshakeTimeout() time.Duration {
	return durationOr(s.settings().HandshakeTimeout, defaultHandshakeTimeout)
}

// Reasons a TLS handshake failed, for Stats.TLSFailures and the log.
const (
	tlsFailClientHandshake   = "client-handshake"
	tlsFailCleartextAfter    = "cleartext-after-auth"
	tlsFailUpstreamRefused   = "upstream-refused"
	tlsFailUpstreamHandshake = "upstream-handshake"
	tlsFailUpstreamVerify    = "upstream-verify"
	tlsFailUpstreamProtocol  = "upstream-protocol"
)

// errNoCertificate: TLS is on but no certificate is loaded. cmd/pasvgate
// refuses such a configuration; a Server built another way fails the
// handshake with this.
var errNoCertificate = errors.New("no TLS certificate configured")

// clientTLS is the configuration pasvgate serves clients with. It is made
// once; the certificate is looked up per handshake, so that Reload (SIGHUP)
// changes it for new handshakes while established sessions keep theirs.
func (s *Server) clientTLS() *tls.Config {
	s.tlsOnce.Do(func() {
		s.tlsConf = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				if c := s.settings().Certificate; c != nil {
					return c, nil
				}
				return nil, errNoCertificate
			},
		}
	})
	return s.tlsConf
}

// upstreamTLS is a session's configuration towards the server:
// the server's certificate is verified against UpstreamRoots (the system's
// roots if nil) for UpstreamServerName, or else the host it dials.
func upstreamTLS(st *Settings, dialed string) *tls.Config {
	name := st.UpstreamServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(dialed)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         name,
		RootCAs:            st.UpstreamRoots,
		InsecureSkipVerify: st.UpstreamInsecure, // the operator's explicit choice, warned about at start
		// One session's own: its data connections resume the control
		// connection's TLS session (servers require it), and no other
		// session's. Go resumes with tickets only.
		ClientSessionCache: tls.NewLRUClientSessionCache(2),
	}
}

// handshake runs a TLS handshake on c within d (or ctx).
func handshake(ctx context.Context, c *tls.Conn, d time.Duration) error {
	hctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return c.HandshakeContext(hctx)
}

// upstreamFailure names why a handshake with the server failed: its
// certificate did not verify, or anything else.
func upstreamFailure(err error) string {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return tlsFailUpstreamVerify
	}
	return tlsFailUpstreamHandshake
}

// upstreamDataTLS is a session's configuration for its data connections
// to the server: upTLS, sharing its session cache (the data connections
// resume the control connection's session), offering only the key
// exchange the control connection's handshake settled on. Go's client
// otherwise makes a post-quantum hybrid key share for every handshake,
// a third of a relay's handshake work, which a server that chose plain
// X25519 for the control connection (OpenSSL 3.0, vsftpd's and
// ProFTPD's on Debian 12) discards; one that chose the hybrid gets it
// again.
func upstreamDataTLS(up *tls.Config, control tls.ConnectionState) *tls.Config {
	d := up.Clone()
	if control.CurveID != 0 {
		d.CurvePreferences = []tls.CurveID{control.CurveID}
	}
	return d
}
