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

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
)

// shutdownTimeout bounds how long a stop waits for rule removals.
const shutdownTimeout = 30 * time.Second

func cmdRun(args []string) error {
	cfg, err := loadConfig(args)
	if err != nil {
		return err
	}
	log := newLogger(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return run(ctx, cfg, log)
}

// run is pasvgate run after its configuration is valid: set up the kernel
// backend (sweeping an earlier process's leftovers), listen, serve until ctx
// ends, then end sessions and remove every mapping.
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	backend, err := newBackend(cfg, log)
	if err != nil {
		return err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 4*cfg.RuleTimeout)
	err = backend.Setup(setupCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("setting up kernel rules: %w", err)
	}
	ports, _ := nat.ParsePortRange(cfg.DataPorts) // validated
	table, err := nat.New(backend, nat.Config{
		Ports:          ports,
		ConnectTimeout: cfg.DataConnectTimeout,
		InstallTimeout: cfg.RuleTimeout,
		RemoveTimeout:  cfg.RuleTimeout,
		Logger:         log,
	})
	if err != nil {
		return err
	}
	upstream, upstream6 := cfg.upstreams()
	srv := &proxy.Server{
		Upstream:    upstream,
		Upstream6:   upstream6,
		Intercept:   cfg.InterceptMethod,
		NAT:         table,
		SNAT:        cfg.SNAT,
		DialTimeout: cfg.DialTimeout,
		IdleTimeout: cfg.IdleTimeout,
		MaxLine:     cfg.MaxLine,
		IsLocal:     isLocalAddr,
		Logger:      log,
	}
	if cfg.PublicAddr != "" {
		srv.PublicAddr = netip.MustParseAddr(cfg.PublicAddr) // validated
	}

	transparent := len(cfg.Upstream) == 0
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
		_ = table.Close(context.Background())
	}
	for _, addr := range cfg.Listen {
		ln, err := listen(ctx, addr, transparent && cfg.InterceptMethod == rules.TProxy)
		if err != nil {
			closeAll()
			return fmt.Errorf("--listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	var ic *rules.Interception
	if cfg.Intercept != "" {
		icpt, ok := backend.(rules.Interceptor)
		if !ok {
			closeAll()
			return fmt.Errorf("--intercept: the %s backend cannot intercept", cfg.Backend)
		}
		ic = &rules.Interception{Iface: cfg.Intercept, Port: 21, Method: cfg.InterceptMethod,
			ListenPort: uint16(lns[0].Addr().(*net.TCPAddr).Port)}
		ictx, cancel := context.WithTimeout(ctx, 4*cfg.RuleTimeout)
		err := icpt.Intercept(ictx, *ic)
		cancel()
		if err != nil {
			closeAll()
			return fmt.Errorf("--intercept %s: %w", cfg.Intercept, err)
		}
		log.Info("intercepting FTP", "iface", ic.Iface, "method", ic.Method, "listen_port", ic.ListenPort)
	}
	mode := "reverse"
	if transparent {
		mode = "transparent"
	}
	log.Info("pasvgate started", "version", version, "mode", mode, "listen", cfg.Listen, "upstream", []string(cfg.Upstream),
		"public_addr", cfg.PublicAddr, "data_ports", cfg.DataPorts, "backend", cfg.Backend, "snat", cfg.SNAT)

	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	serveCtx, cancelServe := context.WithCancel(ctx)
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(serveCtx, ln); err != nil {
				errs <- err
				cancelServe() // one broken listener stops the process
			}
		}()
	}
	wg.Wait()
	cancelServe()
	close(errs)

	log.Info("stopping: removing rules")
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if ic != nil {
		if e := backend.(rules.Interceptor).StopIntercept(closeCtx, *ic); e != nil {
			err = errors.Join(err, fmt.Errorf("removing interception: %w", e))
		}
	}
	err = errors.Join(err, table.Close(closeCtx))
	for e := range errs {
		err = errors.Join(err, e)
	}
	if err == nil {
		log.Info("stopped cleanly")
	}
	return err
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

// isLocalAddr reports whether a is assigned to an interface of this host
// (in this network namespace).
func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, x := range addrs {
		if n, ok := x.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok && b.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// cmdRules is `pasvgate rules list|flush`.
func cmdRules(args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "flush") {
		return usageError{errors.New("usage: pasvgate rules list|flush [--iptables-path P]")}
	}
	cfg := defaults()
	fs := runFlags(&cfg)
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	log := newLogger(cfg)
	backend, err := newBackend(cfg, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.RuleTimeout)
	defer cancel()
	if args[0] == "flush" {
		return backend.Flush(ctx)
	}
	ms, err := backend.List(ctx)
	if err != nil {
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
