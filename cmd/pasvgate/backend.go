package main

import (
	"fmt"
	"log/slog"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/iptables"
)

// newBackend makes the kernel backend the config names.
func newBackend(cfg Config, log *slog.Logger) (rules.Backend, error) {
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
