package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/conntrack"
	"github.com/pasvgate/pasvgate/rules/hostfw"
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
	if err := checkUpstreamLoop(cfg); err != nil {
		return err
	}
	level := new(slog.LevelVar)
	log, lw := newServiceLogger(cfg.log, level)
	defer lw.Close()
	procs := setProcs(os.Getenv)
	// Before anything touches the kernel: the backend's start-up sweep
	// would take another instance's live mappings.
	release, err := claimInstance()
	if err != nil {
		return err
	}
	defer release()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, runEnv{args: args, level: level, hup: hup, procs: procs}, cfg, log)
}

// runEnv is what run needs besides the config: the arguments to re-read
// the config from on SIGHUP, the log level to change, and the SIGHUP
// channel (nil: no reloads).
type runEnv struct {
	args  []string
	level *slog.LevelVar
	hup   <-chan os.Signal
	// procs is GOMAXPROCS, for the start-up line (setProcs).
	procs int
}

// settings turns the config into the proxy's reloadable settings. pub, if
// not nil, follows --public-iface; pools gives each route's pools.
func (rc *runConfig) settings(pub func() netip.Addr, pools *poolSet) proxy.Settings {
	st := proxy.Settings{
		DestPolicy: rc.dest, SNAT: rc.snat, PublicAddrFunc: pub,
		DialTimeout: rc.lim.dial, UpstreamSource: rc.upstreamSource, IdleTimeout: rc.lim.idle, LoginTimeout: rc.lim.login,
		Keepalive: rc.lim.keepalive, MaxLine: rc.lim.maxLine,
		MaxSessions: rc.lim.maxSessions, MaxSessionsPerIP: rc.lim.maxSessionsPerIP,
	}
	for _, r := range rc.routes {
		rt := proxy.Route{Pool: pools.get(r.pool), Pool6: pools.get(r.pool6), PublicAddr: r.publicAddr,
			Announce: r.announce, Ports: r.ports}
		if r.name == "" {
			st.Pool, st.Pool6, st.PublicAddr, st.Announce, st.Ports = rt.Pool, rt.Pool6, rt.PublicAddr, rt.Announce, rt.Ports
			continue
		}
		if st.Routes == nil {
			st.Routes = map[string]proxy.Route{}
		}
		st.Routes[r.name] = rt
	}
	rc.tls.settings(&st)
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
	cfg     *runConfig
	log     *slog.Logger
	backend rules.Backend
	// backendName is the backend in use: --backend, or what auto chose.
	backendName string
	table       *nat.Table
	srv         *proxy.Server
	// pub is read by /healthz while a reload replaces it.
	pub atomic.Pointer[publicSource]
	ic  *rules.Interception
	// pools are the routes' server pools, each with its health checks.
	pools *poolSet

	serveCtx context.Context // sessions end at once when it is cancelled
	wg       sync.WaitGroup
	errs     chan error
	lns      map[string][]net.Listener // by --listen address, as written
}

