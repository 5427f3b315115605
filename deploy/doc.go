// Package deploy holds what it takes to run pasvgate in production, and the
// tests that keep it honest. It has no code of its own; operators use the
// files:
//
//	systemd/pasvgate.service   hardened unit: user pasvgate, only CAP_NET_ADMIN
//	                           and CAP_NET_BIND_SERVICE, Type=notify
//	systemd/legacy.conf        drop-in for hosts on iptables-legacy
//	systemd/pasvgate.sysusers  sysusers.d entry for the pasvgate user
//	systemd/xtables-lock.tmpfiles  tmpfiles.d entry for iptables-legacy's lock
//	container/Dockerfile       static binary on Debian slim, non-root, file
//	                           capabilities
//	kubernetes/*.yaml          sidecar (host network, pod network) and gateway
//	                           DaemonSet
//	examples/*.yaml            configs for the three kinds of user
//	ha/keepalived.conf         VRRP for an active/backup pair of gateways
//	                           (one file, both nodes, by --config-id)
//	ha/conntrackd.conf         connection table sync (FTFW) for that pair
//
// The tests prove, on a real kernel in throw-away network namespaces, that
// the privileges these files grant are enough and that each one is needed:
// the real binary runs as an unprivileged uid with only those capabilities,
// installs its chains, maps a passive transfer, cleans up on SIGTERM and
// flushes with `pasvgate rules flush`. They also check every file against
// the binary built the way the Dockerfile builds it: each flag and config
// key used must be one that `pasvgate run -h` prints, and each config must
// start. Kernel tests need root and skip without it; tests that need a tool
// (setpriv, setcap, strace, systemd-analyze, keepalived) skip without it.
// keepalived --config-test checks ha/keepalived.conf; test/ha runs both
// ha/ files in a failover lab.
package deploy
