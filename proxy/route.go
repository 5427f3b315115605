package proxy

import (
	"net/netip"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/pool"
)

// Route is one public FTP service of a reverse-mode Server: where the
// sessions of the listeners that lead to it go (its pools), what their
// clients are told (its public address, per client network), and the data
// ports its mappings take. A Server's Settings hold its default route in
// their own fields and its named routes in Settings.Routes.
type Route struct {
	// Pool is the route's servers; Pool6, if set, serves IPv6 clients,
	// so that their data connections are mapped within one family.
	Pool, Pool6 *pool.Pool
	// PublicAddr and PublicAddrFunc are as in Settings. When both are
	// unset, a named route takes the Settings' own.
	PublicAddr     netip.Addr
	PublicAddrFunc func() netip.Addr
	// Announce, per client network, is the address written into the 227
	// replies of clients from that network (the first that holds the
	// client wins), in place of the public address: a LAN client is told
	// the gateway's LAN address, an internet client the public one.
	Announce []Announce
	// Ports is the range the route's data ports are drawn from; zero
	// means the NAT table's own range.
	Ports nat.PortRange
}

// Announce is one entry of Route.Announce.
type Announce struct {
	// Network holds the clients the entry applies to.
	Network netip.Prefix
	// Addr is what they are told, and the address their data connections
	// come to: one of the gateway's, reachable from Network.
	Addr netip.Addr
}

// route returns the route called name ("" is the default route, which
// always exists, if without pools in transparent mode), with what it
// inherits from the Settings filled in, and whether it exists.
func (st *Settings) route(name string) (Route, bool) {
	if name == "" {
		return Route{
			Pool: st.Pool, Pool6: st.Pool6,
			PublicAddr: st.PublicAddr, PublicAddrFunc: st.PublicAddrFunc,
			Announce: st.Announce, Ports: st.Ports,
		}, true
	}
	rt, ok := st.Routes[name]
	if !ok {
		return Route{}, false
	}
	if !rt.PublicAddr.IsValid() && rt.PublicAddrFunc == nil {
		rt.PublicAddr, rt.PublicAddrFunc = st.PublicAddr, st.PublicAddrFunc
	}
	return rt, true
}

// poolFor returns the pool a client of address a is sent to.
func (rt *Route) poolFor(a netip.Addr) *pool.Pool {
	if a.Is6() && rt.Pool6 != nil {
		return rt.Pool6
	}
	if rt.Pool == nil {
		return rt.Pool6
	}
	return rt.Pool
}

// announced returns the Announce address for a client of address a, if
// an entry holds it.
func (rt *Route) announced(a netip.Addr) (netip.Addr, bool) {
	for _, an := range rt.Announce {
		if an.Network.Contains(a) {
			return an.Addr, true
		}
	}
	return netip.Addr{}, false
}

// publicAddr is the route's address to advertise in 227 replies now: the
// followed interface's or the static one (either may be invalid).
func (rt *Route) publicAddr() netip.Addr {
	if rt.PublicAddrFunc != nil {
		return rt.PublicAddrFunc()
	}
	return rt.PublicAddr
}

// staticPools gives Settings that name their servers by address alone
// (Upstream, Upstream6) a pool of one for each, without health checks:
// every session then picks its server the same way.
func staticPools(st *Settings) {
	if st.Pool == nil && st.Upstream != "" {
		st.Pool = pool.New(pool.Config{Name: "default", Members: []pool.Member{{Addr: st.Upstream, Weight: 1}}}, nil)
	}
	if st.Pool6 == nil && st.Upstream6 != "" {
		st.Pool6 = pool.New(pool.Config{Name: "default6", Members: []pool.Member{{Addr: st.Upstream6, Weight: 1}}}, nil)
	}
}
