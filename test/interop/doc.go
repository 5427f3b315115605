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
// The tests need root and skip otherwise; install the programs with
// test/install-deps.sh. Run, for example:
//
//	go test ./test/interop -run TestMatrix -v
//	go test ./test/interop -run TestMatrix -v -args -interop.modes=direct -interop.servers=vsftpd
//	PASVGATE_INTEROP_MODES=direct,static go test ./...
//
// The package has no code besides its tests and the jlclient command.
package interop
