package main

import (
	"time"

	"github.com/pasvgate/pasvgate/nat"
)

// limitSpec is what bounds sessions and mappings, and the admin listener,
// parsed.
type limitSpec struct {
	dataPorts                     nat.PortRange
	idle, login, keepalive, dial  time.Duration
	drain                         time.Duration
	maxSessions, maxSessionsPerIP int
	maxMappingsPerIP, maxLine     int
	metrics                       *listenSpec // nil: no admin listener
	pprof                         bool
}

// parseLimits checks the limit and timeout keys, the data ports and the
// admin listener.
func (c Config) parseLimits() (limitSpec, error) {
	if c.MaxSessions < 0 || c.MaxSessionsPerIP < 0 {
		return limitSpec{}, badFlag("max-sessions", "limits must not be negative")
	}
	if c.MaxMappingsPerIP < 0 {
		return limitSpec{}, badFlag("max-mappings-per-ip", "must not be negative")
	}
	if c.LoginTimeout < 0 {
		return limitSpec{}, badFlag("login-timeout", "must not be negative")
	}
	if c.DrainTimeout < 0 {
		return limitSpec{}, badFlag("drain-timeout", "must not be negative")
	}
	if c.DebugPprof && c.Metrics == "" {
		return limitSpec{}, badFlag("debug-pprof", "needs --metrics")
	}
	l := limitSpec{
		idle: c.IdleTimeout, login: c.LoginTimeout, keepalive: c.Keepalive, dial: c.DialTimeout,
		drain: c.DrainTimeout, maxSessions: c.MaxSessions, maxSessionsPerIP: c.MaxSessionsPerIP,
		maxMappingsPerIP: c.MaxMappingsPerIP, maxLine: c.MaxLine, pprof: c.DebugPprof,
	}
	if c.Metrics != "" {
		sp, err := parseListen(c.Metrics)
		if err != nil {
			return limitSpec{}, badFlag("metrics", "%q: %v", c.Metrics, err)
		}
		l.metrics = &sp
	}
	var err error
	if l.dataPorts, err = parseDataPorts("data-ports", c.DataPorts); err != nil {
		return limitSpec{}, err
	}
	if err := positive(map[string]time.Duration{"idle-timeout": c.IdleTimeout, "dial-timeout": c.DialTimeout}); err != nil {
		return limitSpec{}, err
	}
	if c.MaxLine < 512 || c.MaxLine > 1<<20 {
		// RFC 959 replies and commands fit in far less, but RFC 1123
		// asks for at least 512 bytes of tolerance.
		return limitSpec{}, badFlag("max-line", "%d is outside 512-1048576", c.MaxLine)
	}
	return l, nil
}

// parseDataPorts parses a data port range, for the flag (or key) named.
func parseDataPorts(flag, s string) (nat.PortRange, error) {
	pr, err := nat.ParsePortRange(s)
	if err != nil {
		return pr, badFlag(flag, "%v", err)
	}
	if pr.Low < 1024 {
		return pr, badFlag(flag, "%v reaches below 1024: data ports must be unprivileged", pr)
	}
	return pr, nil
}
