package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/iptables"
	"github.com/pasvgate/pasvgate/rules/nftables"
)

// Backend names, as --backend takes them.
const (
	backendAuto     = "auto"
	backendIptables = "iptables"
	backendNftables = "nftables"
)

// choice is the backend newBackend made, and why.
type choice struct {
	name   string // backendIptables or backendNftables
	reason string
}

// newBackend makes the kernel backend the config names; for "auto" it
// chooses (see chooseBackend) and logs the choice.
func newBackend(cfg Config, log *slog.Logger) (rules.Backend, choice, error) {
	var ch choice
	switch cfg.Backend {
	case backendNftables:
		ch = choice{backendNftables, "--backend nftables"}
		if err := nftables.Available(); err != nil {
			return nil, ch, fmt.Errorf("--backend nftables: %w", err)
		}
		// Chosen by hand: warn, in case the operator has not yet added
		// the one forward rule this backend needs.
		if b := forwardBlockers(cfg, log); len(b) > 0 {
			log.Warn("the host firewall's forward chains drop by default and accept nothing of pasvgate's: "+
				"data connections will be dropped until they accept its conntrack mark (README, \"The nftables backend\")",
				"chains", b, "ctmark", fmt.Sprintf("0x%x", cfg.ConnMark))
		}
	case backendIptables:
		ch = choice{backendIptables, "--backend iptables"}
	default:
		ch = chooseBackend(cfg, log)
	}
	if cfg.Backend == backendAuto {
		log.Info("backend chosen", "backend", ch.name, "reason", ch.reason)
	}
	b, err := makeBackend(cfg, log, ch.name)
	return b, ch, err
}

// chooseBackend is --backend auto: nftables when this kernel can run it
// and the host's firewall lets its data connections through (a forward
// chain that drops by default needs a rule for pasvgate's mark, which
// pasvgate does not add; the iptables backend needs none, because it
// inserts a jump into FORWARD), and when --intercept is asked for, if the
// kernel has what the nftables backend intercepts with. iptables
// otherwise.
func chooseBackend(cfg Config, log *slog.Logger) choice {
	if err := nftables.Available(); err != nil {
		return choice{backendIptables, err.Error()}
	}
	if cfg.Intercept != "" {
		if err := nftables.AvailableIntercept(cfg.InterceptMethod); err != nil {
			return choice{backendIptables, "--intercept: " + err.Error()}
		}
	}
	if b := forwardBlockers(cfg, log); len(b) > 0 {
		return choice{backendIptables, fmt.Sprintf(
			"the host firewall's forward chain %s drops by default and has no rule accepting conntrack mark 0x%x, "+
				"which the nftables backend needs (README, \"The nftables backend\")", strings.Join(b, ", "), cfg.ConnMark)}
	}
	return choice{backendNftables, "the kernel supports it and the host firewall's forward chains let its data connections through"}
}

// makeBackend makes the named backend.
func makeBackend(cfg Config, log *slog.Logger, name string) (rules.Backend, error) {
	if name == backendNftables {
		b, err := nftables.New(nftables.Config{
			// An element lives as long as a mapping may wait for its
			// data connection; established flows outlive it in conntrack.
			Timeout: cfg.DataConnectTimeout,
			CtMark:  cfg.ConnMark,
			Logger:  log,
		})
		if err != nil {
			return nil, fmt.Errorf("--backend nftables: %w", err)
		}
		return b, nil
	}
	b, err := iptables.New(iptables.Config{
		Path:          cfg.IptablesPath,
		LockTimeout:   cfg.RuleTimeout,
		ConnMark:      cfg.ConnMark,
		CheckInterval: cfg.JumpCheckInterval,
		Logger:        log,
	})
	if err != nil {
		return nil, fmt.Errorf("--iptables-path %s: %w", cfg.IptablesPath, err)
	}
	return b, nil
}

