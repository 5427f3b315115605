// Package demoftpd is the small FTP server that `pasvgate demo` starts so
// the proxy has something to talk to: built on
// github.com/fclairamb/ftpserverlib, it advertises a chosen address in its
// 227 replies and hands out passive ports from a chosen range.
//
// It lives beside the binary, not under test/, because the production
// binary must import no test code (TestNoTestDeps). The tests use the same
// server through test/ftpd, which re-exports it: the in-process tests as
// the upstream behind the proxy, the netns lab (through cmd/testftpd)
// inside its server namespace. It is not meant to serve real users: TLS is
// off, anonymous users may write, and the data connections are not checked
// against the control connection's address unless Config.PasvSameIP asks.
package demoftpd

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	ftpserver "github.com/fclairamb/ftpserverlib"
	"github.com/spf13/afero"
)

// Defaults applied to a zero Config.
const (
	DefaultListen          = "127.0.0.1:0"
	DefaultPassivePortLow  = 30000
	DefaultPassivePortHigh = 30099
)

// Config describes a server. The zero value is usable: it listens on a random
// loopback port, serves an empty in-memory filesystem and admits only
// anonymous users.
type Config struct {
	// Listen is the control listener's "host:port". Default "127.0.0.1:0".
	Listen string

	// PublicHost is the IPv4 address advertised in 227 replies, for example
	// a "private" 192.0.2.10 the client cannot reach, so that only a proxy
	// that rewrites the reply makes PASV work. Default "": the address the
	// client reached the control listener on (the listener's own address
	// unless it listens on a wildcard).
	PublicHost string

	// PassivePorts is the inclusive range passive listeners are taken from.
	// Default (both zero): 30000-30099.
	PassivePorts [2]int

	// Root is the directory served read/write. Default "": a fresh in-memory
	// filesystem (afero.NewMemMapFs).
	Root string

	// User and Password name one account. Default "": no account besides
	// anonymous ("anonymous" or "ftp", any password), which is always
	// allowed and has the same read/write access.
	User, Password string

	// DisableActive makes the server refuse PORT and EPRT. Default false:
	// active mode works, dialling from any local port to any address.
	DisableActive bool

	// TLS, if set, makes the server offer explicit FTPS (AUTH TLS) with
	// this configuration; clear clients are still served. Default nil:
	// AUTH TLS is refused, so that tests see the control channel in
	// clear.
	TLS *tls.Config

	// RequireTLS, with TLS, refuses (530) a USER sent before AUTH TLS:
	// TLS is required on the control channel, while data connections
	// may stay clear (PROT C). Default false.
	RequireTLS bool

	// ProxyProtocol makes the control listener require a PROXY protocol
	// header (v1 or v2) at the start of every connection, as a server
	// behind a load balancer or pasvgate --proxy-protocol does, and take
	// the header's source as the client's address everywhere the server
	// uses one: its log line per session ("client connected") and the
	// same-address check of PasvSameIP. A connection without a valid
	// header within 5 s is closed without a greeting. A LOCAL (v2) or
	// UNKNOWN (v1) header, what health checks send, is accepted, and the
	// connection's own address is used. Default false: no header expected.
	ProxyProtocol bool

	// PasvSameIP refuses a passive data connection that does not come
	// from the control connection's client address (with ProxyProtocol:
	// the header's source), as vsftpd (pasv_promiscuous=NO) and ProFTPD
	// (AllowForeignAddress off) do by default. Default false: any
	// source, so that a gateway that does not SNAT works too.
	PasvSameIP bool

	// Logger receives the library's and the server's logs. Default nil:
	// discard.
	Logger *slog.Logger
}

