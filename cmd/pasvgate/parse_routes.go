package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/pool"
	"github.com/pasvgate/pasvgate/rules"
)

// routeSpec is one public service, parsed: the default route (the
// top-level keys, name "") or an entry of `routes`.
type routeSpec struct {
	name string
	// pool serves every client, or the IPv4 ones when pool6 is set too.
	pool, pool6 *pool.Config
	publicAddr  netip.Addr // invalid: the top-level one (or --public-iface)
	announce    []proxy.Announce
	ports       nat.PortRange // zero: --data-ports
	// listen and listenTLS are the route's listen addresses, as written.
	listen, listenTLS []string
}

// defaultPool names the default route's pools (and the route in logs).
const defaultPool = "default"

// poolName is the name of a route's pool: the route's name, with "6" for
// the IPv6 pool of a route that has both.
func poolName(route string, v6 bool) string {
	if route == "" {
		route = defaultPool
	}
	if v6 {
		return route + "6"
	}
	return route
}

// parseRoutes checks the mode and everything that says where sessions go
// and what clients are told: upstream, balance, proxy-protocol, health,
// public-addr, public-iface, announce, routes; or, in transparent mode,
// intercept, intercept-method and allow-dest.
func (c Config) parseRoutes(rc *runConfig) error {
	if c.InterceptMethod != rules.Redirect && c.InterceptMethod != rules.TProxy {
		return badFlag("intercept-method", "%q: want redirect or tproxy", c.InterceptMethod)
	}
	rc.interceptMethod = c.InterceptMethod
	rc.reverse = len(c.Upstream) > 0 || len(c.Routes) > 0
	if c.HealthInterval < 0 {
		return badFlag("health-interval", "must not be negative (0: no checks)")
	}
	if c.HealthTimeout <= 0 {
		return badFlag("health-timeout", "must be positive, got %v", c.HealthTimeout)
	}
	if c.HealthFall < 1 || c.HealthRise < 1 {
		return badFlag("health-fall", "health-fall and health-rise must be at least 1")
	}
	rc.health = pool.Health{Interval: c.HealthInterval, Timeout: c.HealthTimeout, Fall: c.HealthFall, Rise: c.HealthRise}
	var err error
	var pub netip.Addr
	if c.PublicAddr != "" {
		if pub, err = parsePublicAddr("public-addr", c.PublicAddr); err != nil {
			return err
		}
	}
	if c.PublicIface != "" {
		if c.PublicAddr != "" {
			return badFlag("public-iface", "give --public-addr or --public-iface, not both")
		}
		if !rules.ValidIface(c.PublicIface) {
			return badFlag("public-iface", "%q is not an interface name", c.PublicIface)
		}
		rc.publicIface = c.PublicIface
	}
	if !rc.reverse {
		// Transparent mode: each session's server is where the
		// intercepted connection was going.
		if c.Intercept != "" && !rules.ValidIface(c.Intercept) {
			return badFlag("intercept", "%q is not an interface name", c.Intercept)
		}
		if rc.dest, err = proxy.ParseDestPolicy(c.AllowDest); err != nil {
			return badFlag("allow-dest", "%v", err)
		}
		if len(c.Announce) > 0 {
			return badFlag("announce", "reverse mode only")
		}
		if len(c.UpstreamSource) > 0 {
			// Transparent mode dials where the client was going, from the
			// router's own address towards it.
			return badFlag("upstream-source", "reverse mode only")
		}
		// Transparent mode has no pools: a policy given for them would
		// silently do nothing.
		if d := defaults(); c.Balance != d.Balance || c.ProxyProtocol != d.ProxyProtocol {
			return badFlag("balance", "--balance and --proxy-protocol are for reverse mode's pools (--upstream)")
		}
		rc.intercept = c.Intercept
		// The default route carries the public address for PORT/EPRT.
		rc.routes = []routeSpec{{publicAddr: pub, listen: c.Listen}}
		return nil
	}
	if c.Intercept != "" {
		return badFlag("intercept", "transparent mode takes no --upstream or routes")
	}
	for _, u := range c.UpstreamSource {
		a, err := netip.ParseAddr(u)
		if err != nil || !(a.IsGlobalUnicast() || a.IsLoopback()) {
			return badFlag("upstream-source", "%q is not a unicast address", u)
		}
		a = a.Unmap()
		for _, b := range rc.upstreamSource {
			if b.Is4() == a.Is4() {
				return badFlag("upstream-source", "%s and %s: one address per family", b, a)
			}
		}
		rc.upstreamSource = append(rc.upstreamSource, a)
	}
	if len(c.AllowDest) > 0 {
		return badFlag("allow-dest", "transparent mode only: in reverse mode the servers are --upstream")
	}
	defaults := routeConfig{Balance: c.Balance, ProxyProtocol: c.ProxyProtocol}
	if len(c.Upstream) > 0 {
		r := routeConfig{Listen: c.Listen, ListenTLS: c.ListenTLS, Upstream: c.Upstream, Announce: c.Announce}
		spec, err := parseRoute(r, defaults, rc.health, c.healthSet, func(key string) string { return key })
		if err != nil {
			return err
		}
		spec.publicAddr = pub
		rc.routes = append(rc.routes, spec)
	} else {
		if len(c.Listen) > 0 || len(c.ListenTLS) > 0 {
			return badFlag("listen", "with routes and no --upstream, listen addresses belong to the routes")
		}
		if len(c.Announce) > 0 {
			return badFlag("announce", "with routes and no --upstream, announce belongs to the routes")
		}
	}
	names := map[string]bool{}
	for i, r := range c.Routes {
		key := func(k string) string { return fmt.Sprintf("routes[%d].%s", i, k) }
		switch {
		case r.Name == "":
			return badFlag(key("name"), "every route needs a name")
		case r.Name == defaultPool || net.ParseIP(r.Name) != nil:
			return badFlag(key("name"), "%q is reserved", r.Name)
		case names[r.Name]:
			return badFlag(key("name"), "%q is given twice", r.Name)
		case len(r.Listen) == 0 && len(r.ListenTLS) == 0:
			return badFlag(key("listen"), "route %q needs a listen or listen-tls address", r.Name)
		case len(r.Upstream) == 0:
			return badFlag(key("upstream"), "route %q needs at least one server", r.Name)
		}
		names[r.Name] = true
		spec, err := parseRoute(r, defaults, rc.health, c.healthSet, key)
		if err != nil {
			return err
		}
		rc.routes = append(rc.routes, spec)
	}
	// A port is busy in the one nat table whichever range it was drawn
	// for: ranges that overlap would make routes take each other's.
	ranges := []nat.PortRange{}
	for _, r := range rc.routes {
		if r.ports != (nat.PortRange{}) {
			ranges = append(ranges, r.ports)
		}
	}
	top, _ := nat.ParsePortRange(c.DataPorts) // parseLimits has checked it
	for i, a := range ranges {
		if a.Low <= top.High && top.Low <= a.High {
			return badFlag("routes", "data-ports %v overlaps --data-ports %v", a, top)
		}
		for _, b := range ranges[:i] {
			if a.Low <= b.High && b.Low <= a.High {
				return badFlag("routes", "data-ports %v and %v overlap", a, b)
			}
		}
	}
	return nil
}

