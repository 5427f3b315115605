// Package sniff is pasvgate's off-path view of FTP control channels: it
// reads them from a capture (a pcap or pcapng file, or a live AF_PACKET
// capture with gopacket's pure-Go pcapgo) instead of relaying them, and
// reports, per control session, every data address the two sides told
// each other (227, 229, PORT, EPRT), whether that address is one the
// other side can use, and whether a data connection to it was attempted
// and answered.
//
// The `pasvgate audit` command is its caller: an operator runs it on a
// capture taken where clients fail, and learns which servers advertise
// addresses their clients cannot reach.
//
// Control connections are put back together by gopacket's reassembly
// package and read by the same codec the proxy uses (proxy/ftp), so a
// line the proxy would have split, joined or refused is split, joined or
// refused here too. The Extractor, which turns the bytes of control
// connections into sessions, knows nothing of packets: tests and the
// fuzzer feed it directly.
//
// Everything is streaming and bounded: no capture is held in memory, each
// direction of each control connection keeps at most one line, the
// number of connections followed at once is capped (Limits), idle ones
// are flushed on capture time, and a report keeps at most a fixed number
// of sessions and events in full, counting the rest.
package sniff
