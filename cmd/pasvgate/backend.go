package main

import (
	"errors"
	"log/slog"

	"github.com/pasvgate/pasvgate/rules"
)

// newBackend makes the kernel backend the config names.
func newBackend(cfg Config, log *slog.Logger) (rules.Backend, error) {
	return nil, errors.New("iptables backend: not yet wired")
}
