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
//   - TestTLS: FTPS on the control channel with clear data (PROT C)
//     through pasvgate: curl, lftp (also implicit FTPS), ftplib and a raw
//     Go client against vsftpd, ProFTPD, pure-ftpd and test/ftpd that
//     require TLS, with certificates of a PKI made at run time; pasvgate
//     as a TLS offloader, with --tls require, with a wrong
//     --upstream-server-name, and renewing its certificate on SIGHUP;
//     checked by the certificate the client saw, TLS records on both
//     links, and the data flow's DNAT in conntrack (tls_test.go). It
//     runs with the default iptables and backend only, and picks its
//     servers with -interop.tls-servers.
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
