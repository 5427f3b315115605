// Package iptables is pasvgate's iptables backend: a rules.Backend that
// turns each mapping into a DNAT rule, a FORWARD accept and, optionally, an
// SNAT rule, kept in pasvgate's own chains (ChainDNAT, ChainSNAT,
// ChainForward, ChainAdmit) that the built-in chains jump to. It works with
// iptables-legacy and iptables-nft, for IPv4 and, through ip6tables, IPv6.
//
// Its callers are package nat, through rules.Backend, which installs a
// mapping when the proxy rewrites a 227/229 or PORT/EPRT and removes it when
// the transfer ends, and the `pasvgate rules list|flush` commands, which
// call List and Flush.
//
// Install and Remove are on the critical path of a transfer, so each is one
// iptables-restore --noflush batch: one exec, one commit per table. Setup,
// List and Flush read the whole state with one iptables-save per family and
// write it back with at most one iptables-restore; go-iptables does the
// chain and jump checks of Setup. Every exec is bounded by the caller's
// context and by Config.ExecTimeout, and waits at most Config.LockTimeout
// for the xtables lock.
//
// Installs run one at a time, and so do removals, but an install may run
// beside a removal. nat removes a mapping after the transfer's final
// reply, off the client's path, but with one lock for both the next
// transfer's install would wait for it: with iptables-nft a removal's
// iptables-restore spends about 25 ms in the kernel after its commit,
// against about 3 ms for an install, so back-to-back small transfers paid
// the removal too. iptables-nft-restore --noflush retries on its own when
// another commit changed the ruleset first; iptables-legacy serialises the
// two on the xtables lock.
//
// A mapping admits one connection, the first (see mappingRules): its DNAT
// rule DNATs only a client not yet in an xt_recent list of the mapping's
// own, and adds the client to it as it DNATs. A mapping with a Dialed
// address has a second set of rules for it, whose DNAT rule names the
// same list, so that one connection, to either address, uses it up. The kernel does it alone, so
// no window is left for a userspace round trip; a used mapping stays
// installed until Remove, which treats it like any other.
//
// Connections admitted by a mapping keep flowing after it is removed: the
// mapping's FORWARD rule sends the connection's first packet to ChainAdmit,
// which sets Config.ConnMark on the connection and accepts it, and the
// first rule of ChainForward accepts every established or related packet of
// a connection with that mark, in both directions. So pasvgate needs no
// ESTABLISHED rule from the machine's own firewall.
//
// For transparent mode the Backend is also a rules.Interceptor: Intercept
// hands the LAN's FTP control connections to pasvgate's listener, with a
// REDIRECT rule in ChainIntercept (nat) or a TPROXY rule in ChainTProxy
// (mangle) plus policy routing made over netlink. Those chains exist only
// while an interception is installed; Setup removes an earlier process's,
// and Flush removes them with everything else.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/internal/intercept"
	"github.com/pasvgate/pasvgate/rules/internal/mapindex"
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
)

// DefaultConnMark is the default Config.ConnMark: bit 28 of the conntrack
// mark. It stays clear of the bits that common neighbours are known to keep
// in conntrack marks (kube-proxy 0x4000 and 0x8000, Cilium 0x0f00-0xff00,
// Tailscale 0xff0000, mwan3 0x3f00). Pick another bit if the gateway's own
// firewall uses this one.
const DefaultConnMark uint32 = 0x10000000

// DefaultTProxyMark is the default Config.TProxyMark: bit 29 of the packet
// mark. It is a bit of its own, next to DefaultConnMark, so that a rule
// that copies conntrack marks into packet marks (CONNMARK --restore-mark)
// cannot make a packet look intercepted, and it stays clear of the same
// neighbours' bits as DefaultConnMark.
const DefaultTProxyMark uint32 = policyroute.DefaultMark

