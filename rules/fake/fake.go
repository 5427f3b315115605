// Package fake is an in-memory rules.Backend for tests of everything above
// the kernel (nat, proxy). It behaves like a strict kernel: it refuses to
// install before Setup, refuses duplicates, refuses to remove what is not
// installed, and records every operation so that a test can assert exactly
// what was asked of it. It can be told to fail, to exercise 425 and
// rollback paths. Connect plays the kernel's datapath: like the real
// backends, the fake admits one connection per mapping.
package fake

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/pasvgate/pasvgate/rules"
)

// ErrNotSetUp is returned by Install and Remove before Setup, the way a
// kernel refuses a rule that jumps to a chain that does not exist.
var ErrNotSetUp = errors.New("fake backend: not set up")

// ErrInjected is the default error of an injected failure.
var ErrInjected = errors.New("fake backend: injected failure")

// Op is one recorded operation.
type Op struct {
	// Kind is "install" or "remove".
	Kind string
	// Mapping is what was asked.
	Mapping rules.Mapping
	// Err is what the backend answered.
	Err error
}

// Backend is the fake. The zero value is ready to use.
type Backend struct {
	mu        sync.Mutex
	setUp     bool
	installed map[string]rules.Mapping
	// used holds the IDs of installed mappings that admitted their
	// connection.
	used map[string]bool
	ops  []Op
	// failInstall is consulted before each Install; a non-nil result fails it.
	failInstall func(rules.Mapping) error
	failRemove  func(rules.Mapping) error
	// installed is signalled to waiters of WaitEmpty on every change.
	changed chan struct{}
	// batches are the sizes of the RemoveBatch calls, in order.
	batches []int
}

var (
	_ rules.Backend      = (*Backend)(nil)
	_ rules.BatchRemover = (*Backend)(nil)
)

// FailInstall makes every later Install for which f returns an error fail
// with it, before anything is recorded as installed. nil clears it.
func (b *Backend) FailInstall(f func(rules.Mapping) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failInstall = f
}

// FailRemove is FailInstall for Remove. A failed Remove leaves the mapping
// installed, as a kernel would.
func (b *Backend) FailRemove(f func(rules.Mapping) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failRemove = f
}

// Setup marks the backend ready and, like a real backend sweeping an earlier
// process's leftovers, drops anything installed.
func (b *Backend) Setup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setUp = true
	b.installed = map[string]rules.Mapping{}
	b.used = map[string]bool{}
	b.notify()
	return nil
}

// Install records m as installed.
func (b *Backend) Install(_ context.Context, m rules.Mapping) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.install(m)
	b.ops = append(b.ops, Op{Kind: "install", Mapping: m, Err: err})
	return err
}

func (b *Backend) install(m rules.Mapping) error {
	if !b.setUp {
		return ErrNotSetUp
	}
	if err := m.Validate(); err != nil {
		return err
	}
	if b.failInstall != nil {
		if err := b.failInstall(m); err != nil {
			return fmt.Errorf("installing %s: %w", m.ID, err)
		}
	}
	for _, o := range b.installed {
		if o.ID == m.ID || o.Source == m.Source && sharesAddr(o, m) {
			return fmt.Errorf("installing %s: %w (as %s)", m.ID, rules.ErrExists, o.ID)
		}
	}
	b.installed[m.ID] = m
	b.notify()
	return nil
}

// sharesAddr reports whether a and b admit connections to one gateway
// address and port: Public or Dialed, either way round.
func sharesAddr(a, b rules.Mapping) bool {
	addrs := func(m rules.Mapping) []netip.AddrPort {
		out := []netip.AddrPort{m.Public}
		if m.Dialed.IsValid() {
			out = append(out, netip.AddrPortFrom(m.Dialed, m.Public.Port()))
		}
		return out
	}
	for _, x := range addrs(a) {
		if slices.Contains(addrs(b), x) {
			return true
		}
	}
	return false
}

// Remove deletes m; m must match what was installed under its ID exactly.
func (b *Backend) Remove(_ context.Context, m rules.Mapping) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.remove(m)
	b.ops = append(b.ops, Op{Kind: "remove", Mapping: m, Err: err})
	return err
}

// RemoveBatch removes each of ms as Remove does, recording a "remove" op
// for each, and the batch's size (Batches).
func (b *Backend) RemoveBatch(_ context.Context, ms []rules.Mapping) []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches = append(b.batches, len(ms))
	errs := make([]error, len(ms))
	for i, m := range ms {
		errs[i] = b.remove(m)
		b.ops = append(b.ops, Op{Kind: "remove", Mapping: m, Err: errs[i]})
	}
	return errs
}

// Batches returns the sizes of the RemoveBatch calls so far, in order.
func (b *Backend) Batches() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.batches)
}

func (b *Backend) remove(m rules.Mapping) error {
	if !b.setUp {
		return ErrNotSetUp
	}
	o, ok := b.installed[m.ID]
	if !ok || o != m {
		return fmt.Errorf("removing %s: %w", m.ID, rules.ErrNotInstalled)
	}
	if b.failRemove != nil {
		if err := b.failRemove(m); err != nil {
			return fmt.Errorf("removing %s: %w", m.ID, err)
		}
	}
	delete(b.installed, m.ID)
	delete(b.used, m.ID)
	b.notify()
	return nil
}

// Connect is a new data connection from from to to, as the kernel would
// see it: it reports the mapping that admits it, if any. A mapping admits
// one connection, the first: Connect uses it up, as the real backends'
// kernel rules do, and it stays installed until Remove.
func (b *Backend) Connect(from netip.Addr, to netip.AddrPort) (rules.Mapping, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, m := range b.installed {
		dialed := m.Dialed.IsValid() && netip.AddrPortFrom(m.Dialed, m.Public.Port()) == to
		if m.Source == from && (m.Public == to || dialed) && !b.used[id] {
			b.used[id] = true
			return m, true
		}
	}
	return rules.Mapping{}, false
}

// List returns the installed mappings ordered by ID.
func (b *Backend) List(context.Context) ([]rules.Mapping, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]rules.Mapping, 0, len(b.installed))
	for _, m := range b.installed {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b rules.Mapping) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out, nil
}

// Flush removes everything and forgets Setup.
func (b *Backend) Flush(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.installed, b.used = nil, nil
	b.setUp = false
	b.notify()
	return nil
}

// Ops returns a copy of every operation so far, in order.
func (b *Backend) Ops() []Op {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.ops)
}

// Count returns how many successful operations of kind ("install" or
// "remove") were recorded.
func (b *Backend) Count(kind string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, o := range b.ops {
		if o.Kind == kind && o.Err == nil {
			n++
		}
	}
	return n
}

// Len returns how many mappings are installed now.
func (b *Backend) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.installed)
}

// Changed returns a channel that is closed at the next change of the
// installed set, so that tests can wait for asynchronous removals without
// sleeping in a loop.
func (b *Backend) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	return b.changed
}

func (b *Backend) notify() {
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
}
