package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/pool"
)

// runConfig is a Config parsed once: every value validated into the type
// it is used as. run, a reload and `rules` read only these values, never
// the strings again. Each area has its file and its parse function:
//
//	parse_log.go       log-format, log-level
//	parse_backend.go   backend, iptables-path, rule-timeout, connmark,
//	                   jump-check-interval, host-firewall
//	parse_limits.go    timeouts, session and mapping limits, data ports,
//	                   max-line, metrics
//	tls.go             the TLS keys (and the files they name: loadTLS)
//	parse_routes.go    the mode, the upstream pools, balance, health,
//	                   PROXY protocol, public address, announce, routes
//	parse_listen.go    every listener, its route, and their overlaps
type runConfig struct {
	// file is --config, for the reload's log line.
	file string
	log  logSpec
	be   backendSpec
	lim  limitSpec
	tls  tlsSpec
	// reverse is the mode: reverse (pools) or transparent (intercepted
	// connections go where they were going).
	reverse bool
	// routes are the reverse mode's services: the default route (the
	// top-level keys, named "") first if it exists, then `routes`.
	routes []routeSpec
	// listeners are every --listen, --listen-tls and route listener.
	listeners []listener
	// Transparent mode.
	intercept       string // --intercept: an interface, or "" (none)
	interceptMethod string
	dest            proxy.DestPolicy
	// publicIface is --public-iface: the default route's public address,
	// followed live, for routes without public-addr too.
	publicIface string
	health      pool.Health
	snat        bool
	// freebind is --freebind: listeners bind addresses the host does not
	// hold (yet).
	freebind bool
	// upstreamSource is --upstream-source: at most one address per family.
	upstreamSource []netip.Addr
}

// parse validates c into a runConfig, naming the flag (or route key) of
// the first bad value.
func (c Config) parse() (*runConfig, error) {
	rc := &runConfig{file: c.Config, snat: c.SNAT, freebind: c.Freebind}
	var err error
	if rc.log, err = c.parseLog(); err != nil {
		return nil, err
	}
	if rc.be, err = c.parseBackend(); err != nil {
		return nil, err
	}
	if rc.lim, err = c.parseLimits(); err != nil {
		return nil, err
	}
	if err = c.parseRoutes(rc); err != nil {
		return nil, err
	}
	if rc.tls, err = c.parseTLS(rc); err != nil {
		return nil, err
	}
	if err = c.parseListeners(rc); err != nil {
		return nil, err
	}
	return rc, nil
}

// badFlag is a usage error naming the flag (or key) of the bad value.
func badFlag(flag string, format string, a ...any) error {
	return usageError{fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...))}
}

// positive checks durations that must be above zero.
func positive(ds map[string]time.Duration) error {
	for name, d := range ds {
		if d <= 0 {
			return badFlag(name, "must be positive, got %v", d)
		}
	}
	return nil
}
