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

// tlsMaterial is what the TLS keys of a Config name, read and parsed once
// by loadTLS: what the proxy is given (Config.settings).
type tlsMaterial struct {
	mode     proxy.TLSMode
	upstream proxy.UpstreamTLS
	cert     *tls.Certificate // nil when --tls is off
	roots    *x509.CertPool   // nil: the system's
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

// validateTLS checks the TLS keys against each other. The files are read
// by loadTLS.
func (c Config) validateTLS() error {
	bad := func(flag string, format string, a ...any) error {
		return usageError{fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...))}
	}
	mode, err := c.tlsMode()
	if err != nil {
		return bad("tls", "%v", err)
	}
	if _, err := proxy.ParseUpstreamTLS(c.UpstreamTLS); err != nil {
		return bad("upstream-tls", "%v", err)
	}
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return bad("tls-cert", "--tls-cert and --tls-key go together")
	case mode != proxy.TLSOff && c.TLSCert == "":
		return bad("tls", "%s needs --tls-cert and --tls-key", mode)
	case mode == proxy.TLSOff && c.TLSCert != "":
		return bad("tls", "off, but --tls-cert is given: say --tls allow or require, or drop the certificate")
	case len(c.ListenTLS) > 0 && mode == proxy.TLSOff:
		return bad("listen-tls", "needs --tls-cert and --tls-key")
	case mode != proxy.TLSOff && len(c.Upstream) == 0:
		// Clients would be shown the gateway's certificate for servers
		// they name themselves, and their protected data connections
		// would go past pasvgate to a server that expects pasvgate's
		// TLS session.
		return bad("tls", "reverse mode only (--upstream)")
	case c.TLSRequireReuse && mode == proxy.TLSOff:
		return bad("tls-require-reuse", "needs --tls allow or require")
	case c.UpstreamInsecure && c.UpstreamCA != "":
		return bad("upstream-insecure", "and --upstream-ca contradict each other")
	}
	return nil
}

// loadTLS reads the certificate, its key and the upstream CAs into c.tls.
// A SIGHUP reload runs it again, so that a renewed certificate is taken
// without a restart.
func (c *Config) loadTLS() error {
	mode, _ := c.tlsMode()                         // validated
	up, _ := proxy.ParseUpstreamTLS(c.UpstreamTLS) // validated
	m := tlsMaterial{mode: mode, upstream: up}
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return usageError{fmt.Errorf("--tls-cert: %w", err)}
		}
		if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
			return usageError{fmt.Errorf("--tls-cert %s: expired on %s", c.TLSCert, cert.Leaf.NotAfter.Format(time.DateOnly))}
		}
		m.cert = &cert
	}
	if c.UpstreamCA != "" {
		pem, err := os.ReadFile(c.UpstreamCA)
		if err != nil {
			return usageError{fmt.Errorf("--upstream-ca: %w", err)}
		}
		m.roots = x509.NewCertPool()
		if !m.roots.AppendCertsFromPEM(pem) {
			return usageError{fmt.Errorf("--upstream-ca %s: no PEM certificate in it", c.UpstreamCA)}
		}
	}
	c.tls = m
	return nil
}

// tlsSettings copies c.tls into the proxy's settings.
func (c Config) tlsSettings(st *proxy.Settings) {
	st.TLS = c.tls.mode
	st.Certificate = c.tls.cert
	st.UpstreamTLS = c.tls.upstream
	st.UpstreamRoots = c.tls.roots
	st.UpstreamServerName = c.UpstreamServerName
	st.UpstreamInsecure = c.UpstreamInsecure
	st.RequireReuse = c.TLSRequireReuse
}

// warnInsecure says, at start, where logins cross a link unprotected:
// the server's certificate is not checked, so anyone on the path to the
// server can read them; or the server's leg is clear by choice while
// clients are made to use TLS.
func warnInsecure(c Config, log *slog.Logger) {
	if c.UpstreamInsecure {
		log.Warn("--upstream-insecure: the server's certificate is not verified; whoever can reach the path to the server can read its logins and files")
	}
	if c.tls.mode == proxy.TLSRequire && c.tls.upstream == proxy.UpstreamTLSNever {
		log.Warn("--tls require with --upstream-tls never: clients must use TLS, but their logins and files cross the link to the server in clear")
	}
}
