package pool

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	proxyproto "github.com/pires/go-proxyproto"
)

// ProxyProtocol is the PROXY protocol version a pool sends its servers
// (https://www.haproxy.org/download/3.4/doc/proxy-protocol.txt).
type ProxyProtocol uint8

// PROXY protocol settings.
const (
	ProxyOff ProxyProtocol = iota // no header
	ProxyV1                       // the text header, "PROXY TCP4 ..."
	ProxyV2                       // the binary header
)

// ParseProxyProtocol reads "off" (or ""), "v1" or "v2".
func ParseProxyProtocol(s string) (ProxyProtocol, error) {
	switch s {
	case "off", "":
		return ProxyOff, nil
	case "v1":
		return ProxyV1, nil
	case "v2":
		return ProxyV2, nil
	}
	return 0, fmt.Errorf("unknown PROXY protocol setting %q (want off, v1 or v2)", s)
}

func (pp ProxyProtocol) String() string {
	switch pp {
	case ProxyOff:
		return "off"
	case ProxyV1:
		return "v1"
	case ProxyV2:
		return "v2"
	}
	return "proxy-protocol(" + strconv.Itoa(int(pp)) + ")"
}

// errNoAddrs is returned by Dial, before it connects anywhere, for a Key
// without the addresses a PROXY header needs.
var errNoAddrs = errors.New("PROXY header needs the client's and the local address")

// sessionHeader is the PROXY header of a session: the client as the
// source, the address it connected to as the destination. IPv4-mapped
// addresses (from a dual-stack listener) are sent as IPv4, as the client
// is; zones are dropped, since neither version can carry one.
func sessionHeader(pp ProxyProtocol, k Key) ([]byte, error) {
	if !k.Client.IsValid() || !k.Local.IsValid() {
		return nil, errNoAddrs
	}
	src := net.TCPAddrFromAddrPort(unmap(k.Client))
	dst := net.TCPAddrFromAddrPort(unmap(k.Local))
	h := proxyproto.HeaderProxyFromAddrs(pp.version(), src, dst)
	if !h.Command.IsProxy() {
		return nil, errNoAddrs // unreachable for two valid TCP addresses
	}
	b, err := h.Format()
	if err != nil {
		return nil, fmt.Errorf("formatting PROXY header: %w", err)
	}
	return b, nil
}

// checkHeader is the PROXY header of a health check: v1 "PROXY UNKNOWN",
// v2 LOCAL, both of which say "not a proxied client" to the server.
func checkHeader(pp ProxyProtocol) ([]byte, error) {
	h := &proxyproto.Header{Version: pp.version(), Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	return h.Format()
}

// version is the library's version number of pp (0 for ProxyOff, which
// Format refuses).
func (pp ProxyProtocol) version() byte {
	switch pp {
	case ProxyV1:
		return 1
	case ProxyV2:
		return 2
	}
	return 0
}

// unmap is ap with an IPv4-mapped address as IPv4 and without a zone.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}
