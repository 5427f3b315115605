package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
)

// tlsSpec is the TLS keys, parsed; loadTLS reads the files they name
// into its material.
type tlsSpec struct {
	mode       proxy.TLSMode
	upstream   proxy.UpstreamTLS
	serverName string
	insecure   bool
	reuse      bool
	certFile   string
	keyFile    string
	caFile     string
	cert       *tls.Certificate // nil when --tls is off; loadTLS
	roots      *x509.CertPool   // nil: the system's; loadTLS
}

// tlsMode is --tls, with its default: allow when a certificate is given,
// off otherwise.
func (c Config) tlsMode() (proxy.TLSMode, error) {
	if c.TLS == "" {
		if c.TLSCert != "" {
			return proxy.TLSAllow, nil
		}
		return proxy.TLSOff, nil
	}
	return proxy.ParseTLSMode(c.TLS)
}

// parseTLS checks the TLS keys against each other and the mode. The files
// are read by loadTLS.
func (c Config) parseTLS(rc *runConfig) (tlsSpec, error) {
	mode, err := c.tlsMode()
	if err != nil {
		return tlsSpec{}, badFlag("tls", "%v", err)
	}
	up, err := proxy.ParseUpstreamTLS(c.UpstreamTLS)
	if err != nil {
		return tlsSpec{}, badFlag("upstream-tls", "%v", err)
	}
	implicit := len(c.ListenTLS) > 0
	for _, r := range c.Routes {
		implicit = implicit || len(r.ListenTLS) > 0
	}
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return tlsSpec{}, badFlag("tls-cert", "--tls-cert and --tls-key go together")
	case mode != proxy.TLSOff && c.TLSCert == "":
		return tlsSpec{}, badFlag("tls", "%s needs --tls-cert and --tls-key", mode)
	case mode == proxy.TLSOff && c.TLSCert != "":
		return tlsSpec{}, badFlag("tls", "off, but --tls-cert is given: say --tls allow or require, or drop the certificate")
	case implicit && mode == proxy.TLSOff:
		return tlsSpec{}, badFlag("listen-tls", "needs --tls-cert and --tls-key")
	case mode != proxy.TLSOff && !rc.reverse:
		// Clients would be shown the gateway's certificate for servers
		// they name themselves, and their protected data connections
		// would go past pasvgate to a server that expects pasvgate's
		// TLS session.
		return tlsSpec{}, badFlag("tls", "reverse mode only (--upstream)")
	case c.TLSRequireReuse && mode == proxy.TLSOff:
		return tlsSpec{}, badFlag("tls-require-reuse", "needs --tls allow or require")
	case c.UpstreamInsecure && c.UpstreamCA != "":
		return tlsSpec{}, badFlag("upstream-insecure", "and --upstream-ca contradict each other")
	}
	return tlsSpec{
		mode: mode, upstream: up, serverName: c.UpstreamServerName, insecure: c.UpstreamInsecure,
		reuse: c.TLSRequireReuse, certFile: c.TLSCert, keyFile: c.TLSKey, caFile: c.UpstreamCA,
	}, nil
}

// loadTLS reads the certificate, its key and the upstream CAs that the
// parsed keys name. A SIGHUP reload runs it again, so that a renewed
// certificate is taken without a restart.
func (rc *runConfig) loadTLS() error {
	t := &rc.tls
	if t.certFile != "" {
		cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
		if err != nil {
			return usageError{fmt.Errorf("--tls-cert: %w", err)}
		}
		if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
			return usageError{fmt.Errorf("--tls-cert %s: expired on %s", t.certFile, cert.Leaf.NotAfter.Format(time.DateOnly))}
		}
		t.cert = &cert
	}
	if t.caFile != "" {
		pem, err := os.ReadFile(t.caFile)
		if err != nil {
			return usageError{fmt.Errorf("--upstream-ca: %w", err)}
		}
		t.roots = x509.NewCertPool()
		if !t.roots.AppendCertsFromPEM(pem) {
			return usageError{fmt.Errorf("--upstream-ca %s: no PEM certificate in it", t.caFile)}
		}
	}
	return nil
}

// tlsSettings copies the TLS settings into the proxy's.
func (t tlsSpec) settings(st *proxy.Settings) {
	st.TLS = t.mode
	st.Certificate = t.cert
	st.UpstreamTLS = t.upstream
	st.UpstreamRoots = t.roots
	st.UpstreamServerName = t.serverName
	st.UpstreamInsecure = t.insecure
	st.RequireReuse = t.reuse
}

// warnInsecure says, at start, where logins cross a link unprotected:
// the server's certificate is not checked, so anyone on the path to the
// server can read them; or the server's leg is clear by choice while
// clients are made to use TLS.
func warnInsecure(t tlsSpec, log *slog.Logger) {
	if t.insecure {
		log.Warn("--upstream-insecure: the server's certificate is not verified; whoever can reach the path to the server can read its logins and files")
	}
	if t.mode == proxy.TLSRequire && t.upstream == proxy.UpstreamTLSNever {
		log.Warn("--tls require with --upstream-tls never: clients must use TLS, but their logins and files cross the link to the server in clear")
	}
}
