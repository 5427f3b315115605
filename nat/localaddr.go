package nat

// This file answers "is this address one of this host's?" for the proxy
// (Server.IsLocal): the run command starts WatchLocal and hands its Has
// method over. It is asked on every PASV with --public-addr, every
// PORT/EPRT and every transparent-mode session.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LocalAddrs knows the addresses of this host, in the network namespace
// WatchLocal was called in. Listing them is a netlink dump of every
// address, which on the PASV path cost more than the nftables install
// itself (the CPU profile of `make bench -cpuprofile`), so the list is
// kept and listed again only after the kernel reports an address change.
//
// It stays exact rather than merely recent: gen counts the address events
// seen (and anything that may have lost one: an error the subscription
// reports, a resubscription), and a kept list is used only if no event
// came since it was taken. While there is no working subscription every
// call lists.
type LocalAddrs struct {
	log *slog.Logger
	ns  netns.NsHandle
	// hmu guards h, which run closes and clears when it stops.
	hmu sync.RWMutex
	h   *netlink.Handle

	gen        atomic.Uint64
	subscribed atomic.Bool

	mu     sync.Mutex
	set    map[netip.Addr]bool
	setGen uint64

	// listed, if set, is called after every listing. Tests count them.
	listed func()

	stopped chan struct{}
}

// WatchLocal starts following this host's addresses in the current
// network namespace, that of the calling thread, until ctx ends; call
// Wait after cancelling ctx. It fails only if the netlink socket to list
// them cannot be opened.
func WatchLocal(ctx context.Context, log *slog.Logger) (*LocalAddrs, error) {
	return watchLocal(ctx, log, nil)
}

func watchLocal(ctx context.Context, log *slog.Logger, listed func()) (*LocalAddrs, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("following local addresses: opening the current network namespace: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // no setns: see nsOption
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("following local addresses: opening a netlink socket: %w", err)
	}
	l := &LocalAddrs{log: log, ns: ns, h: h, listed: listed, stopped: make(chan struct{})}
	go l.run(ctx)
	return l, nil
}

// Has reports whether a is assigned to this host. If the addresses cannot
// be listed it says yes, the answer that keeps the caller's behaviour for
// a local public address. It is safe for concurrent use.
func (l *LocalAddrs) Has(a netip.Addr) bool {
	g := l.gen.Load()
	if l.subscribed.Load() {
		l.mu.Lock()
		set, ok := l.set, l.set != nil && l.setGen == g
		l.mu.Unlock()
		if ok {
			return set[a]
		}
	}
	set, err := l.list()
	if err != nil {
		return true
	}
	if l.subscribed.Load() {
		l.mu.Lock()
		l.set, l.setGen = set, g
		l.mu.Unlock()
	}
	return set[a]
}

// Wait blocks until the goroutine has stopped after the context given to
// WatchLocal ended. From then on its socket is closed and Has says yes to
// every address, as when the addresses cannot be listed.
func (l *LocalAddrs) Wait() { <-l.stopped }

// run owns the goroutine. Every event bumps gen; so does the start and end
// of each subscription, as changes outside one are not seen.
func (l *LocalAddrs) run(ctx context.Context) {
	defer close(l.stopped)
	f := &follower{
		what:   "local addresses",
		failed: "following local addresses failed; listing them on every use until subscribed again",
		log:    l.log,
		ns:     l.ns,
		sync: func() error {
			l.gen.Add(1)
			l.subscribed.Store(true)
			return nil
		},
		down: func() {
			l.subscribed.Store(false)
			l.gen.Add(1)
		},
	}
	f.run(ctx)
	l.ns.Close()
	l.hmu.Lock()
	l.h.Close()
	l.h = nil
	l.hmu.Unlock()
}

// errStopped is list's error once the watcher has stopped.
var errStopped = errors.New("no longer following local addresses")

// list lists every address of every interface.
func (l *LocalAddrs) list() (map[netip.Addr]bool, error) {
	var addrs []netlink.Addr
	l.hmu.RLock()
	err := errStopped
	if l.h != nil {
		err = retryInterrupted(func() error {
			var err error
			addrs, err = l.h.AddrList(nil, netlink.FAMILY_ALL)
			return err
		})
	}
	l.hmu.RUnlock()
	if l.listed != nil {
		defer l.listed()
	}
	if err != nil {
		return nil, fmt.Errorf("listing local addresses: %w", err)
	}
	set := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := addrOf(a); ok {
			set[ip] = true
		}
	}
	return set, nil
}