// Defaults of the Config fields.
const (
	DefaultPath        = "iptables"
	DefaultLockTimeout = 5 * time.Second
	// DefaultTProxyTable is the default Config.TProxyTable: a routing
	// table number that iproute2 does not name and that the common
	// neighbours do not use (Tailscale 52, Cilium 2004 and 2005,
	// wg-quick 51820).
	DefaultTProxyTable = policyroute.DefaultTable
	// DefaultTProxyPriority is the default Config.TProxyPriority: before
	// the main table (32766) and before the rules that Tailscale (5210 and
	// up) and most VPN clients add, so that an intercepted packet is
	// delivered locally whatever they route.
	DefaultTProxyPriority = policyroute.DefaultPriority
)

// Config configures a Backend. The zero value is usable.
type Config struct {
	// Path is the iptables binary to use, as the --iptables-path flag gives
	// it: a name looked up in PATH or a path, whose base name is iptables
	// with an optional suffix ("iptables-legacy", "/usr/sbin/iptables-nft").
	// The other binaries are found next to it by name: for
	// /usr/sbin/iptables-legacy they are iptables-legacy-restore,
	// iptables-legacy-save, ip6tables-legacy, ip6tables-legacy-restore and
	// ip6tables-legacy-save in /usr/sbin. Default "iptables".
	Path string
	// LockTimeout bounds the wait for the xtables lock (iptables --wait,
	// rounded up to whole seconds). Default 5s.
	LockTimeout time.Duration
	// ExecTimeout bounds every run of a binary even when the caller's
	// context has no deadline, so that a hung binary is a failed call, not
	// a hang. Default LockTimeout plus 5s.
	ExecTimeout time.Duration
	// ConnMark is the conntrack mark bit (or bits) that marks a connection
	// as admitted by pasvgate. Only these bits are ever set or matched.
	// Default DefaultConnMark.
	ConnMark uint32
	// CheckInterval is how often Install checks that the jumps into
	// pasvgate's chains are still in place (see Install). The check rides
	// in the install batch, so it costs no exec, and with iptables-legacy
	// it costs nothing measurable; but iptables-nft reads every rule of
	// both tables to do it, which grows with the number of mappings (about
	// 25 ms more per install with 1000 mappings installed, on a small VM).
	// With a positive interval, Install checks only when the last check of
	// the family is older than that, so that a flushed built-in chain goes
	// unnoticed (and new mappings do not work) for up to the interval. A
	// pasvgate chain deleted from outside is noticed on every Install
	// whatever the interval. Default 0: check on every Install.
	CheckInterval time.Duration
	// DisableIPv6 turns IPv6 off. Otherwise IPv6 is on when the ip6tables
	// binaries are there and run; when they are not, New logs it and goes
	// on with IPv4 only, and installing an IPv6 mapping fails with
	// ErrNoIPv6. On a kernel without IPv6 the binaries run but Setup fails:
	// set DisableIPv6 there.
	DisableIPv6 bool
	// TProxyMark is the packet mark bit (or bits) that TPROXY interception
	// (see Intercept) sets on the packets it hands to pasvgate's listener,
	// and that the policy routing rule matches to deliver them locally.
	// Only these bits are ever set or matched. Default DefaultTProxyMark.
	TProxyMark uint32
	// TProxyTable is the routing table that holds the "local" default
	// routes of TPROXY interception. Those routes (type local, default
	// destination, on lo) are pasvgate's: Setup and Flush remove them.
	// Anything else in the table is left alone. Default
	// DefaultTProxyTable.
	TProxyTable int
	// TProxyPriority is the priority of the policy routing rule ("ip rule")
	// that sends TProxyMark to TProxyTable. Every rule at this priority
	// that looks up TProxyTable is pasvgate's: Setup and Flush remove
	// them. Default DefaultTProxyPriority.
	TProxyPriority int
	// Logger receives repairs, sweeps and (at debug level) every exec.
	// Default slog.Default().
	Logger *slog.Logger
}

// Errors of this backend besides those of package rules and the exec
// kinds (ErrLocked, ErrNotExist).
var (
	// ErrNotSetUp: Install or Remove before Setup, or after Flush.
	ErrNotSetUp = errors.New("iptables backend not set up")
	// ErrNoIPv6: an IPv6 mapping while IPv6 is off.
	ErrNoIPv6 = errors.New("IPv6 is off in the iptables backend")
)

