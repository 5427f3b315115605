package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// The FTPS checks (RFC 4217), run when the server offers AUTH TLS: one
// session that upgrades, shows its certificate, logs in and lists over
// PROT P data connections, and one bare handshake per TLS version.
//
// The certificate is checked by the probe itself, after a handshake that
// accepts any: a certificate that does not verify is a finding, and the
// rest of the checks still run.

// systemRoots names the default trust anchors in reports.
const systemRoots = "system roots"

// tlsVersions are tried newest first. Go's client offers TLS 1.0 and 1.1
// only when MinVersion asks for them, which is what the probe does.
var tlsVersions = []uint16{tls.VersionTLS13, tls.VersionTLS12, tls.VersionTLS11, tls.VersionTLS10}

// ticketCache is the control connection's and the resuming data
// connections' session cache. It counts the tickets stored, which tells a
// server that issues none (Go resumes with tickets only) from one that
// declines to resume.
type ticketCache struct {
	tls.ClientSessionCache
	mu   sync.Mutex
	puts int
}

func newTicketCache() *ticketCache {
	return &ticketCache{ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

func (c *ticketCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.mu.Lock()
		c.puts++
		c.mu.Unlock()
	}
	c.ClientSessionCache.Put(key, cs)
}

func (c *ticketCache) tickets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.puts
}

// tlsConfig is a client configuration for versions min to max. It accepts
// any certificate (checkCert judges it); ServerName is always set, because
// Go keys its session cache by it, and a data connection, on another port,
// resumes the control connection's session only under the same key.
func (p *prober) tlsConfig(cache tls.ClientSessionCache, minV, maxV uint16) *tls.Config {
	return &tls.Config{
		ServerName:         p.serverName,
		InsecureSkipVerify: true, // checkCert verifies: a bad certificate is a finding, not the end
		MinVersion:         minV,
		MaxVersion:         maxV,
		ClientSessionCache: cache,
	}
}

// probeTLS runs the FTPS checks.
func (p *prober) probeTLS() *TLSReport {
	t := &TLSReport{ServerName: p.serverName, Roots: p.rootsName, Data: []TLSData{}, Versions: []VersionResult{}}
	cache := newTicketCache()
	// Every version the probe can speak: an old server's certificate and
	// data connections are still worth checking; tls-versions judges the
	// version.
	conf := p.tlsConfig(cache, tls.VersionTLS10, tls.VersionTLS13)
	c, err := p.connectTLS(conf)
	var he handshakeError
	switch {
	case err != nil && !errors.As(err, &he):
		// No handshake was answered (AUTH TLS refused, a timeout): one
		// per version would only wait as long again, four times.
		t.Error = err.Error()
		return t
	case err != nil:
		t.Error = err.Error()
	default:
		st := c.conn.(*tls.Conn).ConnectionState()
		t.Version, t.CipherSuite = tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
		t.Certificate = checkCert(st.PeerCertificates, p.serverName, p.roots, p.rootsName, p.now())
		p.c = c
		p.protP(t, conf, cache)
		p.quit()
	}
	for _, v := range tlsVersions {
		vr := VersionResult{Version: tls.VersionName(v)}
		c, err := p.connectTLS(p.tlsConfig(nil, v, v))
		if err != nil {
			vr.Error = err.Error()
		} else {
			vr.Accepted = true
			c.close()
		}
		t.Versions = append(t.Versions, vr)
	}
	return t
}

// connectTLS opens a control connection and upgrades it: AUTH TLS, then
// the handshake. The error is the report's wording.
func (p *prober) connectTLS(conf *tls.Config) (*ctrl, error) {
	c, err := p.connect(false)
	if err != nil {
		return nil, err
	}
	r, err := c.command(p, "AUTH TLS")
	switch {
	case err != nil:
		c.close()
		return nil, fmt.Errorf("AUTH TLS: %s", p.describe(err))
	case r.code != ftp.CodeAuthOK:
		c.close()
		return nil, fmt.Errorf("AUTH TLS got %s", clean(r.last()))
	}
	tc := tls.Client(c.conn, conf)
	if err := p.handshake(tc); err != nil {
		c.close()
		msg := "TLS handshake failed: " + p.describeTLS(err)
		var re tls.RecordHeaderError
		if isTimeout(err) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &re) || p.ctx.Err() != nil {
			return nil, errors.New(msg)
		}
		return nil, handshakeError{msg}
	}
	c.conn, c.r = tc, ftp.NewReader(tc, 0)
	return c, nil
}

