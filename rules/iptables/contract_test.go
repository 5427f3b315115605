package iptables

import (
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
	"github.com/pasvgate/pasvgate/test/netns"
)

// TestContract runs the behaviour every backend shares against the kernel,
// each subtest in a fresh namespace, with each backend binary.
func TestContract(t *testing.T) {
	netns.RequireRoot(t)
	forEachBinary(t, func(t *testing.T, path string) {
		rulestest.Run(t, func(t *testing.T) rules.Backend {
			return newBackend(t, netns.New(t, nsPrefix), path, Config{})
		}, rulestest.Options{IPv6: true, KeepsCreated: true})
	})
}
