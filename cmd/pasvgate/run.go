package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/conntrack"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// shutdownTimeout bounds how long a stop waits for rule removals, after
// the drain.
const shutdownTimeout = 30 * time.Second

func cmdRun(args []string) error {
	cfg, err := loadConfig(args)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg, level)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, runEnv{args: args, level: level, hup: hup}, cfg, log)
}

// runEnv is what run needs besides the config: the arguments to re-read
// the config from on SIGHUP, the log level to change, and the SIGHUP
// channel (nil: no reloads).
type runEnv struct {
	args  []string
	level *slog.LevelVar
	hup   <-chan os.Signal
}

// settings turns the config into the proxy's reloadable settings. pub, if
// not nil, follows --public-iface.
func (c Config) settings(pub func() netip.Addr) proxy.Settings {
	up, up6 := c.upstreams()
	st := proxy.Settings{
		Upstream: up, Upstream6: up6, SNAT: c.SNAT, PublicAddrFunc: pub,
		DialTimeout: c.DialTimeout, IdleTimeout: c.IdleTimeout, LoginTimeout: c.LoginTimeout,
		Keepalive: c.Keepalive, MaxLine: c.MaxLine,
		MaxSessions: c.MaxSessions, MaxSessionsPerIP: c.MaxSessionsPerIP,
	}
	if c.PublicAddr != "" {
		st.PublicAddr = netip.MustParseAddr(c.PublicAddr) // validated
	}
	return st
}

// publicSource follows --public-iface while its context lives.
type publicSource struct {
	iface  string
	w      *nat.AddrWatcher
	cancel context.CancelFunc
}

func startPublicSource(ctx context.Context, iface string, log *slog.Logger) (*publicSource, error) {
	if iface == "" {
		return nil, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	w, err := nat.WatchInterface(wctx, iface, false, log)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("--public-iface %s: %w", iface, err)
	}
	return &publicSource{iface: iface, w: w, cancel: cancel}, nil
}

func (p *publicSource) current() func() netip.Addr {
	if p == nil {
		return nil
	}
	return p.w.Current
}

func (p *publicSource) stop() {
	if p != nil {
		p.cancel()
		p.w.Wait()
	}
}

// gateway is a running pasvgate: what run starts and must stop.
type gateway struct {
	cfg     Config
	log     *slog.Logger
	backend rules.Backend
	// backendName is the backend in use: --backend, or what auto chose.
	backendName string
	table       *nat.Table
	srv         *proxy.Server
	pub         *publicSource
	ic          *rules.Interception

	serveCtx context.Context // sessions end at once when it is cancelled
	wg       sync.WaitGroup
	errs     chan error
	lns      map[string]net.Listener // by --listen address
}