// Backend is the iptables rules.Backend. Make it with New.
type Backend struct {
	cfg  Config
	log  *slog.Logger
	fam4 *family
	fam6 *family // nil when IPv6 is off

	// sem serialises installs, and rsem removals: an install and a
	// removal may run at once, so that an install never waits behind a
	// removal's iptables-restore (with iptables-nft that spends ~25 ms in
	// the kernel after committing; iptables-nft-restore --noflush retries
	// when another commit came first, and legacy serialises on its own
	// lock). Everything else (Setup, Flush, repairs, interception, a
	// removal's fallback) holds both, always taken sem first. Both are
	// mutexes that can be waited for with a context. setUp and ics are
	// written under both and read under either.
	sem, rsem chan struct{}
	setUp     bool
	// mu guards idx and spent, which an install and a removal both
	// change. idx holds the mappings this process installed since Setup,
	// by ID and by source and public address: duplicate checks need no
	// exec, and a repair can put every mapping back.
	mu  sync.Mutex
	idx mapindex.Index[srcPub, rules.Mapping]
	// spent holds the IDs of mappings in idx that a repair put back
	// without their DNAT rule (see recoverInstall).
	spent map[string]bool
	// ics holds the interceptions this process installed since Setup:
	// Intercept and StopIntercept make the kernel's interception state
	// exactly this set, and a repair puts it back.
	ics intercept.Set

	// execs counts runs of a binary, for tests of the exec budget.
	execs atomic.Int64
}

type srcPub struct {
	src netip.Addr
	pub netip.AddrPort
}

var (
	_ rules.Backend     = (*Backend)(nil)
	_ rules.Interceptor = (*Backend)(nil)
)

// family is one address family's binaries.
type family struct {
	name        string // "IPv4" or "IPv6"
	v6          bool
	ipt         *goipt.IPTables
	restorePath string
	savePath    string
	// checked is when an install batch last checked the jumps; guarded
	// by Backend.sem.
	checked time.Time
}

// binaries are one family's three binaries.
type binaries struct {
	iptables, restore, save string
}

// deriveBinaries finds the restore, save and ip6tables binaries that go
// with an iptables binary, by name.
func deriveBinaries(path string) (v4, v6 binaries, err error) {
	dir, base := filepath.Split(path)
	suffix, ok := strings.CutPrefix(base, "iptables")
	if !ok || (suffix != "" && !strings.HasPrefix(suffix, "-")) ||
		strings.HasSuffix(suffix, "-restore") || strings.HasSuffix(suffix, "-save") {
		return v4, v6, fmt.Errorf("iptables path %q: want a binary named iptables or iptables-SUFFIX", path)
	}
	mk := func(name string) binaries {
		return binaries{dir + name, dir + name + "-restore", dir + name + "-save"}
	}
	return mk(base), mk("ip6tables" + suffix), nil
}

// New makes a Backend. It finds the binaries and runs iptables --version
// (and ip6tables --version) once; it changes nothing.
func New(cfg Config) (*Backend, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = DefaultLockTimeout
	}
	if cfg.ExecTimeout <= 0 {
		cfg.ExecTimeout = cfg.LockTimeout + 5*time.Second
	}
	if cfg.ConnMark == 0 {
		cfg.ConnMark = DefaultConnMark
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
	if n := bits.OnesCount32(cfg.ConnMark); n != 1 {
		cfg.Logger.Warn("iptables backend: ConnMark has more than one bit; all of them mark admitted connections", "connmark", fmt.Sprintf("0x%x", cfg.ConnMark))
	}
	if err := checkTProxyConfig(cfg); err != nil {
		return nil, err
	}
	v4, v6, err := deriveBinaries(cfg.Path)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:  cfg,
		log:  cfg.Logger.With("backend", "iptables"),
		sem:  make(chan struct{}, 1),
		rsem: make(chan struct{}, 1),
	}
	if b.fam4, err = newFamily(false, v4, cfg); err != nil {
		return nil, err
	}
	if !cfg.DisableIPv6 {
		if b.fam6, err = newFamily(true, v6, cfg); err != nil {
			b.log.Warn("ip6tables is not usable; IPv6 mappings are off", "err", err)
		}
	}
	return b, nil
}