// parseRoute parses one route's keys; key names a key for errors.
//
// A pool of one server gets no active health checks unless
// health-interval was given (healthSet): it has nowhere else to send
// sessions, so checks would only add a connection every few seconds to
// its server's log, a change an operator of one server did not ask for.
func parseRoute(r routeConfig, defaults routeConfig, health pool.Health, healthSet bool, key func(string) string) (routeSpec, error) {
	spec := routeSpec{name: r.Name, listen: r.Listen, listenTLS: r.ListenTLS}
	balance, pp := r.Balance, r.ProxyProtocol
	if balance == "" {
		balance = defaults.Balance
	}
	if pp == "" {
		pp = defaults.ProxyProtocol
	}
	policy, err := pool.ParsePolicy(balance)
	if err != nil {
		return spec, badFlag(key("balance"), "%v", err)
	}
	proto, err := pool.ParseProxyProtocol(pp)
	if err != nil {
		return spec, badFlag(key("proxy-protocol"), "%v", err)
	}
	var main, v6 []pool.Member
	names := false
	for _, u := range r.Upstream {
		m, fam, err := parseMember(u)
		if err != nil {
			return spec, badFlag(key("upstream"), "%v", err)
		}
		switch fam {
		case 6:
			v6 = append(v6, m)
		case 0:
			names = true
			main = append(main, m)
		default:
			main = append(main, m)
		}
	}
	if names && len(v6) > 0 {
		return spec, badFlag(key("upstream"), "with servers of both families, give each as an IP address")
	}
	mk := func(members []pool.Member, v6 bool) *pool.Config {
		h := health
		if len(members) < 2 && !healthSet {
			h.Interval = 0
		}
		return &pool.Config{Name: poolName(r.Name, v6), Members: members, Policy: policy, ProxyProtocol: proto, Health: h}
	}
	switch {
	case len(main) > 0 && len(v6) > 0:
		spec.pool, spec.pool6 = mk(main, false), mk(v6, true)
	case len(main) > 0:
		spec.pool = mk(main, false)
	default:
		spec.pool = mk(v6, false) // IPv6 servers only: they serve everyone
	}
	if r.PublicAddr != "" {
		if spec.publicAddr, err = parsePublicAddr(key("public-addr"), r.PublicAddr); err != nil {
			return spec, err
		}
	}
	if r.DataPorts != "" {
		if spec.ports, err = parseDataPorts(key("data-ports"), r.DataPorts); err != nil {
			return spec, err
		}
	}
	for _, a := range r.Announce {
		n, err := netip.ParsePrefix(a.Network)
		if err != nil {
			return spec, badFlag(key("announce"), "%q is not a network such as 198.51.100.0/24", a.Network)
		}
		addr, err := netip.ParseAddr(a.Addr)
		if err != nil {
			return spec, badFlag(key("announce"), "%q is not an IP address", a.Addr)
		}
		if addr.Is4() != n.Addr().Is4() {
			return spec, badFlag(key("announce"), "%s and %s are of different families", n, addr)
		}
		if !addr.IsGlobalUnicast() && !addr.IsLoopback() {
			return spec, badFlag(key("announce"), "%s is not a unicast address a client can connect to", addr)
		}
		spec.announce = append(spec.announce, proxy.Announce{Network: n.Masked(), Addr: addr})
	}
	return spec, nil
}

