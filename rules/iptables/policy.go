package iptables

import (
	"github.com/pasvgate/pasvgate/rules/internal/policyroute"
)

// TPROXY leaves an intercepted packet addressed to the server, so the
// routing decision would forward it: package policyroute makes the policy
// routing that delivers it locally, the same for both backends. It is
// made over netlink, in the network namespace of the calling thread, as
// the iptables binaries are run there too.

// policy is the backend's policy routing configuration.
func (b *Backend) policy() policyroute.Config {
	return policyConfig(b.cfg)
}

func policyConfig(cfg Config) policyroute.Config {
	return policyroute.Config{
		Mark:     cfg.TProxyMark,
		Table:    cfg.TProxyTable,
		Priority: cfg.TProxyPriority,
		Timeout:  cfg.ExecTimeout,
	}
}

// checkTProxyConfig refuses a table or priority that would not work or
// would take over someone else's (see policyroute.Config.Check).
func checkTProxyConfig(cfg Config) error {
	return policyConfig(cfg).Check()
}

// syncPolicy makes one family's TPROXY policy routing present (on) or
// absent, and reports how many rules and routes it removed (see
// policyroute.Sync).
func (b *Backend) syncPolicy(v6 bool, on bool) (removed int, err error) {
	return policyroute.Sync(b.policy(), v6, on)
}