// Server is a running FTP server made by Start.
type Server struct {
	fs     afero.Fs
	ftp    *ftpserver.FtpServer
	ln     *trackingListener
	addr   netip.AddrPort
	logger *slog.Logger
	cancel context.CancelFunc

	// clients counts control connections whose handler has not yet reported
	// ClientDisconnected; Add happens in Accept, on the serve goroutine.
	clients sync.WaitGroup
	// serving is the serve goroutine and the goroutine that stops the
	// server when the context ends.
	serving sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start listens and serves until ctx is cancelled or Close is called. It
// returns once the control listener is bound, so Addr is valid at once.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	settings, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	fs, err := cfg.filesystem()
	if err != nil {
		return nil, err
	}

	listen := cfg.Listen
	if listen == "" {
		listen = DefaultListen
	}
	var lc net.ListenConfig
	inner, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", listen, err)
	}
	tcpAddr, ok := inner.Addr().(*net.TCPAddr)
	if !ok {
		_ = inner.Close()
		return nil, fmt.Errorf("listening on %s: unexpected address type %T", listen, inner.Addr())
	}
	ap := tcpAddr.AddrPort()

	if cfg.ProxyProtocol {
		inner = newProxyListener(inner, logger)
	}

	ctx, cancel := context.WithCancel(ctx)
	s := &Server{
		fs:     fs,
		addr:   netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		logger: logger,
		cancel: cancel,
	}
	s.ln = &trackingListener{Listener: inner, clients: &s.clients, conns: map[*trackedConn]struct{}{}}
	settings.Listener = s.ln
	if settings.PublicHost == "" {
		settings.PublicIPResolver = controlLocalIPv4
	}

	s.ftp = ftpserver.NewFtpServer(&driver{settings: settings, fs: fs, user: cfg.User, password: cfg.Password,
		clients: &s.clients, tls: cfg.TLS, requireTLS: cfg.RequireTLS, logger: logger})
	s.ftp.Logger = logger
	if err := s.ftp.Listen(); err != nil {
		cancel()
		_ = inner.Close()
		return nil, fmt.Errorf("starting ftp server: %w", err)
	}

	s.serving.Add(2)
	go func() {
		defer s.serving.Done()
		if err := s.ftp.Serve(); err != nil {
			logger.Error("ftp server stopped", "err", err)
		}
	}()
	go func() {
		defer s.serving.Done()
		<-ctx.Done()
		s.stop()
	}()
	logger.Info("ftpd listening", "addr", s.addr, "publicHost", settings.PublicHost,
		"passivePorts", settings.PassiveTransferPortRange, "proxyProtocol", cfg.ProxyProtocol,
		"pasvSameIP", cfg.PasvSameIP)
	return s, nil
}

// Addr is the control listener's address, with the real port when Listen
// asked for port 0. An IPv4 address is returned in its 4-byte form.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// FS is the filesystem the server serves, rooted at "/" as FTP clients see
// it. Tests use it to plant a file before a download and to read an upload
// back once the client has seen 226.
func (s *Server) FS() afero.Fs { return s.fs }

// Close stops accepting, drops every client and waits for the serve
// goroutine and every client handler. It is safe to call more than once and
// after the context has ended.
func (s *Server) Close() error {
	s.cancel()
	s.serving.Wait()
	// The serve goroutine has returned, so no Accept can Add to clients now.
	s.clients.Wait()
	return s.closeErr
}

// stop runs once, on the goroutine that watches the context.
func (s *Server) stop() {
	s.closeOnce.Do(func() {
		if err := s.ftp.Stop(); err != nil && !errors.Is(err, ftpserver.ErrNotListening) {
			s.closeErr = fmt.Errorf("stopping ftp server: %w", err)
		}
		s.ln.closeConns()
	})
}

func (cfg Config) settings() (*ftpserver.Settings, error) {
	low, high := cfg.PassivePorts[0], cfg.PassivePorts[1]
	if low == 0 && high == 0 {
		low, high = DefaultPassivePortLow, DefaultPassivePortHigh
	}
	if low < 1 || high > 65535 || low > high {
		return nil, fmt.Errorf("checking passive ports: %d-%d is not a range within 1-65535", low, high)
	}
	var public string
	if cfg.PublicHost != "" {
		addr, err := netip.ParseAddr(cfg.PublicHost)
		if err != nil || !addr.Unmap().Is4() {
			return nil, fmt.Errorf("checking public host: %q is not an IPv4 address", cfg.PublicHost)
		}
		public = addr.Unmap().String()
	}
	pasvCheck := ftpserver.IPMatchDisabled
	if cfg.PasvSameIP {
		pasvCheck = ftpserver.IPMatchRequired
	}
	return &ftpserver.Settings{
		PublicHost:               public,
		Banner:                   "pasvgate test ftpd",
		PassiveTransferPortRange: ftpserver.PortRange{Start: low, End: high},
		// The gateway's data connections may come from a different address
		// than its control connection (unless PasvSameIP), and active mode
		// must be able to dial the client from any local port without
		// CAP_NET_BIND_SERVICE.
		ActiveTransferPortNon20: true,
		ActiveConnectionsCheck:  ftpserver.IPMatchDisabled,
		PasvConnectionsCheck:    pasvCheck,
		DisableActiveMode:       cfg.DisableActive,
		DefaultTransferType:     ftpserver.TransferTypeBinary,
		TLSRequired:             ftpserver.ClearOrEncrypted,
	}, nil
}

