package main

import (
	"fmt"
	"net/netip"

	"github.com/pasvgate/pasvgate/proxy/pool"
)

// listener is one --listen or --listen-tls address, or a route's.
type listener struct {
	addr     string // as written
	spec     listenSpec
	implicit bool   // --listen-tls: TLS from the first byte
	route    string // "" for the default route
}

// key names the listener in gateway.lns: an address may move from one
// flag to the other, or from one route to another, across a reload.
func (l listener) key() string {
	k := l.route + " " + l.addr
	if l.implicit {
		k = "tls " + k
	}
	return k
}

func (l listener) flag() string {
	switch {
	case l.route != "" && l.implicit:
		return "route " + l.route + " listen-tls"
	case l.route != "":
		return "route " + l.route + " listen"
	case l.implicit:
		return "--listen-tls"
	}
	return "--listen"
}

// parseListeners parses every listen address of every route, and checks
// them against each other (no two take one port), against the servers (no
// server is pasvgate itself) and against the public address and the
// interception.
func (c Config) parseListeners(rc *runConfig) error {
	var specs []listenSpec
	for i := range rc.routes {
		r := &rc.routes[i]
		plain, flag, tlsFlag := r.listen, "listen", "listen-tls"
		if r.name != "" {
			flag, tlsFlag = fmt.Sprintf("routes[%d].listen", i), fmt.Sprintf("routes[%d].listen-tls", i)
		} else if len(plain) == 0 {
			plain = defaultListen
		}
		if r.name == "" && len(plain) == 0 {
			return badFlag("listen", "at least one address is needed")
		}
		for _, l := range plain {
			sp, err := parseListen(l)
			if err != nil {
				return badFlag(flag, "%q: %v", l, err)
			}
			rc.listeners = append(rc.listeners, listener{addr: l, spec: sp, route: r.name})
			specs = append(specs, sp)
		}
		for _, l := range r.listenTLS {
			sp, err := parseListen(l)
			if err != nil {
				return badFlag(tlsFlag, "%q: %v", l, err)
			}
			rc.listeners = append(rc.listeners, listener{addr: l, spec: sp, implicit: true, route: r.name})
			specs = append(specs, sp)
		}
	}
	if err := checkListenOverlap(specs); err != nil {
		return badFlag("listen", "%v", err)
	}
	if rc.intercept != "" {
		// The interception leads to one port, in both families.
		first := rc.listeners[0]
		for _, l := range rc.listeners {
			if l.spec.sockets[0].addr.Port() != first.spec.sockets[0].addr.Port() {
				return badFlag("listen", "with --intercept every --listen address needs the same port (%q and %q differ)", first.addr, l.addr)
			}
		}
	}
	for _, r := range rc.routes {
		for _, p := range []*pool.Config{r.pool, r.pool6} {
			if p == nil {
				continue
			}
			for _, m := range p.Members {
				if up, err := netip.ParseAddrPort(m.Addr); err == nil {
					if l, loop := upstreamIsListener(specs, up, nil); loop {
						return badFlag("upstream", "%s is pasvgate's own --listen %s: every session would dial pasvgate again", m.Addr, l)
					}
				}
			}
		}
	}
	// A public address for 227 replies is IPv4: a default route that
	// listens on IPv6 only could never use it.
	if len(rc.routes) > 0 && rc.routes[0].name == "" && rc.routes[0].publicAddr.IsValid() {
		v4 := false
		for _, l := range rc.listeners {
			if l.route == "" && !l.implicit {
				v4 = v4 || l.spec.bothFamilies || l.spec.sockets[0].addr.Addr().Is4()
			}
		}
		if !v4 {
			return badFlag("public-addr", "%s is IPv4 but every --listen address is IPv6", rc.routes[0].publicAddr)
		}
	}
	return nil
}
