package lab

import (
	"context"
	"errors"
	"sort"
	"testing"
)

// CustomOptions describe a lab whose network the caller builds
// (NewCustom): more namespaces than a gateway lab's three, such as a pair
// of gateways sharing a virtual address.
type CustomOptions struct {
	// NSPrefix is the namespaces' prefix, required: the suite sweeps its
	// own leftovers with SweepPrefix.
	NSPrefix string
	// Extra lists the roles of the namespaces besides the client ("c"),
	// the gateway ("g") and the server ("s"): each a short name without
	// "-", so that SweepPrefix recognises the namespace. Lab.Extra maps
	// each role to its namespace.
	Extra []string
	// ServerAddr is where StartServer's servers listen in the server
	// namespace.
	ServerAddr string
	// IPTables is the iptables binary the caller uses; empty means
	// DefaultIPTables.
	IPTables string
	// Build makes the links, addresses, routes and firewall, once every
	// namespace exists. It must not touch the host's own namespace.
	Build func(ctx context.Context, l *Lab) error
}

// NewCustom builds a lab of the caller's own topology for tb: the
// namespaces are made, Build connects them, and Close (registered with
// tb.Cleanup) stops the lab's processes and deletes every namespace,
// Extra ones included. StartServer, the clients and Start work as in a
// gateway lab.
func NewCustom(tb testing.TB, opt CustomOptions) *Lab {
	tb.Helper()
	if opt.NSPrefix == "" || opt.Build == nil || opt.ServerAddr == "" {
		tb.Fatal("lab: NewCustom needs NSPrefix, ServerAddr and Build")
	}
	l := newLab(tb, opt.NSPrefix, "c", "g", "s", opt.IPTables)
	base := l.Client[:len(l.Client)-1]
	l.Extra = make(map[string]string, len(opt.Extra))
	for _, role := range opt.Extra {
		l.Extra[role] = base + role
	}
	l.serverAddr = opt.ServerAddr
	l.build = func(ctx context.Context) error {
		if len(l.Extra) != len(opt.Extra) {
			return errors.New("lab: NewCustom: duplicate Extra roles")
		}
		return opt.Build(ctx, l)
	}
	l.create(tb)
	return l
}

// namespaces lists every namespace of the lab: the three of every lab,
// then a custom lab's extra ones in a fixed order.
func (l *Lab) namespaces() []string {
	ns := []string{l.Client, l.GW, l.Server}
	roles := make([]string, 0, len(l.Extra))
	for r := range l.Extra {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	for _, r := range roles {
		ns = append(ns, l.Extra[r])
	}
	return ns
}