// run is pasvgate run after its configuration is valid: set up the kernel
// backend (sweeping an earlier process's leftovers), listen, tell systemd
// it is ready, then serve until ctx ends (drain) or a listener fails,
// reloading on SIGHUP, and remove every mapping on the way out.
func run(ctx context.Context, env runEnv, cfg Config, log *slog.Logger) (err error) {
	g := &gateway{cfg: cfg, log: log, errs: make(chan error, 16), lns: map[string]net.Listener{}}
	var ch choice
	if g.backend, ch, err = newBackend(cfg, log); err != nil {
		return err
	}
	g.backendName = ch.name
	setupCtx, cancel := context.WithTimeout(ctx, 4*cfg.RuleTimeout)
	err = g.backend.Setup(setupCtx)
	if err == nil {
		sweepOther(setupCtx, cfg, ch.name, log)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("setting up kernel rules: %w", err)
	}

	// Watchers and the metrics server live until the very end, after
	// the drain: runCtx, not ctx.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	var flows nat.FlowFlusher
	if f, ferr := conntrack.New(); ferr != nil {
		log.Warn("conntrack clean-up is off", "err", ferr)
	} else {
		defer f.Close()
		flows = f
	}
	hist := installLatency()
	ports, _ := nat.ParsePortRange(cfg.DataPorts) // validated
	g.table, err = nat.New(g.backend, nat.Config{
		Ports:          ports,
		ConnectTimeout: cfg.DataConnectTimeout,
		InstallTimeout: cfg.RuleTimeout,
		RemoveTimeout:  cfg.RuleTimeout,
		Logger:         log,
		Flows:          flows,
		MaxPerClient:   cfg.MaxMappingsPerIP,
		ObserveInstall: func(d time.Duration, err error) {
			result := "ok"
			if err != nil {
				result = "failed"
			}
			hist.WithLabelValues(result).Observe(d.Seconds())
		},
	})
	if err != nil {
		return err
	}
	// From here on every exit path removes what was installed.
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if g.ic != nil {
			if e := g.backend.(rules.Interceptor).StopIntercept(closeCtx, *g.ic); e != nil {
				err = errors.Join(err, fmt.Errorf("removing interception: %w", e))
			}
		}
		err = errors.Join(err, g.table.Close(closeCtx))
		g.pub.stop()
		if err == nil {
			log.Info("stopped cleanly")
		}
	}()

	if g.pub, err = startPublicSource(runCtx, cfg.PublicIface, log); err != nil {
		return err
	}
	g.srv = &proxy.Server{
		Settings:  cfg.settings(g.pub.current()),
		Intercept: cfg.InterceptMethod,
		NAT:       g.table,
		IsLocal:   watchLocalAddrs(runCtx, nil, interfaceAddrs, log).has,
		Logger:    log,
	}
	serveCtx, cancelServe := context.WithCancel(context.Background())
	defer cancelServe()
	g.serveCtx = serveCtx
	for _, addr := range cfg.Listen {
		if err := g.listen(ctx, addr); err != nil {
			g.srv.Shutdown(canceled())
			g.wg.Wait()
			return err
		}
	}
	if err := g.intercept(ctx); err != nil {
		g.srv.Shutdown(canceled())
		g.wg.Wait()
		return err
	}
	var stopMetrics func()
	if cfg.Metrics != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newCollector(g.srv, g.table), hist)
		healthy := func() error {
			if ctx.Err() != nil {
				return errors.New("draining")
			}
			if f := g.pub.current(); f != nil && !f().IsValid() {
				return errors.New("no public address")
			}
			return nil
		}
		if stopMetrics, err = serveMetrics(cfg.Metrics, reg, healthy, cfg.DebugPprof, log); err != nil {
			g.srv.Shutdown(canceled())
			g.wg.Wait()
			return err
		}
		defer stopMetrics()
	}

	mode := "reverse"
	if len(cfg.Upstream) == 0 {
		mode = "transparent"
	}
	log.Info("pasvgate started", "version", version, "mode", mode, "listen", cfg.Listen, "upstream", []string(cfg.Upstream),
		"public_addr", cfg.PublicAddr, "public_iface", cfg.PublicIface, "data_ports", cfg.DataPorts,
		"backend", g.backendName, "snat", cfg.SNAT, "metrics", cfg.Metrics)
	checkFDLimit(cfg, log)
	notify(log, daemon.SdNotifyReady)

	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case serveErr = <-g.errs:
			log.Error("a listener failed: stopping", "err", serveErr)
			break loop
		case <-env.hup:
			g.reload(ctx, env, log)
		}
	}

	notify(log, daemon.SdNotifyStopping)
	log.Info("stopping: draining sessions", "drain_timeout", g.cfg.DrainTimeout)
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), g.cfg.DrainTimeout)
	g.srv.Shutdown(drainCtx)
	cancelDrain()
	cancelServe()
	g.wg.Wait()
	log.Info("stopping: removing rules")
	return serveErr
}

// canceled is an already-ended context, for a Shutdown without drain.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// listen opens one --listen address and serves it.
func (g *gateway) listen(ctx context.Context, addr string) error {
	ln, err := listen(ctx, addr, len(g.cfg.Upstream) == 0 && g.cfg.InterceptMethod == rules.TProxy)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", addr, err)
	}
	g.lns[addr] = ln
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.srv.Serve(g.serveCtx, ln); err != nil {
			select {
			case g.errs <- err:
			default:
			}
		}
	}()
	return nil
}