// forwardBlockers names the host's forward chains that would drop the
// nftables backend's data connections: nf_tables ones (which also covers
// iptables-nft) and iptables-legacy's FORWARD in either family. A check
// that cannot run is logged and counts as no blocker.
func forwardBlockers(cfg Config, log *slog.Logger) []string {
	out, err := nftables.ForwardBlockers(cfg.ConnMark)
	if err != nil {
		log.Warn("could not read the host's nftables forward chains", "err", err)
	}
	for _, fam := range []struct {
		names string
		proto goipt.Protocol
		label string
	}{
		{"/proc/net/ip_tables_names", goipt.ProtocolIPv4, "iptables-legacy filter FORWARD"},
		{"/proc/net/ip6_tables_names", goipt.ProtocolIPv6, "ip6tables-legacy filter FORWARD"},
	} {
		// The file lists the legacy tables that exist in this network
		// namespace. Listing a table that does not exist would create it
		// (and hook it into the stack), so only look when it is there.
		names, err := os.ReadFile(fam.names)
		if err != nil || !strings.Contains("\n"+string(names), "\nfilter\n") {
			continue
		}
		path := "iptables-legacy"
		if fam.proto == goipt.ProtocolIPv6 {
			path = "ip6tables-legacy"
		}
		ipt, err := goipt.New(goipt.Path(path), goipt.IPFamily(fam.proto), goipt.Timeout(int(cfg.RuleTimeout.Seconds())))
		if err != nil {
			log.Warn("could not read the host's legacy FORWARD chain", "iptables", path, "err", err)
			continue
		}
		lines, err := ipt.List("filter", "FORWARD")
		if err != nil {
			log.Warn("could not read the host's legacy FORWARD chain", "iptables", path, "err", err)
			continue
		}
		if legacyBlocks(lines, cfg.ConnMark) {
			out = append(out, fam.label)
		}
	}
	return out
}

// legacyBlocks reads `iptables -S FORWARD`: a policy of DROP and no rule
// in the chain itself that accepts the mark (`-m connmark --mark X/M`
// with M sharing a bit of mark) or every DNATed connection (`--ctstate
// DNAT`).
func legacyBlocks(lines []string, mark uint32) bool {
	if !slices.Contains(lines, "-P FORWARD DROP") {
		return false
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "-A" || !strings.HasSuffix(l, "-j ACCEPT") || strings.Contains(l, " ! ") {
			continue
		}
		for i := 1; i+1 < len(f); i++ {
			switch f[i] {
			case "--ctstate":
				if strings.Contains(","+f[i+1]+",", ",DNAT,") {
					return false
				}
			case "--mark":
				if f[i-1] != "connmark" {
					continue
				}
				_, m, ok := strings.Cut(f[i+1], "/")
				if !ok {
					m = "0xffffffff"
				}
				if v, err := strconv.ParseUint(m, 0, 32); err == nil && uint32(v)&mark != 0 {
					return false
				}
			}
		}
	}
	return true
}

// rulesBackends are the backends `pasvgate rules list|flush` acts on: the
// one --backend names, or for auto each of the two this host can run, so
// that whatever the service chose (or an earlier version left) is found.
func rulesBackends(cfg Config, log *slog.Logger) ([]rules.Backend, error) {
	if cfg.Backend != backendAuto {
		// No forward check: listing and flushing need no warning about
		// data connections.
		b, err := makeBackend(cfg, log, cfg.Backend)
		if err != nil {
			return nil, err
		}
		return []rules.Backend{b}, nil
	}
	var bs []rules.Backend
	var errs []error
	if err := nftables.Available(); err == nil {
		b, err := makeBackend(cfg, log, backendNftables)
		if err != nil {
			errs = append(errs, err)
		} else {
			bs = append(bs, b)
		}
	}
	if b, err := makeBackend(cfg, log, backendIptables); err == nil {
		bs = append(bs, b)
	} else if len(bs) == 0 {
		errs = append(errs, err)
	}
	if len(bs) == 0 {
		return nil, errors.Join(errs...)
	}
	return bs, nil
}

// sweepOther removes the mappings that the backend run did not choose
// holds, left by an earlier process that used it (an upgrade that changed
// the default, a changed --backend): they would admit their clients until
// someone flushed them. It is best effort and only logs; a backend that
// cannot run here has nothing to sweep.
func sweepOther(ctx context.Context, cfg Config, chosen string, log *slog.Logger) {
	other := backendIptables
	if chosen == backendIptables {
		other = backendNftables
		if nftables.Available() != nil {
			return
		}
	}
	b, err := makeBackend(cfg, slog.New(slog.DiscardHandler), other)
	if err != nil {
		return
	}
	if c, ok := b.(interface{ Close() error }); ok {
		defer c.Close()
	}
	ms, err := b.List(ctx)
	if err != nil || len(ms) == 0 {
		return
	}
	if err := b.Flush(ctx); err != nil {
		log.Warn("could not remove mappings left in the other backend", "backend", other, "count", len(ms), "err", err)
		return
	}
	log.Info("removed mappings left in the other backend by an earlier process", "backend", other, "count", len(ms))
}
