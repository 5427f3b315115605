// Package sidecar tests pasvgate's transparent mode on a real kernel: pasvgate
// as a sidecar on a Linux router (test/lab's NewRouter topology), with no
// upstream, intercepting the FTP connections that LAN clients make to servers
// on the internet side, by REDIRECT and by TPROXY (`pasvgate run --intercept
// lan0 --intercept-method redirect|tproxy`).
//
// Against vsftpd with its default configuration, the suite runs active-mode
// downloads, uploads and listings (PORT and EPRT) with curl, lftp, Python
// ftplib and a raw Go client, on a router that masquerades its LAN and on one
// that routes it; passive mode through a server advertising its own address
// (227 and 229 pass unchanged) and through one advertising an address that is
// not its own (vsftpd pasv_address=192.0.2.99: pasvgate rewrites the 227 to
// the server's address and logs it). Each cell checks what the user gets,
// where every connection went on both of the router's links, that no LAN
// address reached the server's link, that only the server could use an
// active-mode port, and that no mapping is left. Then it checks that
// connections addressed to the router itself are refused without a loop, that
// stopping pasvgate removes its interception (policy routing included), and
// that `pasvgate rules flush` leaves the router's own firewall exactly as it
// was.
//
// Every lab runs once per variant, all labs in parallel: with pasvgate's
// iptables backend once per iptables binary (-sidecar.iptables, default
// both iptables-nft and iptables-legacy), and with its nftables backend
// (`--backend nftables`) once, on a router whose own firewall is
// iptables-nft's and holds its own accept for pasvgate's mark under a
// forward policy of drop, as the README's --host-firewall leave asks, so
// pasvgate adds none (-sidecar.backends, default both backends). The
// nftables labs check the router's `nft list ruleset` where the iptables
// labs check iptables-save, and their namespaces are named pgscn-.
//
// The tests need root and skip otherwise; install the programs with
// test/install-deps.sh. Run, for example:
//
//	go test ./test/sidecar -v
//	go test ./test/sidecar -v -args -sidecar.methods=tproxy -sidecar.iptables=/usr/sbin/iptables-legacy
//	go test ./test/sidecar -v -args -sidecar.backends=nftables
//
// The package has no code besides its tests.
package sidecar
