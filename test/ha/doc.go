// Package ha tests pasvgate as an active/backup pair on a real kernel:
// two gateway namespaces share the virtual addresses 203.0.113.100 (public)
// and 192.0.2.100 (private) under keepalived (VRRP), conntrackd copies
// their connection tracking tables over a third link, and pasvgate runs on
// both with --freebind on the virtual address. The tests kill the master,
// by its links or its processes, and measure how soon the backup serves
// new sessions, whether a transfer in flight keeps flowing, what curl and
// lftp do when their control connection dies, and that no state is left
// on either node afterwards.
//
// keepalived and conntrackd run from the Debian packages
// (test/install-deps.sh) with deploy/ha's example files, so the examples
// are what is tested. Every namespace is named pgha-<pid>-<n>-<role>, and
// leftovers of dead runs are swept by that prefix.
package ha
