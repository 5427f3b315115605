package nftables

import (
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestContract runs the behaviour every backend shares against the kernel,
// each subtest in a fresh namespace.
func TestContract(t *testing.T) {
	netns.RequireRoot(t)
	rulestest.Run(t, func(t *testing.T) rules.Backend {
		return newBackend(t, netns.New(t, nsPrefix), Config{})
	}, rulestest.Options{IPv6: true, KeepsCreated: true})
}