func (cfg Config) filesystem() (afero.Fs, error) {
	if cfg.Root == "" {
		return afero.NewMemMapFs(), nil
	}
	fi, err := afero.NewOsFs().Stat(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("checking root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("checking root: %s is not a directory", cfg.Root)
	}
	return afero.NewBasePathFs(afero.NewOsFs(), cfg.Root), nil
}

// controlLocalIPv4 advertises the address the client reached us on. The
// library's own fallback splits host:port on ':' and so breaks on IPv6 and
// IPv4-mapped addresses.
func controlLocalIPv4(cc ftpserver.ClientContext) (string, error) {
	tcpAddr, ok := cc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("unexpected local address type %T", cc.LocalAddr())
	}
	addr := tcpAddr.AddrPort().Addr().Unmap()
	if !addr.Is4() {
		return "", fmt.Errorf("control connection is on %s: PASV needs IPv4, use EPSV", addr)
	}
	return addr.String(), nil
}

// errTLSDisabled answers AUTH TLS: the lab and the tests want the control
// channel in clear so the proxy can rewrite it.
var errTLSDisabled = errors.New("TLS is disabled on this test server")

// driver is the ftpserverlib MainDriver: one filesystem for every user.
type driver struct {
	settings       *ftpserver.Settings
	fs             afero.Fs
	user, password string
	clients        *sync.WaitGroup
	tls            *tls.Config // Config.TLS
	requireTLS     bool        // Config.RequireTLS
	logger         *slog.Logger
}

func (d *driver) GetSettings() (*ftpserver.Settings, error) { return d.settings, nil }

// ClientConnected logs the session's client as the server sees it (with
// Config.ProxyProtocol, the PROXY header's source), so that a test can
// tell whose address reached the server.
func (d *driver) ClientConnected(cc ftpserver.ClientContext) (string, error) {
	d.logger.Info("client connected", "client", cc.RemoteAddr(), "id", cc.ID())
	return d.settings.Banner, nil
}

// ClientDisconnected is the first thing the library's client handler does
// on its way out, and it is called exactly once for every accepted
// connection, so it balances the Add in trackingListener.Accept.
func (d *driver) ClientDisconnected(ftpserver.ClientContext) { d.clients.Done() }

func (d *driver) AuthUser(_ ftpserver.ClientContext, user, pass string) (ftpserver.ClientDriver, error) {
	switch {
	case strings.EqualFold(user, "anonymous"), strings.EqualFold(user, "ftp"):
		return d.fs, nil
	case d.user != "" && user == d.user &&
		subtle.ConstantTimeCompare([]byte(pass), []byte(d.password)) == 1:
		return d.fs, nil
	}
	return nil, errors.New("bad user or password")
}

func (d *driver) GetTLSConfig() (*tls.Config, error) {
	if d.tls == nil {
		return nil, errTLSDisabled
	}
	return d.tls, nil
}

// errTLSRequired refuses a USER sent in clear under Config.RequireTLS.
var errTLSRequired = errors.New("TLS is required on the control channel: send AUTH TLS first")

// PreAuthUser implements ftpserverlib's MainDriverExtensionUserVerifier:
// under Config.RequireTLS a login in clear is refused (530). The
// library's own TLSRequired setting would refuse clear data connections
// too.
func (d *driver) PreAuthUser(cc ftpserver.ClientContext, _ string) error {
	if d.requireTLS && !cc.HasTLSForControl() {
		return errTLSRequired
	}
	return nil
}

// trackingListener remembers the control connections it hands out, so that
// Close can drop clients the library would otherwise leave running.
type trackingListener struct {
	net.Listener
	clients *sync.WaitGroup

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// Accept returns the inner listener's errors unchanged: the library
// recognises "use of closed network connection" as a clean stop.
func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, owner: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	l.clients.Add(1)
	return tc, nil
}

func (l *trackingListener) closeConns() {
	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

type trackedConn struct {
	net.Conn
	owner *trackingListener
}

func (c *trackedConn) Close() error {
	c.owner.mu.Lock()
	delete(c.owner.conns, c)
	c.owner.mu.Unlock()
	return c.Conn.Close()
}