// intercept installs --intercept, if given.
func (g *gateway) intercept(ctx context.Context) error {
	if g.cfg.Intercept == "" {
		return nil
	}
	icpt, ok := g.backend.(rules.Interceptor)
	if !ok {
		return fmt.Errorf("--intercept: the %s backend cannot intercept", g.backendName)
	}
	var port uint16
	for _, ln := range g.lns {
		port = uint16(ln.Addr().(*net.TCPAddr).Port)
		break
	}
	ic := rules.Interception{Iface: g.cfg.Intercept, Port: 21, Method: g.cfg.InterceptMethod, ListenPort: port}
	ictx, cancel := context.WithTimeout(ctx, 4*g.cfg.RuleTimeout)
	defer cancel()
	if err := icpt.Intercept(ictx, ic); err != nil {
		return fmt.Errorf("--intercept %s: %w", g.cfg.Intercept, err)
	}
	g.ic = &ic
	g.log.Info("intercepting FTP", "iface", ic.Iface, "method", ic.Method, "listen_port", ic.ListenPort)
	return nil
}

// restartOnly are the settings a reload cannot change: they shape kernel
// state or the process itself. A reload that changes one keeps the old
// value and says so.
func restartOnly(old, new Config) []string {
	var keys []string
	add := func(changed bool, key string) {
		if changed {
			keys = append(keys, key)
		}
	}
	add((len(old.Upstream) == 0) != (len(new.Upstream) == 0), "upstream (reverse vs transparent mode)")
	add(old.DataPorts != new.DataPorts, "data-ports")
	add(old.DataConnectTimeout != new.DataConnectTimeout, "data-connect-timeout")
	add(old.Backend != new.Backend, "backend")
	add(old.IptablesPath != new.IptablesPath, "iptables-path")
	add(old.RuleTimeout != new.RuleTimeout, "rule-timeout")
	add(old.ConnMark != new.ConnMark, "connmark")
	add(old.JumpCheckInterval != new.JumpCheckInterval, "jump-check-interval")
	add(old.Intercept != new.Intercept, "intercept")
	add(old.InterceptMethod != new.InterceptMethod, "intercept-method")
	add(old.Metrics != new.Metrics, "metrics")
	add(old.DebugPprof != new.DebugPprof, "debug-pprof")
	add(old.LogFormat != new.LogFormat, "log-format")
	return keys
}

// reload re-reads the config file (SIGHUP). Limits, log level, public
// address and upstream change in place for what reads them next; new
// listen addresses open and removed ones close, with their sessions left
// to finish. Nothing established is dropped. An invalid file changes
// nothing.
func (g *gateway) reload(ctx context.Context, env runEnv, log *slog.Logger) {
	notifyReloading(log)
	defer notify(log, daemon.SdNotifyReady)
	cfg, err := loadConfig(env.args)
	if err != nil {
		log.Error("reload refused: the configuration is invalid; keeping the running one", "err", err)
		return
	}
	if keys := restartOnly(g.cfg, cfg); len(keys) > 0 {
		log.Warn("reload: these settings need a restart and keep their running values", "keys", keys)
		old := g.cfg
		cfg.Upstream, cfg.DataPorts, cfg.DataConnectTimeout = old.Upstream, old.DataPorts, old.DataConnectTimeout
		cfg.Backend, cfg.IptablesPath, cfg.RuleTimeout, cfg.ConnMark = old.Backend, old.IptablesPath, old.RuleTimeout, old.ConnMark
		cfg.JumpCheckInterval, cfg.Intercept, cfg.InterceptMethod = old.JumpCheckInterval, old.Intercept, old.InterceptMethod
		cfg.Metrics, cfg.DebugPprof, cfg.LogFormat = old.Metrics, old.DebugPprof, old.LogFormat
	}
	if l, err := parseLevel(cfg.LogLevel); err == nil {
		env.level.Set(l)
	}
	pub := g.pub
	if cfg.PublicIface != g.cfg.PublicIface {
		np, err := startPublicSource(context.Background(), cfg.PublicIface, log)
		if err != nil {
			log.Error("reload: keeping the running public address", "err", err)
			cfg.PublicIface, cfg.PublicAddr = g.cfg.PublicIface, g.cfg.PublicAddr
		} else {
			pub = np
		}
	}
	g.srv.Reload(cfg.settings(pub.current()))
	g.table.SetMaxPerClient(cfg.MaxMappingsPerIP)
	if pub != g.pub {
		g.pub.stop()
		g.pub = pub
	}
	want := map[string]bool{}
	for _, addr := range cfg.Listen {
		want[addr] = true
		if _, ok := g.lns[addr]; !ok {
			if err := g.listen(ctx, addr); err != nil {
				log.Error("reload: cannot open a new listener", "err", err)
				continue
			}
			log.Info("reload: listening", "addr", addr)
		}
	}
	for addr, ln := range g.lns {
		if !want[addr] {
			ln.Close() // its sessions go on until they end
			delete(g.lns, addr)
			log.Info("reload: stopped listening", "addr", addr)
		}
	}
	g.cfg = cfg
	log.Info("reloaded", "config", cfg.Config)
}

