// Package scaleout tests pasvgate active/active (issue 16, item 2): two or
// three pasvgate nodes serving one FTP service address, 203.0.113.100:21,
// behind a router that spreads connections across them, on a real kernel,
// in network namespaces it creates (prefix pgaa-) and deletes.
//
//	client ns                router ns                node i ns                      server ns
//	c0 203.0.113.10-41/26 -- r0 203.0.113.1/26
//	                          n<i> 198.51.100.4i+1/30 -- up0 198.51.100.4i+2/30
//	                                                    lo 203.0.113.100/32 (service)
//	                                                       198.51.100.101+i/32 (announced)
//	                                                    dn0 192.0.2.1+i/24 ----------- br0 192.0.2.10/24
//
// Every node holds the service address, listens on it, and announces in
// its 227 replies an address of its own that the router routes to it
// alone, so a PASV data connection reaches the node that holds its
// mapping however the router spreads the service address. Each node
// forwards under FORWARD policy DROP and SNATs data connections to its
// own address, which the server (test/ftpd with its same-IP check) sees.
//
// The router spreads the service address in one of three ways: an ECMP
// route with the L4 hash (fib_multipath_hash_policy=1), the same route
// with the L3 hash (policy 0, addresses only), or an nftables balancer
// that picks a node from jhash(source address), keeps the choice in a
// conntrack mark and routes by it. EPSV replies carry only a port, so an
// EPSV data connection goes to the service address and is spread like a
// control connection: it reaches the session's node only if the router
// sends every connection of one client address to one node.
//
// The tests:
//
//   - TestSpread: sessions from 32 client addresses spread across the
//     nodes, PASV and EPSV, every download byte-exact, under the
//     source-hash balancer (three nodes) and under ECMP with the L3 hash.
//   - TestEPSVUnderL4Hash: ECMP with the L4 hash: every PASV transfer
//     works, and EPSV data connections reach the wrong node a measured
//     fraction of the time, which is why the design needs a hash on the
//     source address.
//   - TestDrain: a node taken out of the balancer and sent SIGTERM: its
//     transfer in progress completes byte-exact, its idle session gets
//     421, new sessions all go to the other node.
//   - TestNexthopRemovalBreaksSessions: why the drain goes through the
//     balancer: removing a node's ECMP nexthop moves its open control
//     connections to another node, which resets them.
//   - TestDuplicatePublicAddr: both nodes announce the service address
//     itself under the L4 hash: data connections reach the wrong node,
//     counted and asserted.
//
// Run them with
//
//	go test -count=1 -v ./test/scaleout
//
// Everything needs root; without it the tests skip.
package scaleout
