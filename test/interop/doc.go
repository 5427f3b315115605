// Package interop holds the interoperability matrix: real FTP servers
// (vsftpd, pure-ftpd, proftpd, test/ftpd) times real clients (curl, lftp,
// Python ftplib, jlaffaye/ftp, and a raw Go driver) times {PASV, EPSV} times
// {download, upload, listing}, run in the netns lab of test/lab in three
// modes:
//
//   - direct: the client on the server's LAN, nothing in between. Proves
//     every server launcher, client driver and the capture.
//   - static: a classic static NAT on the gateway, the server configured to
//     announce the public address. The reference for every check of the
//     pasvgate cells except the rule checks, and the positive control of
//     the intruder probe (a static DNAT admits anyone).
//   - pasvgate: pasvgate on the gateway, the server announcing its private
//     address. The cells the suite exists for.
//
// Each cell checks what a user gets (sha256 of the download, of the upload
// as stored on the server, the listing), that the client used the mode of
// the cell and connected exactly where the 227/229 said, that no 192.0.2.x
// reached the client's link, and, through pasvgate, that an intruder on the
// client's network could not use the data port and that no mapping is left
// once the transfer is over.
//
// More suites run pasvgate cells only (they skip when the pasvgate
// mode is not selected), each printing a table with every cell's time:
//
//   - TestActive: reverse mode, active FTP (PORT, EPRT) against vsftpd's
//     default same-address check, with a capture on each side of the
//     gateway and intruders on both networks (active_test.go);
//   - TestIPv6: reverse mode over IPv6 (EPSV, EPRT) with one pasvgate for
//     both families (ipv6_test.go);
//   - TestBounce: PORT/EPRT bounce attempts and wrong-family commands,
//     refused and never forwarded (bounce_test.go);
//   - TestIgnore227Address: curl and Python ftplib with their defaults,
//     which ignore the 227's address and connect to the one they dialed,
//     through pasvgate announcing its second public address
//     (ignore227_test.go);
//   - TestVerbSmuggling: PORT/EPRT with the verb ended by a TAB, VT or FF,
//     sent to ProFTPD, pure-ftpd and vsftpd directly (what each server
//     makes of them) and through pasvgate (refused, never forwarded), and
//     a TAB-separated PORT that works through pasvgate on every server
//     (smuggle_test.go);
//   - TestTLS: FTPS through pasvgate, with clear data (PROT C, the
//     kernel path) and protected data (PROT P, relayed by pasvgate):
//     curl (--ssl-reqd for PROT P, and implicit ftps://), lftp (also
//     implicit FTPS, and active mode with PROT P), ftplib, jlaffaye/ftp
//     (PROT P) and a raw Go client against vsftpd, ProFTPD, pure-ftpd and
//     test/ftpd that require TLS, then require protected data too (vsftpd
//     and ProFTPD also session reuse, by default), with certificates of
//     a PKI made at run time; pasvgate as a TLS offloader, with --tls
//     require, with a wrong --upstream-server-name, renewing its
//     certificate on SIGHUP, with an intruder first on a relay's port,
//     with --tls-require-reuse, and with --upstream-tls always for a
//     clear curl against ProFTPD, which refuses PROT C (its data relayed,
//     clear on the client's side); ftplib's PROT P directly against
//     vsftpd and ProFTPD as the negative control of session reuse (it
//     does not resume: refused there, working through pasvgate).
//     Checked by the certificate the client saw, TLS records on both
//     links (control, and PROT P data), the data flow in conntrack (a
//     DNAT for PROT C, accepted by the gateway itself for PROT P), and
//     pasvgate's --metrics (transfers by path, relayed bytes, refusals)
//     (tls_test.go, protp_test.go). It runs with the default iptables
//     and backend only, and picks its servers with -interop.tls-servers.
//
// Their servers and clients are chosen with -interop.active-servers
// (default vsftpd) and -interop.active-clients. Transparent mode (the
// router sidecar) is tested in test/sidecar.
//
// The tests need root and skip otherwise; install the programs with
// test/install-deps.sh. Run, for example:
//
//	go test ./test/interop -run TestMatrix -v
//	go test ./test/interop -run TestMatrix -v -args -interop.modes=direct -interop.servers=vsftpd
//	go test ./test/interop -run 'TestActive|TestIPv6|TestBounce|TestVerbSmuggling' -v
//	go test ./test/interop -run 'TestTLS' -v -args -interop.tls-servers=vsftpd
//	PASVGATE_INTEROP_MODES=direct,static go test ./...
//
// The package has no code besides its tests and the jlclient command.
package interop