// notify tells systemd about the service state; outside systemd it does
// nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// notifyReloading sends RELOADING=1 with the monotonic timestamp that
// systemd's Type=notify-reload asks for.
func notifyReloading(log *slog.Logger) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	notify(log, fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, ts.Nano()/1000))
}

// listen opens a control listener. A TPROXY listener needs IP_TRANSPARENT
// to accept connections addressed to other hosts.
func listen(ctx context.Context, addr string, transparent bool) (net.Listener, error) {
	var lc net.ListenConfig
	if transparent {
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				level, opt := syscall.SOL_IP, syscall.IP_TRANSPARENT
				if network == "tcp6" {
					level, opt = syscall.SOL_IPV6, 75 // IPV6_TRANSPARENT
				}
				serr = syscall.SetsockoptInt(int(fd), level, opt, 1)
			})
			if err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("setting IP_TRANSPARENT: %w", serr)
			}
			return nil
		}
	}
	return lc.Listen(ctx, "tcp", addr)
}

// cmdRules is `pasvgate rules list|flush`.
func cmdRules(args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "flush") {
		return usageError{errors.New("usage: pasvgate rules list|flush [--config FILE] [--backend B] [--iptables-path P]")}
	}
	// The same flags and config file as run, so that `rules flush
	// --config FILE` acts on the iptables the service uses.
	cfg, err := readConfig(args[1:])
	if err != nil {
		return err
	}
	log := newLogger(cfg, new(slog.LevelVar))
	backends, err := rulesBackends(cfg, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.RuleTimeout)
	defer cancel()
	var ms []rules.Mapping
	var errs []error
	for _, b := range backends {
		if args[0] == "flush" {
			errs = append(errs, b.Flush(ctx))
			continue
		}
		m, err := b.List(ctx)
		ms = append(ms, m...)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Nothing at all when there is nothing, so scripts can test for it.
	if len(ms) == 0 {
		return nil
	}
	fmt.Printf("%-16s %-40s %-46s %-46s %s\n", "ID", "CLIENT", "PUBLIC", "BACKEND", "AGE")
	for _, m := range ms {
		age := "-"
		if !m.Created.IsZero() {
			age = time.Since(m.Created).Truncate(time.Second).String()
		}
		fmt.Printf("%-16s %-40s %-46s %-46s %s\n", m.ID, m.Source, m.Public, m.Target, age)
	}
	return nil
}

// checkFDLimit warns when the open-file limit cannot hold --max-sessions:
// each session takes two descriptors (client and server), and a session
// that finds none left is refused with 421 and counted as fd-limit. Go
// has already raised the soft limit to the hard one at start-up.
func checkFDLimit(cfg Config, log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	// Listeners, the netlink and metrics sockets, logs: a few dozen.
	const reserve = 64
	sessions := (int64(lim.Cur) - reserve) / 2
	if cfg.MaxSessions > 0 && int64(cfg.MaxSessions) > sessions {
		log.Warn("the open-file limit holds fewer sessions than --max-sessions allows: raise LimitNOFILE",
			"nofile", lim.Cur, "sessions_it_holds", sessions, "max_sessions", cfg.MaxSessions)
		return
	}
	log.Info("open-file limit", "nofile", lim.Cur, "sessions_it_holds", sessions)
}
