// Package hostile is pasvgate's hostile-input and fault catalogue (issue
// 12): the real binary in a netns lab, fed what an attacker on either side
// of it would send, and broken under load the ways a gateway breaks.
//
// The lab is netns.GatewayLab's three namespaces (prefix "hst"): clients
// on 203.0.113.0/24, pasvgate on the gateway (nftables backend, short
// --idle-timeout and --login-timeout, --metrics), and on the server side a
// scriptable hostile FTP server at 192.0.2.10:21. A session whose first
// line, sent before any greeting, is "USER hst-NAME" runs that entry's
// script; any other session is spliced to the real test/ftpd server at
// 192.0.2.10:2121, and what the real server receives is recorded, so an
// entry can check that a smuggled command never reached it. A canary
// client downloads a 4 MiB file through pasvgate all along, from its own
// address, and checks it byte for byte.
//
// Each entry gives the input or the fault, the reply the peer must get,
// and the invariants checked afterwards: no rule or nftables element left
// (`pasvgate rules list` empty once the session ends), pasvgate's VmRSS
// (from /proc/PID/status, sampled every 50ms) under a bound of 64 MiB, and
// the canary unaffected: no failed canary transfer while the entry ran
// (faults excepted: the canary must work once they are over) and one more
// after it. Each entry dials from its own address (203.0.113.100 and up),
// so per-address limits of one entry never touch another.
//
// Client side, against the real server:
//
//	C01 PORT<TAB>192,0,2,99,0,22            500, never reaches the server
//	C02 EPRT<TAB>|1|192.0.2.99|22|          500, never reaches the server
//	C03 port<SP><SP>... (case, spaces)      500
//	C04 PoRt<VT>...                         500
//	C05 P<IAC NOP>ORT ...                   500
//	C06 <SP>PORT ... (no verb)              500
//	C07 NOOP<NUL>PORT ...                   500
//	C08 NOOP<CR>PORT ...                    500
//	C09 <IAC WILL ECHO>PORT ...             500
//	C10 PORT own address, port 21           500
//	C11 PORT another client's address       500
//	C12 EPRT |2|...| over IPv4              522
//	C13 EPSV ALL, then PORT                 503
//	C14 AUTH TLS                            534
//	C15 PORT before login                   530, no mapping at any time
//	C16 EPRT before login                   530, no mapping at any time
//	C17 PASV before login                   530, no mapping at any time
//	C18 500 PORTs before login (20 a batch) 530 x500, no mapping at any time
//	C19 31 pipelined PORT+RETR, transfers
//	    held (the client drops the SYNs)    at most one mapping of the session live
//	C20 PASV from 5 sessions of one address 227 x4, then 425 (--max-mappings-per-ip 4)
//	C21 default max-sessions-per-ip + 1     421 for the extra (non-zero defaults, --max-sessions too)
//	C22 PASV, RETR, no data connection      421 at --idle-timeout, closed
//	C23 5000 bytes without a newline        500 at once
//	C24 1 MiB without a newline             500, then closed
//	C25 2 MB of LPSV, server not greeting   421, closed, RSS bounded
//	C26 4 MB of NOOP, replies never read    closed (421 if readable), RSS bounded
//	C27 slowloris before login (20)         421 at --login-timeout, closed
//	C28 REIN after the login window         a reply, and one to the next command
//	C29 IAC IP, IAC DM (urgent), ABOR       ABOR answered
//
// Server side, the hostile server's scripts:
//
//	S01 never greets, never answers         421 at --login-timeout, closed
//	S02 closes mid-line ("220 Wel")         421, closed
//	S03 closes mid-reply ("220-first")      closed
//	S04 closes mid-227 ("227-first")        421, closed
//	S05 endless multi-line 227 (32 MB)      4xx, closed, RSS bounded
//	S06 endless multi-line 229 (32 MB)      4xx, closed, RSS bounded
//	S07 16 MB reply line, then 200          200, RSS bounded
//	S08 8 KB reply line, then 200           200
//	S09 227 split in 3 segments             227 public, data flows
//	S10 227 twice for one PASV              227 public, then 425; one mapping
//	S11 227 after the client has gone       no mapping left
//	S12 227 with no command                 425 or nothing, no mapping; PASV then works
//	S13 200 with no command                 200; PASV then works
//	S14 227 naming another host             425, no mapping
//	S15 227 with an octet of 300            425, no mapping
//	S16 227 with a NUL in the address       425, no mapping
//	S17 227 with a bare CR, second address  227 public or 425; no mapping to it
//	S18 229 with port 70000                 425
//	S19 ABOR after Telnet Synch             226 (DM as urgent data: TestSynchSentUrgent, TestAsyncAbort)
//	S20 PASV never answered (stall)         421 at --idle-timeout, closed
//	S21 one-shot pinhole (nftables)         second connection refused; the server accepted one
//	S22 one-shot pinhole (iptables-nft)     the same
//	S23 unsolicited multi-line reply while
//	    pasvgate refuses LPSV               211, then pasvgate's 502, then 200
//
// Faults:
//
//	F01 kill -9 under load                  restart sweeps the leftovers, serves
//	F02 server down                         421 for the open session and a new one
//	F03 server stalling (SIGSTOP)           421 at --idle-timeout
//	F04 xtables lock held                   425, then 227 once free
//	F05 nftables batch refused              425, the session goes on, then 227
//	F06 nft flush ruleset mid-transfer      the next transfer works (the one in flight
//	                                        is cut by the kernel: its NAT hooks go
//	                                        with the last nat chain)
//	F07 iptables -F mid-transfer            transfer byte-exact, next one works
//	F08 public address changed mid-transfer transfer byte-exact, next 227 new address
//	F09 SIGHUP under load                   every transfer byte-exact
//
// Items of the issue that no peer sees from outside the process (R01-R14:
// the conntrack flush, removal retries, the destination policy, reloads,
// shutdown, a second instance, configuration checks, probe's password,
// age_ms, ...) are rows of the table too, naming the tests that prove them;
// R05 (transparent mode always sends a canonical 227) has none yet.
//
// An entry whose run restarts pasvgate with other flags, or after which
// pasvgate's RSS was over the bound (the Go runtime keeps memory it grew
// to), is followed by a restart with the catalogue's own flags.
//
// TestCatalogue prints the table (input or fault, reply wanted and got,
// invariants, peak RSS, result) and the RSS under the worst inputs. It
// needs root and skips otherwise:
//
//	go test ./test/hostile -run TestCatalogue -v
package hostile
