package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// A --listen or --metrics address names one socket per family it covers:
//
//   - an IPv4 address (0.0.0.0:P, 192.0.2.1:P) listens on IPv4 only;
//   - an IPv6 address ([::]:P, [2001:db8::1]:P) listens on IPv6 only
//     (IPV6_V6ONLY), so that 0.0.0.0:P and [::]:P can both be given, as the
//     router sidecar does;
//   - a bare :P listens on both families, as two sockets, 0.0.0.0:P and
//     [::]:P, or on IPv4 alone when the host has no IPv6.
//
// Go's own "tcp" network would open one dual-stack socket for 0.0.0.0 and
// for :P alike, which takes the port in both families and makes a second
// [::]:P listener fail with "address already in use". Two sockets also keep
// what the kernel reports per connection in its own family: SO_ORIGINAL_DST
// and TPROXY work per family, and an IPv4 client is never seen as an
// IPv4-mapped IPv6 address.

// socketAddr is one socket a listen address stands for.
type socketAddr struct {
	network string // "tcp4" or "tcp6"; Go sets IPV6_V6ONLY for "tcp6"
	addr    netip.AddrPort
}

func (s socketAddr) String() string { return s.addr.String() }

// listenSpec is a parsed listen address: what the operator wrote, and the
// sockets it stands for.
type listenSpec struct {
	text    string
	sockets []socketAddr
	// bothFamilies: a bare :P, where a host without IPv6 gets the IPv4
	// socket alone instead of a failed start.
	bothFamilies bool
}

// parseListen parses a --listen or --metrics address. The host, if any, must
// be an IP address: a name could resolve to either family, or change.
func parseListen(s string) (listenSpec, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return listenSpec{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return listenSpec{}, fmt.Errorf("bad port %q", port)
	}
	spec := listenSpec{text: s}
	if host == "" {
		spec.bothFamilies = true
		spec.sockets = []socketAddr{
			{"tcp4", netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p))},
			{"tcp6", netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p))},
		}
		return spec, nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return listenSpec{}, errors.New("host must be an IP address")
	}
	if a.Zone() != "" && !a.IsLinkLocalUnicast() {
		return listenSpec{}, errors.New("a zone is only meaningful on a link-local address")
	}
	// An IPv4-mapped address is an IPv4 listener: written [::ffff:a.b.c.d]
	// it could only ever accept IPv4 clients anyway.
	a = a.Unmap()
	network := "tcp6"
	if a.Is4() {
		network = "tcp4"
	}
	spec.sockets = []socketAddr{{network, netip.AddrPortFrom(a, uint16(p))}}
	return spec, nil
}

// checkListenOverlap refuses two listen addresses that stand for the same
// socket (":21" and "0.0.0.0:21"): the second could never bind, and a
// start-up failure is clearer here, naming both.
func checkListenOverlap(specs []listenSpec) error {
	seen := map[socketAddr]string{}
	for _, sp := range specs {
		for _, so := range sp.sockets {
			if so.addr.Port() == 0 {
				continue // the kernel picks a different port for each
			}
			if prev, ok := seen[so]; ok {
				if prev == sp.text {
					return fmt.Errorf("%q is listed twice", sp.text)
				}
				return fmt.Errorf("%q and %q both listen on %s", prev, sp.text, so)
			}
			seen[so] = sp.text
		}
	}
	return nil
}

// openListeners opens every socket of spec. For a bare :P whose port is 0,
// the IPv6 socket takes the port the kernel gave the IPv4 one, so that :0
// still means one port in both families. On a host without IPv6, :P opens
// its IPv4 socket alone and says so. If any socket fails, none stays open.
func openListeners(ctx context.Context, spec listenSpec, control func(network, address string, c syscall.RawConn) error, log *slog.Logger) (lns []net.Listener, err error) {
	defer func() {
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			lns = nil
		}
	}()
	lc := net.ListenConfig{Control: control}
	port := uint16(0)
	for _, so := range spec.sockets {
		addr := so.addr
		if addr.Port() == 0 && port != 0 {
			addr = netip.AddrPortFrom(addr.Addr(), port)
		}
		ln, err := lc.Listen(ctx, so.network, addr.String())
		if err != nil {
			if spec.bothFamilies && so.network == "tcp6" && noIPv6(err) {
				log.Info("listening on IPv4 only: this host has no IPv6", "listen", spec.text, "err", err)
				continue
			}
			return lns, err
		}
		lns = append(lns, ln)
		port = uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	return lns, nil
}

// noIPv6 reports whether a listen error means the host has no IPv6: the
// kernel lacks the family, or IPv6 is disabled so that [::] is not an
// address of this host.
func noIPv6(err error) bool {
	return errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// upstreamIsListener reports whether an upstream would lead back to one of
// pasvgate's own listeners: the same address and port, or the port of a
// wildcard listener of its family at a loopback address or (isLocal, if
// not nil) another address of this host. Every session would then dial
// pasvgate again, until the file descriptors run out.
func upstreamIsListener(specs []listenSpec, up netip.AddrPort, isLocal func(netip.Addr) bool) (string, bool) {
	a := up.Addr().Unmap()
	for _, sp := range specs {
		for _, so := range sp.sockets {
			l := so.addr.Addr()
			if so.addr.Port() != up.Port() || l.Is4() != a.Is4() {
				continue
			}
			if l == a || l.IsUnspecified() && (a.IsLoopback() || a.IsUnspecified() || isLocal != nil && isLocal(a)) {
				return sp.text, true
			}
		}
	}
	return "", false
}

// metricsExposure is the warning for a --metrics address reachable from
// beyond this host, or "" for a loopback one. /metrics and /healthz show
// session counts and refusals, and /sessions every open session's client
// address, user name and file; with --debug-pprof, profiles show the
// command line too.
func metricsExposure(spec listenSpec, pprof bool) string {
	for _, so := range spec.sockets {
		if !so.addr.Addr().IsLoopback() {
			if pprof {
				return "--debug-pprof serves Go's profiles, which show the command line and every session's addresses, on a non-loopback address, beside /sessions: bind --metrics to 127.0.0.1 or firewall it"
			}
			return "--metrics listens beyond loopback, and its /sessions shows every client's address and user name: firewall it so that only your monitoring reaches it"
		}
	}
	return ""
}

// freebindControl lets a listener bind an address this host does not hold
// (IP_FREEBIND, IPV6_FREEBIND; the option is per family): the virtual
// address of a VRRP pair on the node that is backup now, whose pasvgate
// must already listen there when the address moves to it. Off by default:
// without it a --listen address that is no address of this host (a typo)
// fails the start, where with it the listener would wait for connections
// that never come.
func freebindControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		level, opt := unix.SOL_IP, unix.IP_FREEBIND
		if network == "tcp6" {
			level, opt = unix.SOL_IPV6, unix.IPV6_FREEBIND
		}
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting IP_FREEBIND: %w", serr)
	}
	return nil
}