func newFamily(v6 bool, bin binaries, cfg Config) (*family, error) {
	f := &family{name: "IPv4", v6: v6}
	proto := goipt.ProtocolIPv4
	if v6 {
		f.name, proto = "IPv6", goipt.ProtocolIPv6
	}
	var paths [3]string
	for i, p := range []string{bin.iptables, bin.restore, bin.save} {
		lp, err := exec.LookPath(p)
		if err != nil {
			return nil, fmt.Errorf("finding %s binaries: %w", f.name, err)
		}
		paths[i] = lp
	}
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(paths[0]), goipt.Timeout(waitSeconds(cfg.LockTimeout)))
	if err != nil {
		return nil, fmt.Errorf("running %s --version: %w", paths[0], err)
	}
	f.ipt, f.restorePath, f.savePath = ipt, paths[1], paths[2]
	return f, nil
}

// waitSeconds is LockTimeout as the whole seconds --wait takes.
func waitSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

func (b *Backend) waitArg() string { return strconv.Itoa(waitSeconds(b.cfg.LockTimeout)) }

// lock takes sem and rsem, giving up when ctx ends: nothing else changes
// the kernel meanwhile.
func (b *Backend) lock(ctx context.Context) error {
	if err := take(ctx, b.sem); err != nil {
		return err
	}
	if err := take(ctx, b.rsem); err != nil {
		<-b.sem
		return err
	}
	return nil
}

func (b *Backend) unlock() { <-b.rsem; <-b.sem }

// take takes the semaphore s, giving up when ctx ends.
func take(ctx context.Context, s chan struct{}) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for another rule change: %w", ctx.Err())
	}
}

func (b *Backend) families() []*family {
	if b.fam6 == nil {
		return []*family{b.fam4}
	}
	return []*family{b.fam4, b.fam6}
}

func (b *Backend) familyOf(m rules.Mapping) (*family, error) {
	if !m.Is6() {
		return b.fam4, nil
	}
	if b.fam6 == nil {
		return nil, ErrNoIPv6
	}
	return b.fam6, nil
}

// Setup creates pasvgate's chains and the jumps to them at the top of the
// built-in chains, where they are missing, and removes every mapping left
// by an earlier process, in both families. It is idempotent. Per family it
// checks chains and jumps with go-iptables, then reads the state with one
// iptables-save and writes it back with one iptables-restore that empties
// pasvgate's chains and rewrites their static rules, each table in one
// commit.
//
// It also removes an earlier process's interception (see Intercept): the
// interception chains and their jumps, with one more iptables-restore only
// when there are some, and the TPROXY policy routing, found over netlink
// by Config.TProxyPriority and Config.TProxyTable.
func (b *Backend) Setup(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("setting up: %w", err)
	}
	defer b.unlock()
	for _, f := range b.families() {
		if err := b.setupFamily(ctx, f); err != nil {
			return fmt.Errorf("setting up %s: %w", f.name, err)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("setting up %s: %w", f.name, err)
		}
		n, err := b.syncPolicy(f.v6, false)
		if err != nil {
			return fmt.Errorf("setting up %s: removing TPROXY policy routing left by an earlier process: %w", f.name, err)
		}
		if n > 0 {
			b.log.Info("removed TPROXY policy routing left by an earlier process", "family", f.name, "rules_and_routes", n)
		}
	}
	b.mu.Lock()
	b.idx = mapindex.New(func(m rules.Mapping) rules.Mapping { return m }, spKeys)
	b.spent = map[string]bool{}
	b.mu.Unlock()
	b.ics = intercept.Set{}
	b.setUp = true
	return nil
}

