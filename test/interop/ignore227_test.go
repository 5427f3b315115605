package interop

import (
	"testing"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestIgnore227Address runs clients that ignore the address of a 227 and
// connect their data connection to the address they dialed, with the
// 227's port: curl with its default since 7.74 (--ftp-skip-pasv-ip, spelt
// out) and Python ftplib with its default trust_server_pasv_ipv4_address
// = False. pasvgate announces its second public address (--public-addr
// 203.0.113.2) while the clients dial the first (203.0.113.1), so each
// cell fails unless the mapping admits the client on the dialed address
// too.
//
// Each cell downloads a file and checks its SHA-256; that the 227
// announced --public-addr; that the client's data connection went to the
// dialed address with the announced port, and never to the announced
// address (the client-side capture); that an intruder on the client's
// network could not connect to the dialed address and port while the
// transfer ran; and that no mapping is left afterwards. The cells are
// few on purpose: one download per client, on the suite's servers.
func TestIgnore227Address(t *testing.T) {
	revSuite{
		title: "reverse mode, clients that ignore the 227 address (IPv4)",
		pgArgs: []string{
			"--listen", lab.GWPublicAddr + ":21",
			"--upstream", lab.ServerAddr + ":21",
			"--public-addr", lab.GWPublicAddr2,
		},
		waitOn: []string{lab.GWPublicAddr + ":21"},
		parts: []revPart{{side: side4, cmds: []string{cmdPASV}, clients: []string{"curl", "ftplib"},
			ops: []lab.Op{lab.Get}, ignore: true}},
	}.run(t)
}
