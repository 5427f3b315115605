package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

// modProxyGW is column M: ProFTPD with mod_proxy as a reverse proxy in the
// gw, in front of the same server: the userspace peer. It terminates both
// the control and the data connections and copies every data byte through
// userspace; its own data ports are dataPorts on the gw's address (INPUT,
// not FORWARD: the DROP policy does not concern them). Its data connections
// to the server come from the gw's private address, like its control
// connection, so vsftpd's same-IP check passes. ProFTPD forks a process per
// session, as it does in production.
//
// proftpd-core and proftpd-mod-proxy are unpacked under the test cache by
// test/install-deps.sh (they conflict with vsftpd); without them the column
// is left out.
type modProxyGW struct {
	l   *lab
	dir string // its configuration, tables and logs
	p   *proc
	// tls, when set, makes it FTPS on both legs (tls.go, column MT), and
	// tls13 allows TLS 1.3 on its leg to the server.
	tls   *benchPKI
	tls13 bool
}

// modProxyPaths are proftpd and the directory holding mod_proxy.so.
// The cache is test/install-deps.sh's (and test/lab's).
func modProxyPaths() (bin, modDir string) {
	cache := os.Getenv("PASVGATE_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/pasvgate-test"
	}
	return filepath.Join(cache, "proftpd-core/usr/sbin/proftpd"),
		filepath.Join(cache, "proftpd-mod-proxy/usr/lib/proftpd")
}

// modProxyAvailable says whether both unpacked packages are there.
func modProxyAvailable() bool {
	bin, modDir := modProxyPaths()
	_, err1 := os.Stat(bin)
	_, err2 := os.Stat(filepath.Join(modDir, "mod_proxy.so"))
	return err1 == nil && err2 == nil
}

func (g *modProxyGW) key() string {
	if g.tls != nil {
		return "MT"
	}
	return "M"
}

func (g *modProxyGW) title() string {
	if g.tls != nil {
		leg := "TLS 1.2 (see tls.go)"
		if g.tls13 {
			leg = "TLS 1.2 or 1.3"
		}
		return "ProFTPD mod_proxy, reverse proxy, FTPS on both legs (mod_tls towards the client; ProxyTLSEngine on towards the server, " + leg + "), PROT P"
	}
	return "ProFTPD mod_proxy, reverse proxy (data relayed in userspace)"
}
func (g *modProxyGW) target() netip.AddrPort { return netip.MustParseAddrPort(gwPublic + ":21") }

func (g *modProxyGW) up(ctx context.Context, _ bool) error {
	bin, modDir := modProxyPaths()
	tables := filepath.Join(g.dir, "proxy-tables")
	if err := os.MkdirAll(tables, 0o777); err != nil {
		return err
	}
	// Sessions run as nobody and may write there.
	if err := os.Chmod(tables, 0o777); err != nil {
		return err
	}
	lo, hi, _ := strings.Cut(dataPorts, "-")
	// FTPS (column MT): mod_tls is loaded before mod_proxy, which then
	// takes every command first and leaves the client leg's AUTH, PBSZ
	// and PROT to it.
	modules, tlsModule, proxyTLS := modDir, []string(nil), []string(nil)
	if g.tls != nil {
		var err error
		if modules, tlsModule, proxyTLS, err = g.tlsConfig(); err != nil {
			return err
		}
	}
	conf := strings.Join(slices.Concat([]string{
		`ServerType standalone`,
		`ServerName "pgbench mod_proxy"`,
		`DefaultServer on`,
		`DefaultAddress ` + gwPublic,
		`SocketBindTight on`,
		`Port 21`,
		`UseIPv6 off`,
		`User nobody`,
		`Group nogroup`,
		`MaxInstances 500`,
		`PidFile ` + filepath.Join(g.dir, "proftpd.pid"),
		`ScoreboardFile ` + filepath.Join(g.dir, "proftpd.scoreboard"),
		`DelayTable none`,
		`DelayEngine off`,
		`WtmpLog off`,
		`UseReverseDNS off`,
		`ControlsEngine off`,
		`SystemLog ` + filepath.Join(g.dir, "proftpd.log"),
		`TransferLog none`,
		`PassivePorts ` + lo + ` ` + hi,
		`ModulePath ` + modules,
	}, tlsModule, []string{
		`LoadModule mod_proxy.c`,
		`<IfModule mod_proxy.c>`,
		`  ProxyEngine on`,
		`  ProxyRole reverse`,
		`  ProxyTables ` + tables,
		`  ProxyReverseServers ftp://` + serverAddr + `:21`,
		`  ProxyTimeoutConnect 5sec`,
	}, proxyTLS, []string{
		`</IfModule>`,
	}), "\n") + "\n"
	path := filepath.Join(g.dir, "proftpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	// -n: foreground; -q: no start-up banner on stderr. mod_proxy.so calls
	// OpenSSL without linking it: in Debian the binary that brings it is
	// mod_tls, in proftpd-mod-crypto; preloading libssl is all column M
	// needs, as it uses no TLS (column MT loads mod_tls). env execs
	// proftpd in place.
	p, err := startProc(g.l.gw, "env", "LD_PRELOAD=libssl.so.3", bin, "-n", "-q", "-c", path)
	if err != nil {
		return err
	}
	g.p = p
	return waitBanner(ctx, g.l.client, g.target().String(), p)
}

func (g *modProxyGW) check(_ context.Context, res load.Result) error {
	if err := wantData(res.PASVAddr, gwPublic, dataPorts); err != nil {
		return fmt.Errorf("mod_proxy PASV: %w", err)
	}
	if res.EPSVAddr != "" {
		if err := wantData(res.EPSVAddr, gwPublic, dataPorts); err != nil {
			return fmt.Errorf("mod_proxy EPSV: %w", err)
		}
	}
	return nil
}

func (g *modProxyGW) down(context.Context) error {
	if g.p == nil {
		return nil
	}
	err := g.p.stop(10 * time.Second)
	g.p = nil
	// proftpd ends on SIGTERM with that signal's status.
	if err != nil && !isSignalled(err) {
		return fmt.Errorf("proftpd did not stop cleanly: %w", err)
	}
	return nil
}

// logTail is proftpd's own log, for a failure's message.
func (g *modProxyGW) logTail() string {
	var s string
	for _, f := range []string{"proftpd.log", "proxy.log", "tls.log"} {
		if b, err := os.ReadFile(filepath.Join(g.dir, f)); err == nil {
			s += "== " + f + "\n" + tail(string(b), 1500) + "\n"
		}
	}
	return s
}
