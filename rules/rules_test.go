package rules_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/rulestest"
)

// TestValidateDialed checks that a Dialed address is held to the rules of
// the others, and must differ from Public's: a mapping that could make a
// rule of the other family, or a second copy of its own, is refused.
func TestValidateDialed(t *testing.T) {
	for _, c := range []struct {
		dialed string
		ok     bool
	}{
		{"", true},
		{"203.0.113.1", true},
		{"203.0.113.2", false}, // Public's address
		{"2001:db8:1::1", false},
		{"::ffff:203.0.113.1", false},
		{"0.0.0.0", false},
		{"fe80::1%eth0", false},
	} {
		m := rulestest.Sample("m-1", 40001)
		if c.dialed != "" {
			m.Dialed = netip.MustParseAddr(c.dialed)
		}
		err := m.Validate()
		if ok := err == nil; ok != c.ok || !ok && !errors.Is(err, rules.ErrInvalid) {
			t.Errorf("Dialed %q: Validate = %v, want ok %v", c.dialed, err, c.ok)
		}
	}
}
