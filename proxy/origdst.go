package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// Socket options of netfilter's conntrack for REDIRECTed connections
// (linux/netfilter_ipv4.h, linux/netfilter_ipv6/ip6_tables.h).
const (
	soOriginalDst      = 80 // SO_ORIGINAL_DST, level SOL_IP
	ip6tSoOriginalDst  = 80 // IP6T_SO_ORIGINAL_DST, level SOL_IPV6
	solIPv6            = syscall.IPPROTO_IPV6
	sockaddrInet6Bytes = 28
)

// originalDst returns where a REDIRECTed connection was going before the
// kernel turned it to pasvgate's listener. It reads the socket option
// through SyscallConn().Control, which leaves the connection in Go's
// poller (conn.File() would not).
func originalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	v4 := addrPortOf(c.LocalAddr()).Addr().Is4()
	var ap netip.AddrPort
	var oerr error
	cerr := rc.Control(func(fd uintptr) {
		var buf [sockaddrInet6Bytes]byte
		level, opt := syscall.SOL_IP, soOriginalDst
		if !v4 {
			level, opt = solIPv6, ip6tSoOriginalDst
		}
		size := uint32(len(buf))
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			oerr = errno
			return
		}
		ap, oerr = parseSockaddr(buf[:size])
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", cerr)
	}
	if oerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", oerr)
	}
	return ap, nil
}

// parseSockaddr decodes a struct sockaddr_in or sockaddr_in6 as the kernel
// wrote it: family in host order, port and address in network order.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, errors.New("short sockaddr")
	}
	family := binary.NativeEndian.Uint16(b[0:2])
	port := binary.BigEndian.Uint16(b[2:4])
	switch {
	case family == syscall.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case family == syscall.AF_INET6 && len(b) >= 24:
		a := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(a, port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("sockaddr family %d", family)
}
