package hostfw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout is the default Config.Timeout.
const DefaultTimeout = 5 * time.Second

// DefaultInterval is how often Run checks the host's forward chains: a
// reloaded firewall stalls pasvgate's established data connections for
// at most about this long (TCP retransmits carry them over), and a check
// costs one netlink dump, plus two iptables-legacy execs per family where
// the legacy filter table exists.
const DefaultInterval = 2 * time.Second

// Config configures a Manager. The zero value is usable.
type Config struct {
	// Mark is the conntrack mark bit (or bits) the accept matches:
	// --connmark. Default 0x10000000.
	Mark uint32
	// Timeout bounds each netlink dump and each iptables exec (xtables
	// lock wait included). Default DefaultTimeout.
	Timeout time.Duration
	// Logger receives what is added, put back and removed. Default
	// slog.Default().
	Logger *slog.Logger
}

// Manager reads the host's forward chains and adds, checks and removes
// pasvgate's accept in them. It works in the network namespace of the
// thread that calls it (the process's own, in pasvgate). Safe for
// concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	// xtMu guards xts, the go-iptables handles by binary: making one
	// runs the binary once.
	xtMu sync.Mutex
	xts  map[string]*xtables
	// legacyOnce warns once that iptables-legacy's tables cannot be read.
	legacyOnce sync.Once

	mu sync.Mutex
	// added holds the chains (by String) this Manager put its accept
	// in: finding one of them without it again means the host's
	// firewall was reloaded, which is logged as a warning.
	added map[string]bool
}

// New makes a Manager. It changes nothing.
func New(cfg Config) *Manager {
	if cfg.Mark == 0 {
		cfg.Mark = 0x10000000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{cfg: cfg, log: cfg.Logger.With("host_firewall", "auto"), added: map[string]bool{}, xts: map[string]*xtables{}}
}

// Inspect reads the host's forward chains: every nf_tables base chain on
// the forward hook (native, or iptables-nft's FORWARD) and
// iptables-legacy's FORWARD of each family whose filter table exists. It
// changes nothing. Chains are sorted by String.
func (m *Manager) Inspect(ctx context.Context) ([]Chain, error) {
	x, err := dialNFT(m.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	out, err := x.readNFT(m.cfg.Mark)
	x.close()
	if err != nil {
		return nil, err
	}
	for _, v6 := range []bool{false, true} {
		ok, err := legacyTableExists(v6)
		if err != nil {
			// Without CAP_DAC_READ_SEARCH, which only the unit for
			// iptables-legacy hosts grants: elsewhere the kernel's
			// ip_tables is loaded but unused, and a warning at every
			// start would be noise. Said once, at debug.
			m.legacyOnce.Do(func() {
				m.log.Debug("cannot tell whether iptables-legacy has a FORWARD chain: its forward policy is not checked", "err", err)
			})
		}
		if !ok {
			continue
		}
		ipt, err := m.iptables(IptablesLegacy, v6)
		if err != nil {
			return nil, err
		}
		lines, err := ipt.list(ctx, "FORWARD")
		if err != nil {
			return nil, err
		}
		own, _ := ipt.list(ctx, ChainName) // an error: no such chain
		out = append(out, readLegacy(familyName(v6), lines, own, m.cfg.Mark))
	}
	slices.SortFunc(out, func(a, b Chain) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

func familyName(v6 bool) string {
	if v6 {
		return "ip6"
	}
	return "ip"
}

// Tools says, per kind of chain, why pasvgate could not write its accept
// there: the binary it writes with is not installed. Native chains need
// none.
func Tools() map[Kind]error {
	out := map[Kind]error{Native: nil}
	for _, k := range []Kind{IptablesNFT, IptablesLegacy} {
		for _, v6 := range []bool{false, true} {
			if _, err := exec.LookPath(binaryOf(k, v6)); err != nil {
				out[k] = errors.Join(out[k], fmt.Errorf("%s not found", binaryOf(k, v6)))
			}
		}
	}
	return out
}

// Ensure puts pasvgate's accept into every forward chain that needs it
// (Chain.Blocks) and lacks it, and reports how many it added. The first
// addition to a chain is logged at info; putting it back after it went
// (a firewall reload) is logged as a warning.
func (m *Manager) Ensure(ctx context.Context) (int, error) {
	chains, err := m.Inspect(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading the host's forward chains: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	var errs []error
	for _, c := range chains {
		if !c.Blocks() || c.Ours {
			continue
		}
		if err := m.add(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("adding pasvgate's accept to %s: %w", c, err))
			continue
		}
		n++
		if m.added[c.String()] {
			m.log.Warn("the host firewall's forward chain lost pasvgate's accept (was the firewall reloaded?); put it back",
				"chain", c.String(), "ctmark", fmt.Sprintf("0x%x", m.cfg.Mark))
		} else {
			m.log.Info("added an accept for pasvgate's conntrack mark at the top of the host firewall's forward chain",
				"chain", c.String(), "ctmark", fmt.Sprintf("0x%x", m.cfg.Mark), "comment", Comment)
		}
		m.added[c.String()] = true
	}
	return n, errors.Join(errs...)
}

func (m *Manager) add(ctx context.Context, c Chain) error {
	if c.Kind == Native {
		return m.addNative(c)
	}
	ipt, err := m.iptables(c.Kind, c.Family == "ip6")
	if err != nil {
		return err
	}
	return ipt.ensure(ctx, c.Table, m.cfg.Mark)
}

// Run calls repair, if not nil, then Ensure, every interval
// (DefaultInterval if not positive) until ctx ends. repair is the nftables
// backend's Repair, which puts its own tables back when a reload deleted
// the whole ruleset; such a reload took pasvgate's accept with it, which
// the same check then puts back. Failures are logged, and tried again at
// the next tick.
func (m *Manager) Run(ctx context.Context, interval time.Duration, repair func(context.Context) (bool, error)) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, 4*m.cfg.Timeout)
			if repair != nil {
				if _, err := repair(cctx); err != nil && ctx.Err() == nil {
					m.log.Warn("checking pasvgate's own tables", "err", err)
				}
			}
			if _, err := m.Ensure(cctx); err != nil && ctx.Err() == nil {
				m.log.Warn("checking the host firewall's forward chains", "err", err)
			}
			cancel()
		}
	}
}