// parseMember parses one upstream entry, and its family: 4, 6, or 0 for a
// host name (resolved at each connect).
func parseMember(u upstreamEntry) (pool.Member, int, error) {
	m := pool.Member{Addr: u.Addr, Weight: 1}
	if u.Weight != nil {
		if *u.Weight < 0 || *u.Weight > 1000 {
			return m, 0, fmt.Errorf("%q: weight %d is outside 0-1000", u.Addr, *u.Weight)
		}
		m.Weight = *u.Weight
	}
	host, port, err := net.SplitHostPort(u.Addr)
	if err != nil {
		return m, 0, fmt.Errorf("%q: %v", u.Addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return m, 0, fmt.Errorf("%q: bad port", u.Addr)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		if host == "" {
			return m, 0, fmt.Errorf("%q: no host", u.Addr)
		}
		return m, 0, nil
	}
	m.Addr = netip.AddrPortFrom(a.Unmap(), 0).Addr().String()
	m.Addr = net.JoinHostPort(m.Addr, port)
	if a.Unmap().Is4() {
		return m, 4, nil
	}
	return m, 6, nil
}

// parsePublicAddr checks an address to write into 227 replies.
func parsePublicAddr(flag, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, badFlag(flag, "%q is not an IP address", s)
	}
	if !a.Is4() {
		// 227 can carry only IPv4 (RFC 959); EPSV clients use the
		// address they dialed, whatever this says.
		return a, badFlag(flag, "%s: 227 replies carry IPv4 only", a)
	}
	if !a.IsGlobalUnicast() && !a.IsLoopback() {
		// 0.0.0.0 in a 227 tells the client nothing it can dial,
		// and no DNAT can match it; multicast and broadcast neither.
		return a, badFlag(flag, "%s is not a unicast address a client can connect to", a)
	}
	return a, nil
}
