package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/hostfw"
	"github.com/pasvgate/pasvgate/rules/iptables"
	"github.com/pasvgate/pasvgate/rules/nftables"
)

// Backend names, as --backend takes them.
const (
	backendAuto     = "auto"
	backendIptables = hostfw.Iptables
	backendNftables = hostfw.Nftables
)

// --host-firewall values.
const (
	hostFirewallAuto  = "auto"
	hostFirewallLeave = "leave"
)

// choice is the backend newBackend made, and why.
type choice struct {
	name   string // backendIptables or backendNftables
	reason string
	// hostFW keeps pasvgate's accept in the host's forward chains: set
	// for the nftables backend under --host-firewall auto, nil otherwise.
	hostFW *hostfw.Manager
	// repair is the backend's Repair, run before each check of hostFW.
	repair func(context.Context) (bool, error)
}

// newHostFW makes the host-firewall manager for cfg.
func newHostFW(be backendSpec, log *slog.Logger) *hostfw.Manager {
	return hostfw.New(hostfw.Config{Mark: be.connMark, Timeout: be.ruleTimeout, Logger: log})
}

// newBackend makes the kernel backend the config names; for "auto" it
// lets rules/hostfw choose, and logs the choice. With the nftables
// backend and --host-firewall auto, the choice carries the manager that
// keeps pasvgate's accept in the host's forward chains; run adds it.
// intercept says transparent mode intercepts, by method.
func newBackend(ctx context.Context, cfg backendSpec, intercept bool, method string, log *slog.Logger) (rules.Backend, choice, error) {
	var ch choice
	fw := newHostFW(cfg, log)
	manage := cfg.manageHostFW
	switch cfg.name {
	case backendNftables:
		ch = choice{name: backendNftables, reason: "--backend nftables"}
		if err := nftables.Available(); err != nil {
			return nil, ch, fmt.Errorf("--backend nftables: %w", err)
		}
		if !manage {
			// Chosen by hand, and the host's chains are the operator's:
			// warn, in case they do not accept pasvgate's mark yet.
			if b := fw.Blocking(ctx); len(b) > 0 {
				log.Warn("the host firewall's forward chains drop by default and accept nothing of pasvgate's, and --host-firewall is leave: "+
					"data connections will be dropped until they accept its conntrack mark (README, \"The nftables backend\")",
					"chains", b, "ctmark", fmt.Sprintf("0x%x", cfg.connMark))
			}
		}
	case backendIptables:
		ch = choice{name: backendIptables, reason: "--backend iptables"}
	default:
		if !intercept {
			method = ""
		}
		d := fw.Choose(ctx, method, manage)
		ch = choice{name: d.Backend, reason: d.Reason}
		log.Info("backend chosen", "backend", ch.name, "reason", ch.reason)
	}
	b, err := makeBackend(cfg, log, ch.name)
	if err == nil && ch.name == backendNftables && manage {
		ch.hostFW = fw
		// The accept is checked right after the backend's own tables,
		// which the same reload may have deleted.
		if r, ok := b.(interface {
			Repair(context.Context) (bool, error)
		}); ok {
			ch.repair = r.Repair
		}
	}
	return b, ch, err
}

// makeBackend makes the named backend.
func makeBackend(cfg backendSpec, log *slog.Logger, name string) (rules.Backend, error) {
	if name == backendNftables {
		b, err := nftables.New(nftables.Config{
			// The mapping's own timeout (backendSpec.mappingTimeout).
			Timeout: cfg.mappingTimeout,
			CtMark:  cfg.connMark,
			Logger:  log,
		})
		if err != nil {
			return nil, fmt.Errorf("--backend nftables: %w", err)
		}
		return b, nil
	}
	b, err := iptables.New(iptables.Config{
		Path:          cfg.iptablesPath,
		LockTimeout:   cfg.ruleTimeout,
		ConnMark:      cfg.connMark,
		CheckInterval: cfg.jumpCheck,
		Logger:        log,
	})
	if err != nil {
		return nil, fmt.Errorf("--iptables-path %s: %w", cfg.iptablesPath, err)
	}
	return b, nil
}

// rulesBackends are the backends `pasvgate rules list|flush` acts on: the
// one --backend names, or for auto each of the two this host can run, so
// that whatever the service chose (or an earlier version left) is found.
func rulesBackends(cfg backendSpec, log *slog.Logger) ([]rules.Backend, error) {
	if cfg.name != backendAuto {
		// No forward check: listing and flushing need no warning about
		// data connections.
		b, err := makeBackend(cfg, log, cfg.name)
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
func sweepOther(ctx context.Context, cfg backendSpec, chosen string, log *slog.Logger) {
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
