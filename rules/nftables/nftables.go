// Package nftables is pasvgate's nftables backend: a rules.Backend that
// speaks netlink to nf_tables directly (google/nftables; no nft binary) and
// installs a mapping in microseconds, whatever the number of mappings.
//
// Its callers are package nat, through rules.Backend, which installs a
// mapping when the proxy rewrites a 227/229 or PORT/EPRT and removes it
// when the transfer ends, and the `pasvgate rules list|flush` commands.
// Available tells `--backend` whether the kernel can run it.
//
// # What it puts in the kernel
//
// Two tables named TableName, one in family ip and one in family ip6, and
// nothing outside them. Each holds two maps, a set and four base chains
// with static rules (ip6 is the same with ip6 types):
//
//	table ip pasvgate {
//		map dnat_map { ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout }
//		map snat_map { ipv4_addr . ipv4_addr . inet_service . inet_service : ipv4_addr; flags timeout }
//		set unused_set { ipv4_addr . inet_service; flags dynamic,timeout }
//		chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//			meta l4proto tcp ip saddr . tcp dport @unused_set ip saddr . ip daddr . tcp dport @dnat_map ct mark set ct mark | MARK
//			meta l4proto tcp ip saddr . tcp dport @unused_set dnat ip to ip saddr . ip daddr . tcp dport map @dnat_map }
//		chain output { type nat hook output priority dstnat; the same two rules }
//		chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//			meta l4proto tcp ct mark & MARK == MARK delete @unused_set { ip saddr . ct original proto-dst }
//			meta l4proto tcp ct mark & MARK == MARK snat ip to ip saddr . ip daddr . tcp dport . ct original proto-dst map @snat_map }
//		chain input { type nat hook input priority srcnat; policy accept;
//			the delete rule of postrouting }
//	}
//
// The rules never change while pasvgate runs. A mapping is two or three
// elements, added with one netlink batch: (Source . Public address .
// Public port) -> Target in dnat_map, (Source . Public port) in
// unused_set, and, when the mapping has SNAT, (Source . Target . Public
// port) -> SNAT in snat_map. A mapping with a Dialed address has one more
// dnat_map element, (Source . Dialed . Public port) -> Target: the
// unused_set and snat_map keys hold no gateway address, so both
// addresses share them, and the first connection to either uses the
// mapping up for both. No rule is added per transfer.
//
// A mapping admits one connection, the first, like the kernel FTP
// helper's expectations: the prerouting and output rules DNAT and mark
// only while the mapping's unused_set element is there, and the kernel
// deletes it itself with the first packet of the first connection, in the
// nat chains of postrouting and input, where that packet has passed the
// forward hook and its NAT is decided. The connection keeps its NAT in
// conntrack; a second one from the same client is not DNATed and is
// refused by the gateway itself. See consumeExprs. Remove deletes the
// unused_set element (already gone for a used mapping, which is not an
// error), then the map elements.
//
// Every element carries a comment "id=ID created=UNIX" (List rebuilds the
// mappings from them, also after a restart, so Created survives) and a
// kernel timeout of Config.Timeout: the kernel deletes a mapping nobody
// removed, for instance because pasvgate died. The timeout bounds only how
// long after Install the data connection may be opened, as nat's connect
// timeout does: NAT is decided on a connection's first packet and kept in
// conntrack, so a connection opened in time keeps flowing after its
// elements expire or are removed. A client that connects later than
// Timeout after the 227 finds nothing and is refused; set Timeout to nat's
// ConnectTimeout (both default to 30 s). Removing a mapping that expired is
// not an error.
//
// # The host's firewall
//
// pasvgate's tables accept nothing, because in nftables they cannot
// usefully: every base chain on a hook sees the packet, whatever table it
// is in, an accept ends only its own chain, and a drop anywhere is final.
// So under a host firewall whose forward chain drops by default
// (iptables-nft, whose FORWARD is itself a base chain in table ip filter;
// iptables-legacy; or native nftables), nothing in pasvgate's own tables
// can let a data connection through. (The iptables backend can, only
// because it puts a jump into the host's FORWARD chain.) What this backend
// does instead is set Config.CtMark on the conntrack entry of every
// connection a mapping DNATs, on its first packet, in prerouting, before
// any forward chain runs. The host firewall then needs one static rule,
// early in its forward chain, that accepts the mark; it covers both
// directions and the connection's whole life, so admitted connections
// also keep flowing after their mapping is gone. This package does not
// add it: package rules/hostfw does (pasvgate run, --host-firewall auto),
// and puts it back after a firewall reload; Repair puts back this
// backend's own tables when the reload deleted them too. By hand:
//
//	iptables  -I FORWARD -m connmark --mark 0x10000000/0x10000000 -j ACCEPT   (-nft or -legacy alike;
//	ip6tables -I FORWARD -m connmark --mark 0x10000000/0x10000000 -j ACCEPT    both families)
//	nft insert rule inet filter forward ct mark and 0x10000000 == 0x10000000 accept
//
// A host firewall whose forward policy is accept needs nothing, and
// neither does one that already accepts every DNATed connection, the
// usual rule for port forwards (`ct status dnat accept`, `-m conntrack
// --ctstate DNAT -j ACCEPT`), though that admits more than pasvgate's. The
// tests run all of these. The host's input chain is not involved, unless
// a mapping's target is the gateway itself.
//
// # Operations
//
// One netlink socket is kept open for the Backend's life (FACTS.md: a
// socket per call costs milliseconds), with buffers large enough for the
// biggest batch it sends. Every call is bounded by its context and by
// Config.OpTimeout; EINTR and ENOBUFS are retried a bounded number of
// times, on a fresh socket after ENOBUFS.
//
// Setup deletes and recreates each table with its maps and chains in one
// batch (one transaction), which sweeps an earlier process's elements and
// repairs anything changed by hand, then adds the rules. Connections
// already open keep flowing through it, so a restart does not cut
// transfers. Flush deletes both tables, and nothing else; if they held
// the network namespace's only nat chains, the kernel stops translating
// connections that are still open (the NAT of an established connection
// runs in the kernel's nat hooks, which go with the last nat chain), so a
// Flush cuts transfers in progress. pasvgate's shutdown, which removes
// the mappings with Remove and keeps the tables, does not.
//
// If the tables are deleted from outside (`nft flush ruleset`, a firewall
// reload that flushes everything), the next Install gets ENOENT, rebuilds
// the missing tables with every live mapping of this process (with what
// is left of its timeout), logs it and tries once more. The rebuilt
// mappings admit nothing: whether each had been used went with its
// unused_set element, and a used one must not admit a second connection.
// Until then no mapping works, and open transfers stall if no other nat
// chain is left.
// A table that is only flushed (rules gone, table kept) is not noticed.
//
// Duplicates (same ID; same source and public address; same source,
// target and public port, which the snat key cannot tell apart; or same
// source and public port, which the unused_set key cannot) are
// refused from an index of this process's mappings, since adding an
// element that is already there does not fail. An element of another
// process with the same key and other data is refused by the kernel and
// reported as rules.ErrExists.
//
// # Interception
//
// For transparent mode the Backend is also a rules.Interceptor: Intercept
// hands the LAN's FTP control connections to pasvgate's listener with a
// redirect rule in ChainIntercept or a tproxy rule in ChainTProxy, base
// chains in pasvgate's own tables that exist only while an interception of
// their method is installed, plus for TPROXY the same policy routing as
// the iptables backend makes, over rtnetlink (see Intercept). Setup sweeps
// an earlier process's interception, a rebuild after the tables were
// deleted from outside puts this process's back, and Flush removes it with
// everything else. AvailableIntercept tells whether the kernel has what
// the interception rules need. The host's forward chain needs nothing
// more for it: the intercepted connections are delivered to the router
// itself, so only an input chain that drops by default must let them in,
// as for any local service.
package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/intercept"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
)

