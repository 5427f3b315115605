package sniff

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// classify fills in what is known about ev's address and data connection
// and lists its problems. It is run once the session has ended (or the
// event left the listed ones), when no more of its data connection can
// appear. It is idempotent.
func classify(ev *DataAddr, client, server netip.AddrPort) {
	ev.Problems = nil
	// own is the announcing side's address on the control connection,
	// peer the side that must connect to the announced address.
	own, peer, other := server.Addr().Unmap(), client.Addr().Unmap(), "client"
	active := ev.Kind == KindPORT || ev.Kind == KindEPRT
	if active {
		own, peer, other = peer, own, "server"
	}
	what := ev.Kind + " reply"
	if active {
		what = ev.Kind + " command"
	}
	add := func(code ProblemCode, format string, args ...any) {
		ev.Problems = append(ev.Problems, Problem{Code: code, Detail: fmt.Sprintf(format, args...)})
	}

	if ev.Error != "" {
		ev.Own, ev.Private, ev.Unroutable = false, false, false
		add(ProblemMalformed, "the %s does not parse: %s", what, ev.Error)
	} else {
		a := ev.Addr.Addr().Unmap()
		// RFC 1123 reading, and the proxy's: 0.0.0.0 in a 227 means the
		// control connection's address.
		unspecified := ev.Kind == KindPASV && a.IsUnspecified()
		ev.Own = unspecified || a == own
		ev.Private = isPrivate(a)
		ev.Unroutable = !unspecified && isUnroutable(a)
		if !ev.Own {
			if active {
				add(ProblemOtherHost, "the client at %s names %s, not its own address (a client behind NAT, or an FTP bounce)", own, a)
			} else {
				add(ProblemOtherHost, "the server at %s advertises %s, not its own address", own, a)
			}
		}
		if ev.Private && !ev.Unroutable && !isPrivate(peer) && !isUnroutable(peer) {
			add(ProblemPrivate, "%s is a private address, which the %s at %s cannot reach", a, other, peer)
		}
		if ev.Unroutable {
			add(ProblemUnroutable, "%s is not an address the %s can connect to", a, other)
		}
	}

	// 425 and 426 say the data connection failed; other errors (550 no
	// such file, 530 not logged in) are about the transfer, not the
	// address, and a server may refuse before any connection is made.
	dataFailed := ev.TransferReply == 425 || ev.TransferReply == 426
	d := ev.Data
	switch {
	case d.Reset:
		add(ProblemRefused, "the connection from %s to %s was refused (RST): nothing listens there", d.From, d.To)
	case d.SYNs > 0 && !d.SYNACK:
		add(ProblemNoAnswer, "nothing answered %s from %s to %s: a firewall drops it, or no host has that address",
			plural(d.SYNs, "connection attempt"), d.From, d.To)
	case d.SYNs == 0 && ev.Error == "" && ev.Transfer != "" && ev.Reply < 400 && (ev.TransferReply < 400 || dataFailed):
		connector := "the client"
		if active {
			connector = "the " + other
		}
		add(ProblemNoConnection, "%s was sent, but %s never connected to %s in this capture", ev.Transfer, connector, ev.Addr)
	}
	if ev.Reply >= 400 {
		add(ProblemRejected, "the server refused the %s with %d", ev.Kind, ev.Reply)
	}
	if dataFailed {
		add(ProblemTransferFailed, "%s failed with %d: the server could not use the data connection", ev.Transfer, ev.TransferReply)
	}
}

// hasAddressProblem reports whether ev's address itself is wrong, as
// opposed to the network failing to carry a connection to it.
func hasAddressProblem(ev *DataAddr) bool {
	for _, p := range ev.Problems {
		switch p.Code {
		case ProblemOtherHost, ProblemPrivate, ProblemUnroutable, ProblemMalformed:
			return true
		}
	}
	return false
}

// cgnat is RFC 6598's shared address space: a carrier's NAT, as
// unreachable from outside as RFC 1918.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPrivate reports an address that only its own network can reach.
func isPrivate(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsPrivate() || (a.Is4() && cgnat.Contains(a))
}

// isUnroutable reports an address no peer can connect to at all.
func isUnroutable(a netip.Addr) bool {
	a = a.Unmap()
	return !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() ||
		a.IsLinkLocalUnicast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) ||
		(a.Is4() && a.As4()[0] == 0)
}

func itoa(n int) string { return strconv.Itoa(n) }

// plural says "1 thing" or "n things", for the nouns of this package
// ("reply" gives "replies", "address" gives "addresses").
func plural(n int, thing string) string {
	switch {
	case n == 1:
	case strings.HasSuffix(thing, "y"):
		thing = thing[:len(thing)-1] + "ies"
	case strings.HasSuffix(thing, "s"):
		thing += "es"
	default:
		thing += "s"
	}
	return strconv.Itoa(n) + " " + thing
}

// pluralf says "n things rest".
func pluralf(n int, thing, rest string) string { return plural(n, thing) + " " + rest }
