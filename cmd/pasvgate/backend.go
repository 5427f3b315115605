package main

import (
	"fmt"
	"log/slog"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/iptables"
	"github.com/pasvgate/pasvgate/rules/nftables"
)

// newBackend makes the kernel backend the config names.
func newBackend(cfg Config, log *slog.Logger) (rules.Backend, error) {
	if cfg.Backend == "nftables" {
		if err := nftables.Available(); err != nil {
			return nil, fmt.Errorf("--backend nftables: %w", err)
		}
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