// DefaultCtMark is the default Config.CtMark: bit 28 of the conntrack
// mark, the same bit as the iptables backend's default connmark, so that a
// host firewall rule written for one backend works for the other. It
// stays clear of the bits common neighbours keep in conntrack marks
// (kube-proxy 0x4000 and 0x8000, Cilium 0x0f00-0xff00, Tailscale
// 0xff0000, mwan3 0x3f00).
const DefaultCtMark uint32 = 0x10000000

// Defaults of the Config fields.
const (
	// DefaultTimeout is nat's default connect timeout.
	DefaultTimeout   = 30 * time.Second
	DefaultOpTimeout = 5 * time.Second
)

// Defaults of the TPROXY policy routing, the same as the iptables
// backend's (iptables.DefaultTProxyMark and the others), so that either
// backend finds and sweeps what the other made, and an operator's
// routing written for one fits the other.
const (
	// DefaultTProxyMark is the default Config.TProxyMark: bit 29 of the
	// packet mark, next to DefaultCtMark but a bit of its own, so that
	// copying conntrack marks into packet marks cannot make a packet
	// look intercepted.
	DefaultTProxyMark uint32 = policyroute.DefaultMark
	// DefaultTProxyTable is the default Config.TProxyTable, a routing
	// table number that iproute2 does not name and that the common
	// neighbours do not use.
	DefaultTProxyTable = policyroute.DefaultTable
	// DefaultTProxyPriority is the default Config.TProxyPriority: before
	// the main table and before the rules that Tailscale and most VPN
	// clients add.
	DefaultTProxyPriority = policyroute.DefaultPriority
)

