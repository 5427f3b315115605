package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/probe/probetest"
)

// writeCert writes a certificate named cn, valid until notAfter, and its
// key as PEM files, and returns their paths.
func writeCert(t *testing.T, cn string, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	ca, err := probetest.NewCA("pasvgate test CA")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue(cn, []string{"203.0.113.1"}, notAfter.Add(-48*time.Hour), notAfter)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := probetest.WriteKeyPair(c, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTLSConfig(t *testing.T) {
	cert, key := writeCert(t, "gw", time.Now().Add(24*time.Hour))
	old, oldKey := writeCert(t, "old", time.Now().Add(-time.Hour))
	up := []string{"--upstream", "192.0.2.10:21"}
	withCert := append([]string{"--tls-cert", cert, "--tls-key", key}, up...)

	c, err := loadConfig(up)
	if err != nil || c.tls.mode != proxy.TLSOff || c.tls.upstream != proxy.UpstreamTLSAuto {
		t.Fatalf("no TLS flags: mode %v upstream %v (%v), want off and auto", c.tls.mode, c.tls.upstream, err)
	}
	c, err = loadConfig(withCert)
	if err != nil || c.tls.mode != proxy.TLSAllow || c.tls.cert == nil {
		t.Fatalf("with a certificate: mode %v (%v), want allow with the certificate loaded", c.tls.mode, err)
	}
	c, err = loadConfig(append([]string{"--tls", "require", "--listen-tls", "203.0.113.1:990", "--upstream-ca", cert, "--tls-require-reuse"}, withCert...))
	if err != nil || c.tls.mode != proxy.TLSRequire || c.tls.roots == nil {
		t.Fatalf("require with implicit TLS and a CA: %+v (%v)", c.tls, err)
	}
	var st proxy.Settings
	c.tls.settings(&st)
	if st.Certificate != c.tls.cert || st.TLS != proxy.TLSRequire || st.UpstreamRoots != c.tls.roots || !st.RequireReuse {
		t.Fatalf("settings do not carry the TLS material: %+v", st)
	}

	for _, tc := range []struct {
		args []string
		flag string
	}{
		{append([]string{"--tls", "allow"}, up...), "--tls"},
		{append([]string{"--tls", "maybe"}, withCert...), "--tls"},
		{append([]string{"--tls", "off"}, withCert...), "--tls"},
		{append([]string{"--tls-cert", cert}, up...), "--tls-cert"},
		{append([]string{"--listen-tls", "203.0.113.1:990"}, up...), "--listen-tls"},
		{append([]string{"--listen-tls", "203.0.113.1:21", "--listen", "203.0.113.1:21"}, withCert...), "--listen"},
		{append([]string{"--upstream-tls", "sometimes"}, up...), "--upstream-tls"},
		{append([]string{"--tls-require-reuse"}, up...), "--tls-require-reuse"},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--intercept", "eth1"}, "--tls"},
		{append([]string{"--upstream-insecure", "--upstream-ca", cert}, up...), "--upstream-insecure"},
		{append([]string{"--upstream-ca", key}, up...), "--upstream-ca"},
		{append([]string{"--tls-cert", old, "--tls-key", oldKey}, up...), "expired"},
		{append([]string{"--tls-cert", cert, "--tls-key", oldKey}, up...), "--tls-cert"},
	} {
		_, err := loadConfig(tc.args)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("loadConfig(%v) = %v, want a usage error naming %s", tc.args, err, tc.flag)
		}
	}
}