func (b *Backend) setupFamily(ctx context.Context, f *family) error {
	// go-iptables takes no context: check it between calls, and rely on
	// goipt.Timeout to bound each call's wait for the lock.
	for _, t := range tables {
		for _, c := range ownChains[t] {
			if err := ctx.Err(); err != nil {
				return err
			}
			ok, err := f.ipt.ChainExists(t, c)
			if err != nil {
				return fmt.Errorf("checking chain %s/%s: %w", t, c, err)
			}
			if ok {
				continue
			}
			if err := f.ipt.NewChain(t, c); err != nil && !errors.Is(errKind(err), rules.ErrExists) {
				return fmt.Errorf("creating chain %s/%s: %w", t, c, err)
			}
		}
	}
	for _, j := range jumps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := f.ipt.InsertUnique(j.table, j.from, 1, j.rule().args...); err != nil {
			return fmt.Errorf("adding jump %s/%s -> %s: %w", j.table, j.from, j.to, err)
		}
	}
	st, err := b.save(ctx, f)
	if err != nil {
		return fmt.Errorf("reading rules: %w", err)
	}
	if left := st.mappings(); len(left) > 0 {
		b.log.Info("removing mappings left by an earlier process", "family", f.name, "count", len(left))
	}
	if err := b.restore(ctx, f, resetScript(st, b.cfg.ConnMark, nil, nil)); err != nil {
		return fmt.Errorf("emptying chains: %w", err)
	}
	// resetScript leaves the interception chains alone: they exist only
	// while this process intercepts, so an earlier process's are removed.
	if err := b.sweepIntercept(ctx, f, st); err != nil {
		return fmt.Errorf("removing interception chains: %w", err)
	}
	f.checked = time.Now()
	b.log.Info("set up", "family", f.name, "restore", f.restorePath)
	return nil
}

// errKind is the kind of a go-iptables error, as classify tells it.
func errKind(err error) error {
	_, k := classify(err.Error())
	return k
}