// Config configures a Backend. The zero value is usable.
type Config struct {
	// Timeout is the kernel timeout of every element: how long after
	// Install a mapping's data connection may be opened. The kernel
	// removes a mapping that lives longer; see the package doc. Set it
	// to nat's ConnectTimeout. Kept to the millisecond. Default
	// DefaultTimeout.
	Timeout time.Duration
	// CtMark is the conntrack mark bit (or bits) set on every connection
	// a mapping admits, for the host firewall to accept. Only these bits
	// are ever set. Default DefaultCtMark.
	CtMark uint32
	// OpTimeout bounds every netlink call even when the caller's context
	// has no deadline, so that a stuck socket is a failed call, not a
	// hang. Default DefaultOpTimeout.
	OpTimeout time.Duration
	// DisableIPv6 leaves the ip6 table alone (for kernels without IPv6):
	// installing an IPv6 mapping then fails with ErrNoIPv6, and
	// interception is IPv4 only.
	DisableIPv6 bool
	// TProxyMark is the packet mark bit (or bits) that TPROXY
	// interception (see Intercept) sets on the packets it hands to
	// pasvgate's listener, and that the policy routing rule matches to
	// deliver them locally. Only these bits are ever set or matched.
	// Default DefaultTProxyMark.
	TProxyMark uint32
	// TProxyTable is the routing table that holds the "local" default
	// routes of TPROXY interception. Those routes (type local, default
	// destination, on lo) are pasvgate's: Setup and Flush remove them.
	// Anything else in the table is left alone. Default
	// DefaultTProxyTable.
	TProxyTable int
	// TProxyPriority is the priority of the policy routing rule ("ip
	// rule") that sends TProxyMark to TProxyTable. Every rule at this
	// priority that looks up TProxyTable is pasvgate's: Setup and Flush
	// remove them. Default DefaultTProxyPriority.
	TProxyPriority int
	// NetNS is a file descriptor of the network namespace to work in,
	// for tests; the caller keeps it open while the Backend lives and
	// closes it. Default 0: the network namespace of the thread that
	// opens the socket, which is the process's own in a program that
	// never calls setns (pasvgate does not). A namespace given here is
	// entered with setns, which needs CAP_SYS_ADMIN even for the
	// namespace the process is in, so the default must not pin one:
	// under the systemd unit pasvgate has only CAP_NET_ADMIN.
	NetNS int
	// Logger receives sweeps, repairs and retries. Default
	// slog.Default().
	Logger *slog.Logger
}

// Errors of this backend besides those of package rules.
var (
	// ErrNotSetUp: Install, Remove or Intercept before Setup, or after
	// Flush.
	ErrNotSetUp = errors.New("nftables backend not set up")
	// ErrNoIPv6: an IPv6 mapping while IPv6 is off.
	ErrNoIPv6 = errors.New("IPv6 is off in the nftables backend")
)

// Backend is the nftables rules.Backend. Make it with New and Close it
// when done.
type Backend struct {
	cfg  Config
	log  *slog.Logger
	nsfd int
	fams []*objects

	// sem serialises every use of the connection and guards the fields
	// below. It is a mutex that can be waited for with a context.
	sem   chan struct{}
	conn  *conn
	setUp bool
	// idx holds the mappings this process installed since Setup and has
	// not removed, by ID and by the keys of indexKeys: duplicate checks
	// need no netlink call, and a rebuild can put every live mapping back.
	idx mapindex.Index[string, entry]
	// ics holds the interceptions this process installed since Setup:
	// Intercept and StopIntercept make the kernel's interception state
	// exactly this set, and a rebuild puts it back.
	ics intercept.Set
	// noDestroy is set once the kernel has refused
	// NFT_MSG_DESTROYSETELEM (before Linux 6.3): removals then take two
	// transactions (see destroy.go).
	noDestroy bool
}

// entry is an installed mapping and when its elements expire.
type entry struct {
	m       rules.Mapping
	expires time.Time
}

var (
	_ rules.Backend     = (*Backend)(nil)
	_ rules.Interceptor = (*Backend)(nil)
)

