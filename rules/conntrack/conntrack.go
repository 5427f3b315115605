// Package conntrack deletes the kernel's connection-tracking entries of
// pasvgate's data connections.
//
// Removing a mapping's rules stops new data connections, but one already
// established keeps flowing: its NAT binding lives in its conntrack entry,
// not in the rule. That is what a finished transfer wants, and what a
// session that ended abnormally (the control connection dropped, the
// client timed out, the proxy is shutting down a session it no longer
// trusts) does not: the data connection would outlive everything that
// accounts for it. So package nat, after it has removed such a mapping's
// rules, asks a Flusher to delete the entries of the data connections the
// mapping admitted. Their next packets then find no binding and no rule,
// and reach the gateway itself, which resets them.
//
// The order matters: while the DNAT rule is still installed, a deleted
// entry is simply re-created, and NATed again, by the connection's next
// packet.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
)

const (
	// maxDumpAttempts bounds how often a deletion is repeated when the
	// kernel flags its table dump as interrupted (the table changed while
	// it was read, so entries may have been missed). Five is what
	// containernetworking's netlinksafe uses.
	maxDumpAttempts = 5
	// socketTimeout bounds each send and receive on the netlink socket,
	// so that a stuck kernel call cannot hang the mapping's teardown: the
	// library's calls take no context.
	socketTimeout = 10 * time.Second
)

// ErrClosed is returned by FlushFlows after Close.
var ErrClosed = errors.New("conntrack flusher closed")

// Flusher deletes the conntrack entries of a mapping's data connections.
// It is safe for concurrent use; calls share one netlink socket and so run
// one at a time.
//
// Each call dumps the whole conntrack table of the mapping's family and
// matches in userspace (the kernel cannot filter a dump by tuple through
// this library), so its cost grows with the table: it is meant for the
// rare abnormal teardown, not for every transfer.
type Flusher struct {
	// mu guards h: a closed handle must never be used, because the library
	// would then fall back to a socket in whatever namespace the calling
	// thread is in.
	mu sync.RWMutex
	h  *netlink.Handle
}

// New returns a Flusher bound to the network namespace of the calling
// thread: later calls act on that namespace's table whatever thread they
// run on. The caller must Close it.
func New() (*Flusher, error) {
	// NewHandle opens the socket in the calling thread's namespace, as
	// NewHandleAt would, but without setns(2), which needs CAP_SYS_ADMIN
	// even to enter the namespace one is in.
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a conntrack netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting the conntrack socket timeout: %w", err)
	}
	return &Flusher{h: h}, nil
}

// FlushFlows deletes every conntrack entry whose ORIGINAL tuple is TCP
// from m.Source to m.Public (address and port), i.e. the data
// connection(s) the mapping admitted, in m's family. It returns how many
// were deleted. Deleting nothing is not an error.
//
// ctx is checked before each attempt; a single attempt is bounded by the
// socket timeout rather than by ctx.
func (f *Flusher) FlushFlows(ctx context.Context, m rules.Mapping) (int, error) {
	deleted, err := f.flush(ctx, m)
	if err != nil {
		return deleted, fmt.Errorf("flushing flows of mapping %s: %w", m.ID, err)
	}
	return deleted, nil
}

func (f *Flusher) flush(ctx context.Context, m rules.Mapping) (int, error) {
	// A mapping that passed Validate has every address set and of one
	// family, so the filter below cannot come out broader than meant.
	if err := m.Validate(); err != nil {
		return 0, err
	}
	filter, family, err := flowFilter(m)
	if err != nil {
		return 0, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.h == nil {
		return 0, ErrClosed
	}
	total := 0
	err = retryInterrupted(ctx, func() error {
		// On an interrupted dump the library still deletes what it
		// matched and counts it; the retry finds the rest.
		n, err := f.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, filter)
		total += int(n)
		return err
	})
	return total, err
}

// retryInterrupted calls f again while it fails with
// netlink.ErrDumpInterrupted, at most maxDumpAttempts times in all, and
// not once ctx has ended. It is the only place the package retries.
func retryInterrupted(ctx context.Context, f func() error) error {
	var err error
	for range maxDumpAttempts {
		if cerr := ctx.Err(); cerr != nil {
			return errors.Join(err, cerr)
		}
		if err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// flowFilter matches the original tuple of m's data connections: TCP from
// Source to Public's address and port. IPv4 addresses go in their 4-byte
// form, as the library compares them with the entries'.
func flowFilter(m rules.Mapping) (*netlink.ConntrackFilter, netlink.InetFamily, error) {
	src, dst := net.IP(m.Source.AsSlice()), net.IP(m.Public.Addr().AsSlice())
	family := netlink.InetFamily(unix.AF_INET6)
	if !m.Is6() {
		src, dst = src.To4(), dst.To4()
		family = unix.AF_INET
	}
	var f netlink.ConntrackFilter
	err := errors.Join(
		// The protocol must come first: AddPort refuses a filter without one.
		f.AddProtocol(unix.IPPROTO_TCP),
		f.AddIP(netlink.ConntrackOrigSrcIP, src),
		f.AddIP(netlink.ConntrackOrigDstIP, dst),
		f.AddPort(netlink.ConntrackOrigDstPort, m.Public.Port()),
	)
	if err != nil {
		return nil, 0, fmt.Errorf("building the conntrack filter: %w", err)
	}
	return &f, family, nil
}

// Close releases the netlink socket. Later FlushFlows calls return
// ErrClosed; closing twice is harmless.
func (f *Flusher) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.h != nil {
		f.h.Close()
		f.h = nil
	}
	return nil
}