// run is pasvgate run after its configuration is valid: set up the kernel
// backend (sweeping an earlier process's leftovers), listen, tell systemd
// it is ready, then serve until ctx ends (drain) or a listener fails,
// reloading on SIGHUP, and remove every mapping on the way out.
func run(ctx context.Context, env runEnv, cfg *runConfig, log *slog.Logger) (err error) {
	g := &gateway{cfg: cfg, log: log, errs: make(chan error, 16), lns: map[string][]net.Listener{}}
	var ch choice
	setupCtx, cancel := context.WithTimeout(ctx, 4*cfg.be.ruleTimeout)
	g.backend, ch, err = newBackend(setupCtx, cfg.be, cfg.intercept != "", cfg.interceptMethod, log)
	cancel()
	if err != nil {
		return err
	}
	g.backendName = ch.name
	setupCtx, cancel = context.WithTimeout(ctx, 4*cfg.be.ruleTimeout)
	err = g.backend.Setup(setupCtx)
	if err == nil {
		sweepOther(setupCtx, cfg.be, ch.name, log)
	}
	if err == nil && ch.hostFW != nil {
		if _, herr := ch.hostFW.Ensure(setupCtx); herr != nil {
			err = fmt.Errorf("--host-firewall auto: %w", herr)
		}
	}
	cancel()
	if err != nil {
		return fmt.Errorf("setting up kernel rules: %w", err)
	}

	// Watchers and the metrics server live until the very end, after
	// the drain: runCtx, not ctx.
	runCtx, stopRun := context.WithCancel(context.Background())
	var local *nat.LocalAddrs
	defer func() {
		stopRun()
		if local != nil {
			local.Wait()
		}
	}()
	if ch.hostFW != nil {
		// A firewall reload removes pasvgate's accept: put it back. It
		// stays after a stop, like the iptables backend's chains, so that
		// transfers still in flight, and those across a restart, keep
		// flowing; `rules flush` (the unit's ExecStopPost) removes it.
		keepCtx, stopKeep := context.WithCancel(runCtx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			ch.hostFW.Run(keepCtx, hostfw.DefaultInterval, ch.repair)
		}()
		defer func() { stopKeep(); <-done }()
	}
	var flows nat.FlowFlusher
	if f, ferr := conntrack.New(); ferr != nil {
		log.Warn("conntrack clean-up is off", "err", ferr)
	} else {
		defer f.Close()
		flows = f
	}
	hist := installLatency()
	g.table, err = nat.New(g.backend, nat.Config{
		Ports:          cfg.lim.dataPorts,
		ConnectTimeout: cfg.be.mappingTimeout,
		InstallTimeout: cfg.be.ruleTimeout,
		RemoveTimeout:  cfg.be.ruleTimeout,
		Logger:         log,
		Flows:          flows,
		MaxPerClient:   cfg.lim.maxMappingsPerIP,
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
		g.pub.Load().stop()
		if err == nil {
			log.Info("stopped cleanly")
		}
	}()

	pub, err := startPublicSource(runCtx, cfg.publicIface, log)
	if err != nil {
		return err
	}
	g.pub.Store(pub)
	if local, err = nat.WatchLocal(runCtx, log); err != nil {
		return err
	}
	g.pools = newPoolSet(runCtx, log)
	defer g.pools.stop()
	g.pools.sync(cfg)
	g.srv = &proxy.Server{
		Settings:  cfg.settings(pub.current(), g.pools),
		Intercept: cfg.interceptMethod,
		NAT:       g.table,
		IsLocal:   local.Has,
		Logger:    log,
	}
	serveCtx, cancelServe := context.WithCancel(context.Background())
	defer cancelServe()
	g.serveCtx = serveCtx
	for _, l := range cfg.listeners {
		if err := g.listen(ctx, l); err != nil {
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
	if spec := cfg.lim.metrics; spec != nil {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newCollector(g.srv, g.table), newPoolCollector(g.pools.list), hist)
		healthy := func() error { return g.healthy(ctx) }
		if w := metricsExposure(*spec, cfg.lim.pprof); w != "" {
			log.Warn(w, "metrics", spec.text)
		}
		if stopMetrics, err = serveMetrics(spec.text, reg, healthy, g.srv.Sessions, cfg.lim.pprof, log); err != nil {
			g.srv.Shutdown(canceled())
			g.wg.Wait()
			return err
		}
		defer stopMetrics()
	}

	mode := "reverse"
	if !cfg.reverse {
		mode = "transparent"
	}
	log.Info("pasvgate started", "version", version, "mode", mode, "listen", cfg.listenAddrs(),
		"routes", len(cfg.routes), "pools", cfg.poolSummary(), "public_iface", cfg.publicIface,
		"data_ports", cfg.lim.dataPorts.String(), "backend", g.backendName, "snat", cfg.snat, "freebind", cfg.freebind,
		"metrics", cfg.metricsAddr(), "gomaxprocs", env.procs,
		"tls", cfg.tls.mode.String(), "upstream_tls", cfg.tls.upstream.String())
	warnInsecure(cfg.tls, log)
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
	log.Info("stopping: draining sessions", "drain_timeout", g.cfg.lim.drain)
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), g.cfg.lim.drain)
	g.srv.Shutdown(drainCtx)
	cancelDrain()
	cancelServe()
	g.wg.Wait()
	log.Info("stopping: removing rules")
	return serveErr
}

// checkUpstreamLoop refuses an upstream that is one of this host's
// addresses at the port of a wildcard listener: validate could only catch
// loopback and literal matches, without the host's address list.
func checkUpstreamLoop(cfg *runConfig) error {
	local, err := interfaceAddrs()
	if err != nil {
		return nil // parse has caught the literal cases
	}
	var specs []listenSpec
	for _, l := range cfg.listeners {
		specs = append(specs, l.spec)
	}
	for _, m := range cfg.members() {
		if up, err := netip.ParseAddrPort(m); err == nil {
			if l, loop := upstreamIsListener(specs, up, func(a netip.Addr) bool { return local[a] }); loop {
				return usageError{fmt.Errorf("--upstream: %s is an address of this host at the port of --listen %s: every session would dial pasvgate again", m, l)}
			}
		}
	}
	return nil
}

// interfaceAddrs lists every address of every interface, once.
func interfaceAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	set := make(map[netip.Addr]bool, len(addrs))
	for _, x := range addrs {
		if n, ok := x.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok {
				set[b.Unmap()] = true
			}
		}
	}
	return set, nil
}