// New makes a Backend. It changes nothing in the kernel and opens the
// netlink socket on first use.
func New(cfg Config) (*Backend, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < time.Millisecond {
		return nil, fmt.Errorf("nftables backend: Timeout %v is below the kernel's millisecond", cfg.Timeout)
	}
	if cfg.CtMark == 0 {
		cfg.CtMark = DefaultCtMark
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TProxyMark == 0 {
		cfg.TProxyMark = DefaultTProxyMark
	}
	if cfg.TProxyTable == 0 {
		cfg.TProxyTable = DefaultTProxyTable
	}
	if cfg.TProxyPriority == 0 {
		cfg.TProxyPriority = DefaultTProxyPriority
	}
	if err := policyConfig(cfg, 0).Check(); err != nil {
		return nil, fmt.Errorf("nftables backend: %w", err)
	}
	b := &Backend{
		cfg:  cfg,
		log:  cfg.Logger.With("backend", "nftables"),
		nsfd: cfg.NetNS,
		sem:  make(chan struct{}, 1),
	}
	if n := bits.OnesCount32(cfg.CtMark); n != 1 {
		b.log.Warn("CtMark has more than one bit; all of them mark admitted connections", "ctmark", fmt.Sprintf("0x%x", cfg.CtMark))
	}
	b.fams = []*objects{newObjects(fam4, TableName, cfg.Timeout)}
	if !cfg.DisableIPv6 {
		b.fams = append(b.fams, newObjects(fam6, TableName, cfg.Timeout))
	}
	return b, nil
}

// Close closes the netlink socket. The kernel state stays.
func (b *Backend) Close() error {
	b.sem <- struct{}{}
	defer func() { <-b.sem }()
	b.conn.close()
	b.conn = nil
	return nil
}

// lock takes sem, giving up when ctx ends.
func (b *Backend) lock(ctx context.Context) error {
	select {
	case b.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for another rule change: %w", ctx.Err())
	}
}

func (b *Backend) unlock() { <-b.sem }

func (b *Backend) objectsOf(m rules.Mapping) (*objects, error) {
	for _, o := range b.fams {
		if o.f.v6 == m.Is6() {
			return o, nil
		}
	}
	return nil, ErrNoIPv6
}

// Setup makes pasvgate's tables exactly as this version and Config want
// them, sweeping everything an earlier process left in them: per family,
// one batch deletes the table if it is there and creates it again with
// its maps and chains, and one batch per rule adds the rules (see
// addRules). Between the two the chains are empty, which only means that
// no mapping works yet. It is idempotent.
//
// Recreating the tables also removes an earlier process's interception
// chains (see Intercept), which are made again only by Intercept. Setup
// removes the TPROXY policy routing too, found over netlink by
// Config.TProxyPriority and Config.TProxyTable, whichever backend made
// it.
func (b *Backend) Setup(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("setting up: %w", err)
	}
	defer b.unlock()
	b.setUp = false
	if left, err := b.list(ctx); err == nil && len(left) > 0 {
		b.log.Info("removing mappings left by an earlier process", "count", len(left))
	}
	if b.hasInterceptChains(ctx) {
		b.log.Info("removing interception left by an earlier process")
	}
	for _, o := range b.fams {
		if err := b.build(ctx, o, nil, nil); err != nil {
			return fmt.Errorf("setting up %s: %w", o.f.name, err)
		}
		n, err := policyroute.Sync(b.policy(), o.f.v6, false)
		if err != nil {
			return fmt.Errorf("setting up %s: removing TPROXY policy routing left by an earlier process: %w", o.f.name, err)
		}
		if n > 0 {
			b.log.Info("removed TPROXY policy routing left by an earlier process", "family", o.f.name, "rules_and_routes", n)
		}
	}
	b.idx = mapindex.New(func(e entry) rules.Mapping { return e.m }, indexKeys)
	b.ics = intercept.Set{}
	b.setUp = true
	b.log.Info("set up", "tables", TableName, "timeout", b.cfg.Timeout, "ctmark", fmt.Sprintf("0x%x", b.cfg.CtMark))
	return nil
}