// Remove deletes everything of pasvgate's in the host's firewall, and
// nothing else: native rules carrying Comment, in any chain of family ip,
// ip6 or inet; and, for iptables-nft and iptables-legacy in each family,
// the jumps to ChainName in FORWARD and the chain itself. It reports how
// many rules and chains it deleted. Removing from a clean system is not an
// error.
func (m *Manager) Remove(ctx context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	n, err := m.removeNative()
	if err != nil && !noNFTables(err) {
		errs = append(errs, err)
	}
	nftTables, err := m.iptablesNFTOwnChains()
	if err != nil && !noNFTables(err) {
		errs = append(errs, err)
	}
	for _, t := range nftTables {
		ipt, err := m.iptables(IptablesNFT, t.v6)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		k, err := ipt.remove(ctx, t.table)
		n += k
		errs = append(errs, err)
	}
	for _, v6 := range []bool{false, true} {
		// Unreadable without CAP_DAC_READ_SEARCH, which only hosts on
		// iptables-legacy grant (and there it is readable): elsewhere
		// there is no legacy chain of pasvgate's to remove.
		if ok, _ := legacyTableExists(v6); !ok {
			continue
		}
		ipt, err := m.iptables(IptablesLegacy, v6)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := ipt.list(ctx, ChainName); err != nil {
			continue // no such chain
		}
		k, err := ipt.remove(ctx, "filter")
		n += k
		errs = append(errs, err)
	}
	clear(m.added)
	if n > 0 {
		m.log.Info("removed pasvgate's accept from the host firewall", "rules_and_chains", n)
	}
	return n, errors.Join(errs...)
}

// noNFTables reports whether err is the kernel saying it has no nf_tables
// (a kernel with x_tables only), where nothing of pasvgate's can be in
// nf_tables chains.
func noNFTables(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENOENT)
}
