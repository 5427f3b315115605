package load

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// Reply codes of explicit FTPS (RFC 4217).
const codeAuthOK = 234

// TLS is the FTPS a run speaks: explicit AUTH TLS on the control
// connection, then PBSZ 0 and PROT P or C (RFC 4217).
type TLS struct {
	// Config is the client's TLS configuration, nil for plain FTP. Its
	// ServerName must be set: Go's client keeps a session under the
	// ServerName, or else under the address dialled, and a data connection
	// goes to another address than its control connection, so only a name
	// lets it resume the control connection's session, which servers
	// require (vsftpd's require_ssl_reuse, ProFTPD's default). Each control
	// connection gets a session cache of its own: sessions are never
	// resumed across control connections.
	Config *tls.Config
	// Private asks for PROT P: every data connection then makes a TLS
	// handshake of its own, which must resume the control connection's
	// session; a data connection that makes a full handshake fails the run.
	Private bool
	// Leaf is a DNS name the certificate of every handshake, control and
	// data, must carry: who terminated the TLS, the server or the gateway.
	// Empty means Config.ServerName.
	Leaf string
}

// TLSStats is what the client saw of TLS in a run.
type TLSStats struct {
	// Version is the control connections' TLS version ("TLS 1.3").
	Version string `json:"version"`
	// Leaf is the first DNS name of the certificate the control connection
	// was shown.
	Leaf string `json:"leaf"`
	// DataHandshakes counts data connections with a TLS handshake, and
	// DataResumed those of them that resumed a session.
	DataHandshakes int `json:"data_handshakes"`
	DataResumed    int `json:"data_resumed"`
	// DataClear counts data connections without TLS (PROT C).
	DataClear int `json:"data_clear"`
}

// tlsState is one control connection's FTPS state.
type tlsState struct {
	// conf is the run's Config with a cache that only the control
	// connection fills; data connections take theirs from it (dataCache).
	conf    *tls.Config
	private bool
	leaf    string
	stats   *TLSStats
}

// StartTLS upgrades the control connection: AUTH TLS, the handshake. It
// counts what it sees into stats, which may be shared by the connections
// of one run. Protect sets the data protection.
func (c *Conn) StartTLS(ctx context.Context, t TLS, stats *TLSStats) error {
	if t.Config == nil || t.Config.ServerName == "" {
		return errors.New("FTPS needs a TLS configuration with a ServerName")
	}
	if err := c.do(codeAuthOK, "AUTH", "TLS"); err != nil {
		return err
	}
	// The server speaks TLS next: anything it sent in clear after the
	// 234 would be read as TLS.
	if n := c.r.Buffered(); n > 0 {
		return fmt.Errorf("the server sent %d bytes after its 234, before the TLS handshake", n)
	}
	st := &tlsState{conf: t.Config.Clone(), private: t.Private, leaf: t.Leaf, stats: stats}
	ctrl := t.Config.Clone()
	ctrl.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	st.conf.ClientSessionCache = dataCache{ctrl.ClientSessionCache}
	tc := tls.Client(c.nc, ctrl)
	if st.leaf == "" {
		st.leaf = ctrl.ServerName
	}
	if err := c.handshake(ctx, tc, "control", st.leaf); err != nil {
		return err
	}
	cs := tc.ConnectionState()
	stats.Version = tls.VersionName(cs.Version)
	if len(cs.PeerCertificates) > 0 && len(cs.PeerCertificates[0].DNSNames) > 0 {
		stats.Leaf = cs.PeerCertificates[0].DNSNames[0]
	}
	c.nc, c.tls = tc, st
	c.r.Reset(tc)
	return nil
}

// Protect sets the data protection StartTLS was asked for: PBSZ 0, then
// PROT P or C.
func (c *Conn) Protect() error {
	if c.tls == nil {
		return errors.New("PROT without AUTH TLS")
	}
	if err := c.do(codeOK, "PBSZ", "0"); err != nil {
		return err
	}
	prot := "C"
	if c.tls.private {
		prot = "P"
	}
	return c.do(codeOK, "PROT", prot)
}

// handshake runs tc's handshake within the step timeout and checks the
// certificate it was shown.
func (c *Conn) handshake(ctx context.Context, tc *tls.Conn, what, leaf string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake on the %s connection: %w", what, err)
	}
	cs := tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 || !slices.Contains(cs.PeerCertificates[0].DNSNames, leaf) {
		var names []string
		if len(cs.PeerCertificates) > 0 {
			names = cs.PeerCertificates[0].DNSNames
		}
		return fmt.Errorf("TLS on the %s connection: certificate for %v, want one for %s (the TLS is not terminated where this column says)",
			what, names, leaf)
	}
	return nil
}

// protect returns the connection a transfer reads or writes on dc, the
// data connection, once the server has answered the transfer command: dc
// itself for plain FTP and PROT C, or a TLS client on it for PROT P,
// handshaken, which must have resumed the control connection's session.
func (c *Conn) protect(ctx context.Context, dc net.Conn) (net.Conn, error) {
	if c.tls == nil {
		return dc, nil
	}
	if !c.tls.private {
		c.tls.stats.DataClear++
		return dc, nil
	}
	tc := tls.Client(dc, c.tls.conf)
	if err := c.handshake(ctx, tc, "data", c.tls.leaf); err != nil {
		return nil, err
	}
	c.tls.stats.DataHandshakes++
	if !tc.ConnectionState().DidResume {
		return nil, errors.New("the data connection's TLS handshake did not resume the control connection's session")
	}
	c.tls.stats.DataResumed++
	// The handshake had its own bound; the transfer has dc's.
	return tc, tc.SetDeadline(time.Now().Add(c.timeout))
}

// dataCache is a data connection's view of its control connection's
// session cache: it resumes the control connection's session and keeps
// nothing a data connection is given. So every data connection resumes
// the control session itself, as Python's ftplib does (it hands each data
// connection the control socket's session) and as servers that tie data
// to control sessions expect, rather than the session of the data
// connection before it, which Go's cache would otherwise keep.
type dataCache struct{ ctrl tls.ClientSessionCache }

func (d dataCache) Get(key string) (*tls.ClientSessionState, bool) { return d.ctrl.Get(key) }
func (d dataCache) Put(string, *tls.ClientSessionState)            {}
