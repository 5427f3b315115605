package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// localAddrs answers "is this address one of this host's?" (the proxy's
// IsLocal) for every PASV with --public-addr, every PORT/EPRT and every
// transparent-mode session. Listing the host's addresses is a netlink dump
// of every link and address, which on the PASV path cost more than the
// nftables install itself (the CPU profile of `make bench -cpuprofile`), so
// the list is kept and listed again only after the kernel reports an
// address change.
//
// It stays exact rather than merely recent: gen counts the address events
// seen (and anything that may have lost one: a subscription error, a
// resubscription), and a kept list is used only if no event came since it
// was taken. While there is no working subscription every call lists.
type localAddrs struct {
	// list lists the addresses (net.InterfaceAddrs, or a test's own).
	list func() (map[netip.Addr]bool, error)

	gen        atomic.Uint64
	subscribed atomic.Bool

	mu     sync.Mutex
	set    map[netip.Addr]bool
	setGen uint64
}

// has reports whether a is assigned to this host. If the addresses cannot
// be listed it says yes, the answer that keeps the caller's behaviour for a
// local public address.
func (l *localAddrs) has(a netip.Addr) bool {
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

// Backoff between subscription attempts.
const (
	relistMinDelay = 100 * time.Millisecond
	relistMaxDelay = 10 * time.Second
)

// interfaceAddrs is the default list: every address of every interface.
func interfaceAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	set := make(map[netip.Addr]bool, len(addrs))
	for _, x := range addrs {
		if n, ok := x.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok {
				set[b.Unmap()] = true
			}
		}
	}
	return set, nil
}

// watchLocalAddrs starts following address changes until ctx ends. ns is
// the network namespace to follow, for tests (nil: the process's own; a
// namespace given here is entered with setns, which needs CAP_SYS_ADMIN).
func watchLocalAddrs(ctx context.Context, ns *netns.NsHandle, list func() (map[netip.Addr]bool, error), log *slog.Logger) *localAddrs {
	l := &localAddrs{list: list}
	go l.follow(ctx, ns, log)
	return l
}

// follow subscribes to address events and bumps gen on each, subscribing
// again after a failure, with backoff.
func (l *localAddrs) follow(ctx context.Context, ns *netns.NsHandle, log *slog.Logger) {
	delay := relistMinDelay
	for ctx.Err() == nil {
		done := make(chan struct{})
		ch := make(chan netlink.AddrUpdate, 64)
		failed := make(chan struct{}, 1)
		err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
			Namespace: ns,
			ErrorCallback: func(error) {
				// An event may be lost: nothing kept can be trusted.
				l.gen.Add(1)
				select {
				case failed <- struct{}{}:
				default:
				}
			},
		})
		if err == nil {
			l.subscribed.Store(true)
			// Changes before the subscription were not seen.
			l.gen.Add(1)
			delay = relistMinDelay
		loop:
			for {
				select {
				case _, ok := <-ch:
					if !ok {
						break loop
					}
					l.gen.Add(1)
				case <-failed:
					break loop
				case <-ctx.Done():
					break loop
				}
			}
			l.subscribed.Store(false)
			l.gen.Add(1)
			close(done)
			// The library closes ch once its receiver has stopped.
			for range ch {
			}
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("following local addresses failed; listing them on every use until subscribed again",
			"err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, relistMaxDelay)
	}
}