// build (re)creates o's table, sets, chains and rules, and the
// interception chains of ics, then adds restore with what is left of
// their timeouts.
func (b *Backend) build(ctx context.Context, o *objects, restore []entry, ics []rules.Interception) error {
	err := b.do(ctx, func(c *nftables.Conn) error {
		// Adding the table first makes the delete succeed whether or not
		// it was there; the batch is one transaction, so nobody ever sees
		// the table missing.
		c.AddTable(o.table)
		c.DelTable(o.table)
		c.AddTable(o.table)
		for _, s := range o.sets() {
			if err := c.AddSet(s, nil); err != nil {
				return err
			}
		}
		for _, ch := range o.chains() {
			c.AddChain(ch)
		}
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("creating table %s %s: %w", o.f.nft, TableName, err)
	}
	if err := b.addRules(ctx, o); err != nil {
		return err
	}
	if len(ics) > 0 {
		if err := b.writeIntercepts(ctx, o, ics); err != nil {
			return err
		}
	}
	now := time.Now()
	var live []entry
	for _, e := range restore {
		if e.expires.After(now) {
			live = append(live, e)
		}
	}
	if err := b.addElements(ctx, o, live, now); err != nil {
		return fmt.Errorf("restoring %d mappings: %w", len(live), err)
	}
	return nil
}

// addRules adds the static rules one batch each. google/nftables asks the
// kernel to echo every rule it adds and reads the echoes back as one
// datagram; the kernel coalesces them only up to a page, and a second
// datagram would throw the library's reading of the acknowledgements out
// of step. One rule per batch keeps each echo far below that.
func (b *Backend) addRules(ctx context.Context, o *objects) error {
	for _, r := range o.rules(b.cfg.CtMark) {
		err := b.do(ctx, func(c *nftables.Conn) error {
			c.AddRule(r)
			return c.Flush()
		})
		if err != nil {
			return fmt.Errorf("adding a rule to chain %s %s %s: %w", o.f.nft, TableName, r.Chain.Name, err)
		}
	}
	return nil
}

// addElements adds the map elements of es, each with what is left of its
// timeout at now, in batches of maxBatchMappings mappings. It puts back
// no SetUnused element: a table rebuilt after it was deleted from outside
// cannot tell which mappings were used already, and putting one back
// would let a used mapping admit a second connection. So a mapping that
// had not been used when its table was deleted admits nothing after the
// rebuild either.
func (b *Backend) addElements(ctx context.Context, o *objects, es []entry, now time.Time) error {
	for chunk := range slices.Chunk(es, maxBatchMappings) {
		var all elems
		for _, e := range chunk {
			el := elementsOf(e.m, e.expires.Sub(now))
			all.dnat = append(all.dnat, el.dnat...)
			all.snat = append(all.snat, el.snat...)
		}
		err := b.do(ctx, func(c *nftables.Conn) error { return addBatch(c, o, all) })
		if err != nil {
			return err
		}
	}
	return nil
}

// addBatch sends one batch that adds the given elements, in messages of
// at most maxMessageElements.
func addBatch(c *nftables.Conn, o *objects, el elems) error {
	for _, x := range []struct {
		s  *nftables.Set
		es []nftables.SetElement
	}{{o.dnat, el.dnat}, {o.snat, el.snat}, {o.unused, el.unused}} {
		for chunk := range slices.Chunk(x.es, maxMessageElements) {
			if err := c.SetAddElements(x.s, chunk); err != nil {
				return err
			}
		}
	}
	return c.Flush()
}

// delBatch sends one batch that deletes the given elements.
func delBatch(c *nftables.Conn, o *objects, el elems) error {
	for _, x := range []struct {
		s  *nftables.Set
		es []nftables.SetElement
	}{{o.unused, el.unused}, {o.dnat, el.dnat}, {o.snat, el.snat}} {
		if len(x.es) == 0 {
			continue
		}
		if err := c.SetDeleteElements(x.s, keysOnly(x.es)); err != nil {
			return err
		}
	}
	return c.Flush()
}

// Install makes m live with one netlink batch (batch.go) of two to four
// elements, each with the kernel timeout Config.Timeout. The batch is one
// transaction, so m is in the kernel whole or not at all. If the batch
// fails because pasvgate's table is gone, Install rebuilds the missing
// tables with every live mapping of this process, logs it, and tries once
// more.
func (b *Backend) Install(ctx context.Context, m rules.Mapping) error {
	if err := m.Validate(); err != nil {
		return err
	}
	o, err := b.objectsOf(m)
	if err != nil {
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	defer b.unlock()
	if !b.setUp {
		return fmt.Errorf("installing %s: %w", m.ID, ErrNotSetUp)
	}
	if id, ok := b.idx.Conflict(m); ok {
		return fmt.Errorf("installing %s: %w (as %s)", m.ID, rules.ErrExists, id)
	}
	now := time.Now()
	e := entry{m: m, expires: now.Add(b.cfg.Timeout)}
	el := elementsOf(m, b.cfg.Timeout)
	install := func() error {
		return b.do(ctx, func(*nftables.Conn) error { return addBatchRaw(b.conn, o, el) })
	}
	err = install()
	if IsNotExist(err) && ctx.Err() == nil {
		if rerr := b.rebuild(ctx, o); rerr != nil {
			return fmt.Errorf("installing %s: %w; rebuilding the tables: %w", m.ID, err, rerr)
		}
		err = install()
	}
	switch {
	case err == nil:
		b.idx.Add(e)
		return nil
	case isClash(err):
		return fmt.Errorf("installing %s: %w: the kernel holds another process's element with its key", m.ID, rules.ErrExists)
	case kernelErrno(err) == 0:
		// A timeout or a broken socket: the batch may have been
		// committed all the same. Take it out again so that nothing of m
		// stays, on a fresh socket and even if ctx has ended.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.OpTimeout)
		defer cancel()
		if n, rerr := b.deleteEach(cctx, o, el); rerr != nil {
			b.log.Warn("rolling back a failed install failed", "mapping", m.ID, "err", rerr)
		} else if n > 0 {
			b.log.Warn("rolled back a failed install that had reached the kernel", "mapping", m.ID, "elements", n)
		}
	}
	return fmt.Errorf("installing %s: adding elements to %s %s: %w", m.ID, o.f.nft, TableName, err)
}

// rebuild recreates every table that is gone, and o's in any case (its
// batch failed), each with this process's live mappings of its family
// and its interceptions. The policy routing of TPROXY interception is
// not in a table, so it is not touched: Intercept puts it back if it was
// removed.
func (b *Backend) rebuild(ctx context.Context, o *objects) error {
	for _, x := range b.fams {
		if x != o {
			if ok, err := b.tableExists(ctx, x); err != nil || ok {
				continue
			}
		}
		var live []entry
		for _, e := range b.idx.Sorted() {
			if e.m.Is6() == x.f.v6 {
				live = append(live, e)
			}
		}
		b.log.Warn("pasvgate's nftables table was deleted or changed from outside; rebuilding it",
			"family", x.f.nft, "table", TableName, "mappings", len(live), "interceptions", len(b.ics))
		if err := b.build(ctx, x, live, b.ics.Sorted()); err != nil {
			return fmt.Errorf("%s: %w", x.f.name, err)
		}
	}
	return nil
}

// tableExists reports whether o's table is in the kernel.
func (b *Backend) tableExists(ctx context.Context, o *objects) (bool, error) {
	err := b.do(ctx, func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily(o.table.Name, o.table.Family)
		return err
	})
	if IsNotExist(err) {
		return false, nil
	}
	return err == nil, err
}

// deleteEach deletes el's elements one batch each, so that a missing one
// does not stop the others, and reports how many it deleted.
func (b *Backend) deleteEach(ctx context.Context, o *objects, el elems) (int, error) {
	n := 0
	var errs []error
	ones := []elems{{unused: el.unused}, {snat: el.snat}}
	for _, d := range el.dnat {
		// A mapping's two dnat elements (Public's and Dialed's) one at a
		// time too.
		ones = append(ones, elems{dnat: []nftables.SetElement{d}})
	}
	for _, one := range ones {
		if len(one.dnat)+len(one.snat)+len(one.unused) == 0 {
			continue
		}
		err := b.do(ctx, func(c *nftables.Conn) error { return delBatch(c, o, one) })
		switch {
		case err == nil:
			n++
		case !IsNotExist(err):
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// Remove deletes m's elements, in one netlink batch: the map elements,
// and the SetUnused element, which the kernel deleted already if m was
// used (the usual case, and not an error; see destroy.go). m must be what
// this process installed under m.ID. Connections it admitted keep
// flowing. If the batch fails because a map element is missing, Remove
// deletes what is left one element at a time: a mapping whose timeout
// has passed was removed by the kernel, which is not an error; one whose
// map elements all vanished before then was removed from outside, which
// is rules.ErrNotInstalled.
func (b *Backend) Remove(ctx context.Context, m rules.Mapping) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("removing %s: %w", m.ID, err)
	}
	defer b.unlock()
	return b.removeLocked(ctx, m)
}

// RemoveBatch removes ms as Remove does each, with one netlink batch per
// family for all of them, so that a queue of released mappings costs one
// nf_tables transaction. If that batch fails, each mapping is removed on
// its own, which tells whose elements were missing. errs[i] is ms[i]'s
// outcome.
func (b *Backend) RemoveBatch(ctx context.Context, ms []rules.Mapping) (errs []error) {
	errs = make([]error, len(ms))
	if err := b.lock(ctx); err != nil {
		for i, m := range ms {
			errs[i] = fmt.Errorf("removing %s: %w", m.ID, err)
		}
		return errs
	}
	defer b.unlock()
	if !b.setUp || b.noDestroy || len(ms) < 2 {
		for i, m := range ms {
			errs[i] = b.removeLocked(ctx, m)
		}
		return errs
	}
	for _, o := range b.fams {
		var es []entry
		for _, m := range ms {
			e, ok := b.idx.Get(m.ID)
			if m.Is6() == o.f.v6 && ok && mapindex.Same(e.m, m) {
				es = append(es, e)
			}
		}
		for chunk := range slices.Chunk(es, maxBatchMappings) {
			els := make([]elems, len(chunk))
			for i, e := range chunk {
				els[i] = elementsOf(e.m, b.cfg.Timeout)
			}
			err := b.do(ctx, func(*nftables.Conn) error { return delBatchDestroy(b.conn, o, els) })
			if err != nil {
				// Someone's elements were missing (or worse): each
				// on its own, which tells whose.
				break
			}
			for _, e := range chunk {
				b.idx.Delete(e.m)
			}
		}
	}
	for i, m := range ms {
		if e, ok := b.idx.Get(m.ID); ok && mapindex.Same(e.m, m) {
			errs[i] = b.removeLocked(ctx, m)
		}
	}
	return errs
}

// removeLocked is Remove with b.sem held.
func (b *Backend) removeLocked(ctx context.Context, m rules.Mapping) error {
	if !b.setUp {
		return fmt.Errorf("removing %s: %w", m.ID, ErrNotSetUp)
	}
	e, ok := b.idx.Get(m.ID)
	if !ok || !mapindex.Same(e.m, m) {
		return fmt.Errorf("removing %s: %w", m.ID, rules.ErrNotInstalled)
	}
	o, err := b.objectsOf(e.m)
	if err != nil {
		return fmt.Errorf("removing %s: %w", m.ID, err)
	}
	el := elementsOf(e.m, b.cfg.Timeout)
	if err := b.deleteElements(ctx, o, el); err == nil {
		b.idx.Delete(e.m)
		return nil
	} else if !IsNotExist(err) {
		// m stays in the index: a later Remove finishes the job.
		return fmt.Errorf("removing %s: deleting elements from %s %s: %w", m.ID, o.f.nft, TableName, err)
	}
	// The SetUnused element first and apart: whether it was there says
	// only whether m was used, not whether m was removed from outside.
	err = b.do(ctx, func(c *nftables.Conn) error { return delBatch(c, o, elems{unused: el.unused}) })
	if err != nil && !IsNotExist(err) {
		return fmt.Errorf("removing %s: deleting from set %s %s %s: %w", m.ID, o.f.nft, TableName, SetUnused, err)
	}
	el.unused = nil
	n, derr := b.deleteEach(ctx, o, el)
	if derr != nil {
		return fmt.Errorf("removing %s: deleting elements one by one from %s %s: %w", m.ID, o.f.nft, TableName, derr)
	}
	b.idx.Delete(e.m)
	switch {
	case n == 0 && time.Now().Before(e.expires):
		return fmt.Errorf("removing %s: %w: its elements were deleted from outside pasvgate", m.ID, rules.ErrNotInstalled)
	case n == 0:
		b.log.Debug("mapping had expired in the kernel", "mapping", m.ID)
	default:
		b.log.Warn("some of a mapping's elements were missing; deleted the others", "mapping", m.ID, "deleted", n)
	}
	return nil
}

// deleteElements deletes one mapping's elements: in one transaction
// (delBatchDestroy), or, on a kernel without NFT_MSG_DESTROYSETELEM, in
// two: the SetUnused element alone, whose absence is no error, then the
// map elements. It fails with ENOENT (IsNotExist) when a map element is
// missing, and then has deleted nothing of them.
func (b *Backend) deleteElements(ctx context.Context, o *objects, el elems) error {
	if !b.noDestroy {
		err := b.do(ctx, func(*nftables.Conn) error { return delBatchDestroy(b.conn, o, []elems{el}) })
		if !errors.Is(err, errNoDestroy) {
			return err
		}
		b.noDestroy = true
		b.log.Info("this kernel has no NFT_MSG_DESTROYSETELEM (Linux 6.3): each removal takes two transactions", "err", err)
	}
	err := b.do(ctx, func(c *nftables.Conn) error { return delBatch(c, o, elems{unused: el.unused}) })
	if err != nil && !IsNotExist(err) {
		return err
	}
	el.unused = nil
	return b.do(ctx, func(c *nftables.Conn) error { return delBatch(c, o, el) })
}

// List returns the mappings in pasvgate's tables, ordered by ID: every
// mapping whose elements have not expired, including those of another
// pasvgate process or an earlier one, not only this one's. It reads the
// dnat and snat maps of each family, one dump each. Elements without a
// pasvgate comment (added by hand) are logged and left out.
func (b *Backend) List(ctx context.Context) ([]rules.Mapping, error) {
	if err := b.lock(ctx); err != nil {
		return nil, fmt.Errorf("listing: %w", err)
	}
	defer b.unlock()
	return b.list(ctx)
}

func (b *Backend) list(ctx context.Context) ([]rules.Mapping, error) {
	var out []rules.Mapping
	for _, o := range b.fams {
		ok, err := b.tableExists(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("listing %s mappings: %w", o.f.name, err)
		}
		if !ok {
			continue
		}
		var dnat, snat []nftables.SetElement
		err = b.do(ctx, func(c *nftables.Conn) error {
			var err error
			if dnat, err = c.GetSetElements(o.dnat); err != nil {
				return fmt.Errorf("reading map %s: %w", o.dnat.Name, err)
			}
			if snat, err = c.GetSetElements(o.snat); err != nil {
				return fmt.Errorf("reading map %s: %w", o.snat.Name, err)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("listing %s mappings: %w", o.f.name, err)
		}
		snatOf := make(map[string]netip.Addr, len(snat))
		for _, e := range snat {
			k, a, err := o.f.decodeSNAT(e)
			if err != nil {
				b.log.Warn("ignoring a malformed element", "family", o.f.nft, "map", o.snat.Name, "err", err)
				continue
			}
			snatOf[k] = a
		}
		// A Dialed address's element joins its mapping's by ID; one
		// whose main element is gone is reported on its own.
		dialedOf := map[string]netip.Addr{}
		var ms []rules.Mapping
		for _, e := range dnat {
			m, dialed, err := o.f.decodeDNAT(e)
			if err != nil {
				b.log.Warn("ignoring an element that is not a pasvgate mapping", "family", o.f.nft, "map", o.dnat.Name, "err", err)
				continue
			}
			if dialed {
				dialedOf[m.ID] = m.Public.Addr()
				continue
			}
			ms = append(ms, m)
		}
		for _, m := range ms {
			m.SNAT = snatOf[string(snatKey(m))]
			m.Dialed = dialedOf[m.ID]
			delete(dialedOf, m.ID)
			out = append(out, m)
		}
		for id := range dialedOf {
			b.log.Warn("ignoring a dialed-address element whose mapping is gone", "family", o.f.nft, "map", o.dnat.Name, "mapping", id)
		}
	}
	slices.SortFunc(out, func(a, b rules.Mapping) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Flush deletes pasvgate's tables, with every mapping and interception,
// in one batch, and nothing else; then it removes the TPROXY policy
// routing (see Intercept). Flushing a clean system is not an error.
// Setup must run again before Install or Intercept.
func (b *Backend) Flush(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("flushing: %w", err)
	}
	defer b.unlock()
	b.setUp, b.idx, b.ics = false, mapindex.Index[string, entry]{}, nil
	var errs []error
	err := b.do(ctx, func(c *nftables.Conn) error {
		for _, o := range b.fams {
			// Add, then delete: the delete cannot fail for a missing
			// table, and the pair leaves nothing behind.
			c.AddTable(o.table)
			c.DelTable(o.table)
		}
		return c.Flush()
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("flushing: deleting tables %s: %w", TableName, err))
	}
	// After the rules, so that no packet is marked for a route that is
	// gone; and even when they failed, as the routing is not in them.
	for _, o := range b.fams {
		if _, err := policyroute.Sync(b.policy(), o.f.v6, false); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s TPROXY policy routing: %w", o.f.name, err))
		}
	}
	return errors.Join(errs...)
}

// indexKeys are the keys under which idx finds m: its dnat key (same
// source and public address), its snat key (same source, target and
// public port), which is taken whether or not m has SNAT, because a
// mapping without SNAT whose connections matched another's snat element
// would be SNATed, and its SetUnused key (same source and public port),
// because one mapping's first connection would use up the other.
func indexKeys(m rules.Mapping) []string {
	ks := []string{"d" + string(pubKey(m)), "s" + string(snatKey(m)), "u" + string(unusedKey(m))}
	if m.Dialed.IsValid() {
		// The Dialed element is a dnat key like any other.
		ks = append(ks, "d"+string(dialedKey(m)))
	}
	return ks
}