// Install makes m live with one iptables-restore batch: the FORWARD accept
// in the filter table, then the SNAT and DNAT rules in the nat table, each
// table in one commit. The batch first checks that the jumps into
// pasvgate's chains are in place (every time, or as Config.CheckInterval
// says); if they are not, or pasvgate's chains are gone (a firewall
// reload, an `iptables -F`), Install logs it and puts back pasvgate's
// chains, jumps, static rules and every mapping it installed, together
// with m: that costs an iptables-save and a second iptables-restore. On
// any failure what m left behind is removed again, so nothing of m stays
// in the kernel.
func (b *Backend) Install(ctx context.Context, m rules.Mapping) error {
	if err := m.Validate(); err != nil {
		return err
	}
	f, err := b.familyOf(m)
	if err != nil {
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	if err := take(ctx, b.sem); err != nil {
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	defer func() { <-b.sem }()
	if !b.setUp {
		return fmt.Errorf("installing %s: %w", m.ID, ErrNotSetUp)
	}
	if id, ok := b.conflict(m); ok {
		return fmt.Errorf("installing %s: %w (as %s)", m.ID, rules.ErrExists, id)
	}
	check := b.cfg.CheckInterval <= 0 || time.Since(f.checked) >= b.cfg.CheckInterval
	err = b.restore(ctx, f, installScript(m, b.cfg.ConnMark, check))
	if err == nil {
		if check {
			f.checked = time.Now()
		}
		b.add(m)
		return nil
	}
	if IsLocked(err) {
		// iptables-restore gave up before it changed anything.
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	// The recovery reads and may rewrite the whole family: no removal
	// may run meanwhile. It must run even when ctx has ended; a removal
	// holds rsem for one bounded exec at most.
	if err := take(context.WithoutCancel(ctx), b.rsem); err != nil {
		return fmt.Errorf("installing %s: %w", m.ID, err)
	}
	defer func() { <-b.rsem }()
	return b.recoverInstall(ctx, f, m, err)
}

// recoverInstall runs after a failed install batch, which may have
// committed its filter section before failing. It reads the family's rules
// back; if pasvgate's chains, jumps or static rules were damaged from
// outside, it repairs them and installs m in one more batch; otherwise, or
// if that fails too, it deletes whatever of m the kernel holds. The
// clean-up runs even when ctx has ended, bounded by ExecTimeout.
func (b *Backend) recoverInstall(ctx context.Context, f *family, m rules.Mapping, cause error) error {
	cctx := context.WithoutCancel(ctx)
	st, err := b.save(cctx, f)
	if err != nil {
		return b.blindRollback(cctx, f, m, fmt.Errorf("%w; reading rules to roll back: %w", cause, err))
	}
	if missing := st.damage(b.cfg.ConnMark); len(missing) > 0 && ctx.Err() == nil {
		b.log.Warn("pasvgate's rules were changed from outside; putting them back",
			"family", f.name, "missing", missing, "mappings", len(b.sortedIndex()))
		ms := []rules.Mapping{}
		// A mapping none of whose nat rules is left lost its xt_recent
		// list with them, and with it whether it admitted its
		// connection: it is put back without its DNAT rule, so that a
		// used mapping never admits a second connection, at the cost of
		// one not used yet admitting none.
		spent := map[string]bool{}
		for _, o := range b.sortedIndex() {
			if o.Is6() == f.v6 {
				ms = append(ms, o)
				if b.isSpent(o.ID) || !st.hasNATRules(o.ID) {
					spent[o.ID] = true
				}
			}
		}
		err := b.restore(ctx, f, resetScript(st, b.cfg.ConnMark, append(ms, m), spent))
		if err == nil {
			f.checked = time.Now()
			b.add(m)
			b.markSpent(spent)
			b.repairIntercept(ctx, f, st)
			return nil
		}
		cause = fmt.Errorf("%w; then repairing: %w", cause, err)
		if st, err = b.save(cctx, f); err != nil {
			return b.blindRollback(cctx, f, m, fmt.Errorf("%w; reading rules to roll back: %w", cause, err))
		}
	}
	if left := st.rulesOf(m.ID); len(left) > 0 {
		if err := b.restore(cctx, f, deleteScript(left)); err != nil {
			return fmt.Errorf("installing %s: %w; rolling back: %w", m.ID, cause, err)
		}
		b.log.Warn("rolled back a half-done install", "mapping", m.ID, "rules", len(left))
	}
	return fmt.Errorf("installing %s: %w", m.ID, cause)
}

// blindRollback deletes m's rules without knowing which are there, when
// they cannot be read back. See blindRollbackScript for why that is exact.
func (b *Backend) blindRollback(ctx context.Context, f *family, m rules.Mapping, cause error) error {
	err := b.restore(ctx, f, blindRollbackScript(m))
	b.log.Warn("rolled back a failed install without reading the rules back", "mapping", m.ID,
		"deleted", err == nil, "rollback", err)
	return fmt.Errorf("installing %s: %w", m.ID, cause)
}

// Remove takes m's rules out with one iptables-restore batch, nat table
// first. m must be what this process installed under m.ID. Connections it
// admitted keep flowing. If the batch fails because some of m's rules were
// already gone, Remove deletes what is left (an iptables-save and one more
// batch) and returns nil, or rules.ErrNotInstalled when nothing was left.
func (b *Backend) Remove(ctx context.Context, m rules.Mapping) error {
	if err := take(ctx, b.rsem); err != nil {
		return fmt.Errorf("removing %s: %w", m.ID, err)
	}
	o, f, err := b.removable(m)
	if err == nil {
		err = b.restore(ctx, f, removeScript(o, b.isSpent(o.ID)))
		if err == nil {
			b.del(o)
		}
	}
	<-b.rsem
	if err == nil || errors.Is(err, rules.ErrNotInstalled) || errors.Is(err, ErrNotSetUp) ||
		errors.Is(err, ErrNoIPv6) || IsLocked(err) || ctx.Err() != nil {
		// A locked or cut-short batch leaves m in the index: a later
		// Remove finishes whatever part of it this one may have done.
		if err != nil {
			return fmt.Errorf("removing %s: %w", m.ID, err)
		}
		return nil
	}
	return b.removeLeft(ctx, m, err)
}

// removable checks that m is this process's, as installed, and finds its
// family.
func (b *Backend) removable(m rules.Mapping) (rules.Mapping, *family, error) {
	if !b.setUp {
		return m, nil, ErrNotSetUp
	}
	b.mu.Lock()
	o, ok := b.idx.Get(m.ID)
	b.mu.Unlock()
	if !ok || !mapindex.Same(o, m) {
		return m, nil, rules.ErrNotInstalled
	}
	f, err := b.familyOf(o)
	return o, f, err
}

// removeLeft runs after a failed removal batch, some of whose rules were
// perhaps gone already: it reads the family's rules back, with nothing
// else changing them, and deletes what is left of m.
func (b *Backend) removeLeft(ctx context.Context, m rules.Mapping, cause error) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("removing %s: %w; %w", m.ID, cause, err)
	}
	defer b.unlock()
	o, f, err := b.removable(m)
	if err != nil {
		// Removed, or swept by Setup or Flush, meanwhile.
		return fmt.Errorf("removing %s: %w", m.ID, err)
	}
	st, serr := b.save(ctx, f)
	if serr != nil {
		return fmt.Errorf("removing %s: %w; reading rules: %w", m.ID, cause, serr)
	}
	left := st.rulesOf(m.ID)
	if len(left) == 0 {
		b.del(o)
		return fmt.Errorf("removing %s: %w: its rules were deleted from outside pasvgate", m.ID, rules.ErrNotInstalled)
	}
	if err := b.restore(ctx, f, deleteScript(left)); err != nil {
		return fmt.Errorf("removing %s: %w", m.ID, err)
	}
	b.log.Warn("remove batch failed; deleted the mapping's remaining rules", "mapping", m.ID, "rules", len(left), "err", cause)
	b.del(o)
	return nil
}

// List returns the mappings whose rules are in pasvgate's chains, from one
// iptables-save per family, ordered by ID: every mapping, including those
// of another pasvgate process, not only this one's.
func (b *Backend) List(ctx context.Context) ([]rules.Mapping, error) {
	var out []rules.Mapping
	for _, f := range b.families() {
		st, err := b.save(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("listing %s mappings: %w", f.name, err)
		}
		out = append(out, st.mappings()...)
	}
	slices.SortFunc(out, func(a, b rules.Mapping) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Flush removes every pasvgate rule, the jumps to pasvgate's chains and the
// chains, interception included, in every enabled family, and nothing
// else: one iptables-save and, if there is anything to remove, one
// iptables-restore per family. Then it removes the TPROXY policy routing
// (see Intercept). Flushing a clean system is not an error. Setup must run
// again before Install or Intercept.
func (b *Backend) Flush(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("flushing: %w", err)
	}
	defer b.unlock()
	b.mu.Lock()
	b.idx, b.spent = mapindex.Index[srcPub, rules.Mapping]{}, nil
	b.mu.Unlock()
	b.setUp, b.ics = false, nil
	var errs []error
	for _, f := range b.families() {
		st, err := b.save(ctx, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("flushing %s: reading rules: %w", f.name, err))
			continue
		}
		text := flushScript(st)
		if text == "" {
			continue
		}
		if err := b.restore(ctx, f, text); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s: %w", f.name, err))
		}
	}
	// After the rules, so that no packet is marked for a route that is
	// gone.
	for _, f := range b.families() {
		if _, err := b.syncPolicy(f.v6, false); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s TPROXY policy routing: %w", f.name, err))
		}
	}
	return errors.Join(errs...)
}

// conflict returns the ID of an installed mapping that m duplicates: same
// ID, or same source and public address (Public's or Dialed's).
func (b *Backend) conflict(m rules.Mapping) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idx.Conflict(m)
}

// spKeys are the keys of m in idx, one per gateway address that admits
// its connection: a second mapping from the same source to the same
// public address (Public's or Dialed's) would make its DNAT rule
// unreachable.
func spKeys(m rules.Mapping) []srcPub {
	ks := []srcPub{{m.Source, m.Public}}
	if m.Dialed.IsValid() {
		ks = append(ks, srcPub{m.Source, netip.AddrPortFrom(m.Dialed, m.Public.Port())})
	}
	return ks
}

func (b *Backend) add(m rules.Mapping) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idx.Add(m)
}

func (b *Backend) del(m rules.Mapping) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idx.Delete(m)
	delete(b.spent, m.ID)
}

func (b *Backend) isSpent(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spent[id]
}

func (b *Backend) markSpent(ids map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id := range ids {
		b.spent[id] = true
	}
}

func (b *Backend) sortedIndex() []rules.Mapping {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idx.Sorted()
}
