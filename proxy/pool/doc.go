// Package pool picks the FTP server a session goes to, from a group of
// servers (a pool), and connects to it.
//
// Package proxy holds one Pool per route and address family: each new
// session calls Dial, the metrics and the live view call Status, a reload
// calls Update, and one goroutine per pool runs Run for the active health
// checks. Dial is called from every session's goroutine at once, so all
// state lives behind one mutex held only for bookkeeping, never across I/O.
//
// # Choosing a server
//
// Every policy ranks the members with weight above zero: first the ones
// that are Up in the policy's order of preference, then the Down ones in
// the same order. Dial tries them in that order, so a server that refuses
// is skipped within the same Dial and the client never sees it while
// another server answers; Down members are a last resort, tried only when
// no Up member answered, because a health check can be wrong (or too slow)
// and a slow answer is better than none. Drained members (weight 0) are
// never tried: draining is an operator's decision, not a guess.
//
//   - RoundRobin is smooth weighted round-robin (as in nginx): each pick
//     adds every member's weight to its running score, takes the highest,
//     and subtracts the total from the winner. Over any run of total-weight
//     picks each member gets exactly its weight, and the heavy member's
//     turns are spread out rather than given in a burst, so a weight-5
//     server does not get five logins in a row.
//   - LeastConn takes the fewest open sessions per unit of weight, counting
//     connections still being dialled so that a burst of sessions does not
//     all land on the one member that looked idle. Ties go in smooth
//     round-robin order among the tied members, so an idle pool still
//     spreads by weight.
//   - Source and User use weighted rendezvous hashing (highest random
//     weight): each member scores weight / -ln(h), h a hash of the key and
//     the member's address in (0, 1), and the highest score wins. There is
//     no ring or table to keep: when a member goes down or is drained only
//     the keys it won move, each to its own next-best member, and when it
//     returns it takes back exactly those keys. Source keys by
//     nat.ClientKey (an IPv4 address, an IPv6 /64), the unit in which
//     pasvgate counts clients elsewhere, because one IPv6 host may use many
//     addresses of its /64. The hash is FNV-1a with a 64-bit finalizer, not
//     a per-process seed, so a restart keeps every client on its server.
//
// # Health
//
// A member is marked Down at once when a connect to it fails (refused,
// unreachable, timed out): that is certain evidence, and waiting for Fall
// failed checks would send more clients to it. Failures that are this
// host's own (out of file descriptors or local ports, the caller's context
// ended) mark nothing and end the Dial, since every other member would fail
// the same way. The active check (Run) connects and reads the server's
// greeting: a server whose process is wedged or full still has its
// connections accepted by the kernel, and says so only in its greeting
// (421) or by staying silent, so a bare connect would keep it in rotation.
// Fall consecutive failures take a member out and Rise successes bring it
// back, so one lost packet does not flap it. Checks of one round run at
// once, one goroutine per member, each bounded by Health.Timeout, and
// rounds start Health.Interval apart (not Interval after the last ended),
// so that with the defaults (2 s, 2 s, fall 2, rise 2) a blackholed server
// is out after two timed-out checks, within about 6 s, and a recovered one
// back after two good ones, within about 4 s of its first good check: both
// inside the 10 s operators are promised. With checks off, a member a
// connect took down is tried again after 10 s (optimistically Up).
//
// # PROXY protocol
//
// With ProxyProtocol set, Dial writes the header (github.com/pires/go-proxyproto)
// before it returns, carrying Key.Client as the source and Key.Local as the
// destination. A Key without both addresses is an error rather than a
// LOCAL header: a LOCAL header tells the server to use the connection's own
// source, pasvgate's address, which a server may trust more than the client
// it stands for. Health checks send v1 "PROXY UNKNOWN" or a v2 LOCAL header,
// which a server requiring the header accepts and reads as "not a proxied
// client", so checks neither fail on such a server nor appear in its logs
// as a client of pasvgate's address.
package pool