// handshakeError is a TLS handshake that the server answered and that
// failed: what another TLS version may change.
type handshakeError struct{ msg string }

func (e handshakeError) Error() string { return e.msg }

// handshake runs a client handshake, bounded like every step.
func (p *prober) handshake(tc *tls.Conn) error {
	ctx, cancel := context.WithDeadline(p.ctx, p.deadline())
	defer cancel()
	return tc.HandshakeContext(ctx)
}

// describeTLS is describe for handshake errors. Go reports an alert as a
// net.OpError, "remote error" for one the server sent and "local error"
// for one the probe sent; the alert's own words ("tls: protocol version
// not supported") are as stable as anything, and are kept.
func (p *prober) describeTLS(err error) string {
	var oe *net.OpError
	var re tls.RecordHeaderError
	switch {
	case errors.As(err, &oe) && oe.Op == "remote error":
		return "the server refused: " + clean(oe.Err.Error())
	case errors.As(err, &oe) && oe.Op == "local error":
		return "the probe refused: " + clean(oe.Err.Error())
	case errors.As(err, &re):
		return "the server did not answer with TLS"
	}
	return p.describe(err)
}

// protP logs in on the TLS session p.c, asks for PROT P and lists over a
// data connection that resumes the control connection's session, then,
// if that one did resume, over one that does not. It leaves p.c nil if
// the session was lost.
func (p *prober) protP(t *TLSReport, conf *tls.Config, cache *ticketCache) {
	if err := p.login(p.c); err != nil {
		t.LoginError = err.Error()
		return
	}
	r, err := p.c.command(p, "PBSZ 0")
	if err != nil {
		t.LoginError = "PBSZ 0: " + p.describe(err)
		p.drop()
		return
	}
	t.PBSZReply = clean(r.last())
	if r.code != ftp.CodeOK {
		return
	}
	r, err = p.c.command(p, "PROT P")
	if err != nil {
		t.LoginError = "PROT P: " + p.describe(err)
		p.drop()
		return
	}
	t.PROTCode, t.PROTReply = r.code, clean(r.last())
	if r.code != ftp.CodeOK {
		return
	}
	t.SessionTickets = cache.tickets()
	mode := p.tlsMode()
	first := p.tlsData(mode, conf)
	first.OfferedResume = true
	t.Data = append(t.Data, first)
	if !first.Resumed || p.c == nil {
		return
	}
	// The same, with a configuration that has no session to offer: what
	// a client sees that does not resume.
	fresh := p.tlsConfig(nil, tls.VersionTLS10, tls.VersionTLS13)
	t.Data = append(t.Data, p.tlsData(mode, fresh))
}

// tlsMode picks the passive command for the PROT P data connections: one
// whose plain listing worked at the address its reply names, PASV before
// EPSV, as the verdict does; EPSV on IPv6, where PASV carries no address.
func (p *prober) tlsMode() string {
	if addrPortOf(p.c.conn.RemoteAddr()).Addr().Is6() {
		return "EPSV"
	}
	for _, m := range p.rep.Modes {
		if at := attemptVia(m, "advertised"); at != nil && at.Listed && (m.Mode == "PASV" || m.Mode == "EPSV") {
			return m.Mode
		}
	}
	return "PASV"
}