// healthy is /healthz: not while draining (ctx ended), nor while
// --public-iface has no usable address.
func (g *gateway) healthy(ctx context.Context) error {
	if ctx.Err() != nil {
		return errors.New("draining")
	}
	if f := g.pub.Load().current(); f != nil && !f().IsValid() {
		return errors.New("no public address")
	}
	return nil
}

// canceled is an already-ended context, for a Shutdown without drain.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// listen opens one --listen or --listen-tls address (one socket per
// family it covers, see listen.go) and serves it.
func (g *gateway) listen(ctx context.Context, l listener) error {
	var controls []func(string, string, syscall.RawConn) error
	if !g.cfg.reverse && g.cfg.interceptMethod == rules.TProxy {
		controls = append(controls, transparentControl)
	}
	if g.cfg.freebind {
		controls = append(controls, freebindControl)
	}
	control := func(network, address string, c syscall.RawConn) error {
		for _, f := range controls {
			if err := f(network, address, c); err != nil {
				return err
			}
		}
		return nil
	}
	lns, err := openListeners(ctx, l.spec, control, g.log)
	if err != nil {
		return fmt.Errorf("%s %s: %w", l.flag(), l.addr, err)
	}
	g.lns[l.key()] = lns
	for _, ln := range lns {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := g.srv.ServeRoute(g.serveCtx, ln, l.route, l.implicit); err != nil {
				select {
				case g.errs <- err:
				default:
				}
			}
		}()
	}
	return nil
}

// intercept installs --intercept, if given.
func (g *gateway) intercept(ctx context.Context) error {
	if g.cfg.intercept == "" {
		return nil
	}
	icpt, ok := g.backend.(rules.Interceptor)
	if !ok {
		return fmt.Errorf("--intercept: the %s backend cannot intercept", g.backendName)
	}
	// parse made every --listen port the same under --intercept: the
	// first listener's port is the one the interception leads to.
	port := uint16(g.lns[g.cfg.listeners[0].key()][0].Addr().(*net.TCPAddr).Port)
	ic := rules.Interception{Iface: g.cfg.intercept, Port: 21, Method: g.cfg.interceptMethod, ListenPort: port}
	ictx, cancel := context.WithTimeout(ctx, 4*g.cfg.be.ruleTimeout)
	defer cancel()
	if err := icpt.Intercept(ictx, ic); err != nil {
		return fmt.Errorf("--intercept %s: %w", g.cfg.intercept, err)
	}
	g.ic = &ic
	g.log.Info("intercepting FTP", "iface", ic.Iface, "method", ic.Method, "listen_port", ic.ListenPort)
	return nil
}

// restartOnly lists the settings a reload cannot change: they shape kernel
// state or the process itself. Each knows how to tell a change and how to
// keep the running value, so that a reload keeps exactly the keys that
// changed and applies every other change in the same file. They compare
// parsed values: "40000-40999" and "40000-040999" are no change.
var restartOnly = []struct {
	key     string
	changed func(old, new *runConfig) bool
	keep    func(old, new *runConfig)
}{
	{"upstream and routes (reverse vs transparent mode)",
		func(o, n *runConfig) bool { return o.reverse != n.reverse },
		func(o, n *runConfig) {
			n.reverse, n.routes, n.dest, n.listeners = o.reverse, o.routes, o.dest, o.listeners
		}},
	{"data-ports", func(o, n *runConfig) bool { return o.lim.dataPorts != n.lim.dataPorts }, func(o, n *runConfig) { n.lim.dataPorts = o.lim.dataPorts }},
	{"backend, iptables-path, rule-timeout, connmark, jump-check-interval, host-firewall, data-connect-timeout",
		func(o, n *runConfig) bool { return o.be != n.be }, func(o, n *runConfig) { n.be = o.be }},
	{"intercept", func(o, n *runConfig) bool { return o.intercept != n.intercept }, func(o, n *runConfig) { n.intercept = o.intercept }},
	{"intercept-method", func(o, n *runConfig) bool { return o.interceptMethod != n.interceptMethod }, func(o, n *runConfig) { n.interceptMethod = o.interceptMethod }},
	{"metrics", func(o, n *runConfig) bool { return o.metricsAddr() != n.metricsAddr() }, func(o, n *runConfig) { n.lim.metrics = o.lim.metrics }},
	{"debug-pprof", func(o, n *runConfig) bool { return o.lim.pprof != n.lim.pprof }, func(o, n *runConfig) { n.lim.pprof = o.lim.pprof }},
	{"log-format", func(o, n *runConfig) bool { return o.log.json != n.log.json }, func(o, n *runConfig) { n.log.json = o.log.json }},
}

