package interop

import (
	"net"
	"testing"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestIPv6 runs reverse mode over IPv6 in a lab with both families: one
// pasvgate process listens on 203.0.113.1:21 and [2001:db8:1::1]:21 and
// has one upstream per family; servers listen on both (vsftpd dual-stack).
// Real clients (curl -g with a bracketed URL, lftp, ftplib, whose control
// connection is then IPv6) and the raw drivers use EPSV and EPRT, which
// pasvgate maps with ip6tables rules in its own chains.
//
// The checks are the ones of TestActive, per family: no 2001:db8:2:: or
// 192.0.2.x reaches the client's link, no 2001:db8:1:: or 203.0.113.x the
// server's; the client connects to the 229's port on the address it
// dialed; an EPRT reaches the server as the gateway's 2001:db8:2::1 and a
// port of the data range; the intruders (2001:db8:1::11, and for EPRT
// 2001:db8:2::11) are refused while the server's own address gets in;
// no mapping rule of either family is left. Two raw IPv4 cells (PASV,
// PORT) run through the same process, to show that the second family did
// not cost the first.
func TestIPv6(t *testing.T) {
	revSuite{
		title: "reverse mode over IPv6 (EPSV, EPRT), one process for both families",
		ipv6:  true,
		pgArgs: []string{
			"--listen", lab.GWPublicAddr + ":21",
			"--listen", net.JoinHostPort(lab.GWPublicAddr6, "21"),
			"--upstream", lab.ServerAddr + ":21",
			"--upstream", net.JoinHostPort(lab.ServerAddr6, "21"),
			"--public-addr", lab.GWPublicAddr2,
		},
		waitOn: []string{lab.GWPublicAddr + ":21", net.JoinHostPort(lab.GWPublicAddr6, "21")},
		parts: []revPart{
			{side: side6, cmds: []string{cmdEPSV, cmdEPRT}},
			{side: side4, cmds: []string{cmdPASV, cmdPORT}, clients: []string{"raw"}},
		},
	}.run(t)
}