// tlsData runs one PROT P listing on p.c: the passive command, the data
// connection, LIST, the handshake, the listing. The handshake waits until
// LIST has been sent, because servers start it only then, some of them
// after their 150.
func (p *prober) tlsData(mode string, conf *tls.Config) TLSData {
	d := TLSData{Mode: mode, Attempt: Attempt{Via: "advertised"}}
	if p.c == nil {
		d.Error = "the TLS session was lost"
		return d
	}
	c := p.c
	m := ModeResult{Mode: mode}
	adv, ok := p.askPassive(c, &m)
	if !ok {
		d.Error = strings.TrimSpace(fmt.Sprintf("%s got %s %s", mode, m.Reply, m.Error))
		return d
	}
	d.Advertised, d.Address = adv.String(), adv.String()
	if adv.Addr().IsUnspecified() {
		d.Error = "not an address to connect to"
		return d
	}
	ctx, cancel := context.WithDeadline(p.ctx, p.deadline())
	defer cancel()
	raw, err := p.dialer.DialContext(ctx, "tcp", adv.String())
	if err != nil {
		d.Error = p.describe(err)
		return d
	}
	d.Connected = true
	defer raw.Close()
	defer p.interruptible(raw)()
	if err := c.send(p, "LIST"); err != nil {
		d.Error = "sending LIST: " + p.describe(err)
		p.drop()
		return d
	}
	data := tls.Client(raw, conf)
	_ = raw.SetDeadline(p.deadline())
	if err := p.handshake(data); err != nil {
		d.Error = "TLS handshake on the data connection failed: " + p.describeTLS(err)
		raw.Close()
		// The server's reply to LIST says why, if it gives one.
		if r, err := c.final(p); err == nil {
			d.ListCode, d.ListReply = r.code, clean(r.last())
		} else {
			p.drop()
		}
		return d
	}
	d.Handshake = true
	d.Resumed = data.ConnectionState().DidResume
	p.transfer(c, data, false, &d.Attempt)
	return d
}

// checkCert judges the server's chain (the leaf first, as the server sent
// it) for name at now: each problem a verifying client would meet, not
// only the first, so that a renewal is not followed by the next surprise.
// It is a pure function of its arguments.
func checkCert(chain []*x509.Certificate, name string, roots *x509.CertPool, rootsName string, now time.Time) *CertInfo {
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	ci := &CertInfo{
		Subject:   clean(leaf.Subject.String()),
		Issuer:    clean(leaf.Issuer.String()),
		Names:     []string{},
		NotBefore: leaf.NotBefore.UTC(),
		NotAfter:  leaf.NotAfter.UTC(),
		DaysLeft:  int(math.Floor(leaf.NotAfter.Sub(now).Hours() / 24)),
		Problems:  []CertProblem{},
	}
	for _, n := range leaf.DNSNames {
		ci.Names = append(ci.Names, clean(n))
	}
	for _, ip := range leaf.IPAddresses {
		ci.Names = append(ci.Names, ip.String())
	}
	add := func(kind, detail string) { ci.Problems = append(ci.Problems, CertProblem{kind, detail}) }
	// The chain is judged at a moment the leaf is valid, so that an
	// expired leaf does not hide an unknown issuer. Another certificate
	// of the chain found expired at that moment, which is not now, is
	// then no finding.
	at, leafValid := now, true
	switch {
	case now.Before(leaf.NotBefore):
		add(CertNotYetValid, fmt.Sprintf("not valid before %s, %s from now (check the server's clock, and this host's)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotBefore.Sub(now).Round(time.Minute)))
		at, leafValid = leaf.NotBefore, false
	case now.After(leaf.NotAfter):
		add(CertExpired, fmt.Sprintf("expired on %s, %s ago", leaf.NotAfter.UTC().Format(time.RFC3339), days(int(now.Sub(leaf.NotAfter).Hours()/24))))
		at, leafValid = leaf.NotAfter, false
	}
	if err := leaf.VerifyHostname(name); err != nil {
		names := strings.Join(ci.Names, ", ")
		if names == "" {
			names = fmt.Sprintf("no subject alternative name (clients ignore the common name %q)", clean(leaf.Subject.CommonName))
		}
		add(CertNameMismatch, fmt.Sprintf("not valid for %s: it names %s", name, names))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	switch {
	case err == nil:
	case !leafValid && errors.As(err, &cie) && cie.Reason == x509.Expired:
	case errors.As(err, &uae):
		detail := fmt.Sprintf("issued by %q, which is not in the %s", clean(leaf.Issuer.String()), rootsName)
		if uae.Cert != nil && uae.Cert != leaf {
			detail = fmt.Sprintf("its chain ends at %q, whose issuer %q is not in the %s", clean(uae.Cert.Subject.String()), clean(uae.Cert.Issuer.String()), rootsName)
		}
		if len(chain) == 1 && bytes.Equal(leaf.RawIssuer, leaf.RawSubject) {
			detail = fmt.Sprintf("self-signed, and not in the %s", rootsName)
		}
		add(CertUnknownAuthority, detail)
	default:
		add(CertInvalid, strings.TrimPrefix(clean(err.Error()), "x509: "))
	}
	return ci
}

// days is n days in words.
func days(n int) string {
	if n == 1 {
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
}