// keepRestartOnly puts back, in new, the running value of every
// restart-only key that changed, and returns those keys.
func keepRestartOnly(old *runConfig, new *runConfig) []string {
	var keys []string
	for _, k := range restartOnly {
		if k.changed(old, new) {
			k.keep(old, new)
			keys = append(keys, k.key)
		}
	}
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
	if keys := keepRestartOnly(g.cfg, cfg); len(keys) > 0 {
		log.Warn("reload: these settings need a restart and keep their running values", "keys", keys)
	}
	env.level.Set(cfg.log.level)
	old := g.pub.Load()
	pub := old
	if cfg.publicIface != g.cfg.publicIface {
		np, err := startPublicSource(context.Background(), cfg.publicIface, log)
		if err != nil {
			log.Error("reload: keeping the running public address", "err", err)
			cfg.publicIface = g.cfg.publicIface
			if len(cfg.routes) > 0 && len(g.cfg.routes) > 0 && cfg.routes[0].name == "" && g.cfg.routes[0].name == "" {
				cfg.routes[0].publicAddr = g.cfg.routes[0].publicAddr
			}
		} else {
			pub = np
		}
	}
	g.pools.sync(cfg)
	g.srv.Reload(cfg.settings(pub.current(), g.pools))
	g.table.SetMaxPerClient(cfg.lim.maxMappingsPerIP)
	if pub != old {
		g.pub.Store(pub)
		old.stop()
	}
	want := map[string]bool{}
	for _, l := range cfg.listeners {
		want[l.key()] = true
	}
	// Removed listeners close first: an address that moved to another
	// route, or between --listen and --listen-tls, opens again below.
	for key, lns := range g.lns {
		if !want[key] {
			for _, ln := range lns {
				ln.Close() // its sessions go on until they end
			}
			delete(g.lns, key)
			log.Info("reload: stopped listening", "listener", key)
		}
	}
	for _, l := range cfg.listeners {
		if _, ok := g.lns[l.key()]; !ok {
			if err := g.listen(ctx, l); err != nil {
				log.Error("reload: cannot open a new listener", "err", err)
				continue
			}
			log.Info("reload: listening", "addr", l.addr, "route", l.route, "implicit_tls", l.implicit)
		}
	}
	g.cfg = cfg
	log.Info("reloaded", "config", cfg.file)
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

// transparentControl marks a TPROXY listener IP_TRANSPARENT, so that it
// accepts connections addressed to other hosts; the option is per family.
func transparentControl(network, address string, c syscall.RawConn) error {
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
	// Only what the command uses is parsed: the backend's keys, and the
	// log's. The rest of the file need not be valid to flush.
	ls, err := cfg.parseLog()
	if err != nil {
		return err
	}
	be, err := cfg.parseBackend()
	if err != nil {
		return err
	}
	log := newLogger(ls, new(slog.LevelVar))
	backends, err := rulesBackends(be, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*be.ruleTimeout)
	defer cancel()
	var ms []rules.Mapping
	var errs []error
	if args[0] == "flush" {
		// pasvgate's accept in the host's forward chains, whichever
		// backend and --host-firewall: it is pasvgate's own.
		_, err := newHostFW(be, log).Remove(ctx)
		errs = append(errs, err)
	}
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
	writeMappings(os.Stdout, ms, time.Now())
	return nil
}

// writeMappings prints `rules list`'s table. DIALED, last so that
// scripts reading the first columns keep working, is the second address
// a PASV mapping admits its client on (the one the client dialed, for
// clients that ignore the 227's address), or "-".
func writeMappings(w io.Writer, ms []rules.Mapping, now time.Time) {
	fmt.Fprintf(w, "%-16s %-40s %-46s %-46s %-10s %s\n", "ID", "CLIENT", "PUBLIC", "BACKEND", "AGE", "DIALED")
	for _, m := range ms {
		age := "-"
		if !m.Created.IsZero() {
			age = now.Sub(m.Created).Truncate(time.Second).String()
		}
		dialed := "-"
		if m.Dialed.IsValid() {
			dialed = m.Dialed.String()
		}
		fmt.Fprintf(w, "%-16s %-40s %-46s %-46s %-10s %s\n", m.ID, m.Source, m.Public, m.Target, age, dialed)
	}
}

// checkFDLimit warns when the open-file limit cannot hold --max-sessions:
// each session takes two descriptors (client and server), and a session
// that finds none left is refused with 421 and counted as fd-limit. Go
// has already raised the soft limit to the hard one at start-up.
func checkFDLimit(cfg *runConfig, log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	// Listeners, the netlink and metrics sockets, logs: a few dozen.
	const reserve = 64
	sessions := (int64(lim.Cur) - reserve) / 2
	if cfg.lim.maxSessions > 0 && int64(cfg.lim.maxSessions) > sessions {
		log.Warn("the open-file limit holds fewer sessions than --max-sessions allows: raise LimitNOFILE",
			"nofile", lim.Cur, "sessions_it_holds", sessions, "max_sessions", cfg.lim.maxSessions)
		return
	}
	log.Info("open-file limit", "nofile", lim.Cur, "sessions_it_holds", sessions)
}
