// Package probe tests `pasvgate probe` on a real kernel: the built binary
// runs inside a namespace of test/lab's gateway lab against real servers
// (vsftpd, ProFTPD, Pure-FTPd) in each state an operator meets, and the
// tests assert its findings and exit status:
//
//   - healthy: vsftpd probed from its own LAN (the gw namespace): exit 0,
//     every finding ok; with --active, PORT and EPRT work too;
//   - misconfigured: a server advertising an address that is not its own
//     (192.0.2.99, which nothing answers): exit 1, the finding names the
//     address, says it is unreachable, and gives that server's setting
//     (vsftpd pasv_address, ProFTPD MasqueradeAddress, pure-ftpd -P);
//   - data port blocked: iptables in the server's namespace drops its
//     passive range: exit 1, "data port not reachable";
//   - behind pasvgate: the client probes through pasvgate on the gw, which
//     advertises a second public address: exit 0, the address differs from
//     the control address but is reachable (warn, not fail), and AUTH TLS
//     is refused by pasvgate (FTPS off), so the FTPS checks are skipped;
//   - FTPS: vsftpd with ssl_enable=YES and a certificate from a CA made at
//     test time: the certificate verifies with --ca (and not against the
//     system roots, nor for another --server-name), a PROT P listing comes
//     through over a data connection that resumes the control
//     connection's TLS session, and a second one with a new session is
//     refused with vsftpd's default require_ssl_reuse=YES ("requires
//     session reuse") and served with require_ssl_reuse=NO; through
//     pasvgate with --tls allow, the probe sees the gateway's certificate
//     and PROT P listings relayed, with session reuse required only with
//     --tls-require-reuse.
//
// Every case also runs with --json and checks that the JSON carries the
// same findings as the text. The lab uses documentation addresses only:
// 192.0.2.0/24 is the "private" server side, 203.0.113.0/24 the "public"
// side, which is why the probe is judged here by whether an address
// differs from the control address rather than by its class.
//
// The tests need root and skip otherwise; install the servers with
// test/install-deps.sh. Run: go test ./test/probe -v
//
// The package has no code besides its tests.
package probe
