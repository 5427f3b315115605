package main

import "time"

// backendSpec is the kernel backend's settings, parsed: all `pasvgate
// rules` needs, and what run sets the backend up with.
type backendSpec struct {
	name         string // backendAuto, backendIptables or backendNftables
	iptablesPath string
	ruleTimeout  time.Duration
	connMark     uint32
	jumpCheck    time.Duration
	// manageHostFW is --host-firewall auto.
	manageHostFW bool
	// mappingTimeout is --data-connect-timeout: how long a mapping waits
	// for its data connection. It is both nat's connect timeout and the
	// nftables element's kernel timeout, so the two can never disagree:
	// an element lives as long as its mapping may wait, and established
	// flows outlive it in conntrack.
	mappingTimeout time.Duration
}

// parseBackend checks the backend keys. `pasvgate rules` runs it alone.
func (c Config) parseBackend() (backendSpec, error) {
	if c.Backend != backendAuto && c.Backend != backendIptables && c.Backend != backendNftables {
		return backendSpec{}, badFlag("backend", "%q: want auto, iptables or nftables", c.Backend)
	}
	if c.IptablesPath == "" {
		return backendSpec{}, badFlag("iptables-path", "must not be empty")
	}
	if c.ConnMark == 0 {
		return backendSpec{}, badFlag("connmark", "must have at least one bit set")
	}
	if c.JumpCheckInterval < 0 {
		return backendSpec{}, badFlag("jump-check-interval", "must not be negative")
	}
	if c.HostFirewall != hostFirewallAuto && c.HostFirewall != hostFirewallLeave {
		return backendSpec{}, badFlag("host-firewall", "%q: want auto or leave", c.HostFirewall)
	}
	if err := positive(map[string]time.Duration{"rule-timeout": c.RuleTimeout, "data-connect-timeout": c.DataConnectTimeout}); err != nil {
		return backendSpec{}, err
	}
	return backendSpec{
		name: c.Backend, iptablesPath: c.IptablesPath, ruleTimeout: c.RuleTimeout,
		connMark: c.ConnMark, jumpCheck: c.JumpCheckInterval,
		manageHostFW:   c.HostFirewall == hostFirewallAuto,
		mappingTimeout: c.DataConnectTimeout,
	}, nil
}
