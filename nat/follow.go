package nat

// This file is pasvgate's one way of following the kernel's address
// table: a subscription kept alive with back-off (follower), and the one
// retry of an interrupted netlink dump (retryInterrupted). AddrWatcher
// (one interface's address, for --public-iface) and LocalAddrs (whether
// an address is this host's) are both built on it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	// maxDumpAttempts bounds how often a netlink dump is repeated when
	// the kernel flags it as interrupted (the table changed under it).
	// Five is what containernetworking's netlinksafe uses; a dump that is
	// interrupted that often is retried later by the caller instead.
	maxDumpAttempts = 5
	// relistMinDelay and relistMaxDelay bound the back-off after a failed
	// listing or a dead subscription, so that a kernel that keeps failing
	// costs at most one attempt per relistMaxDelay.
	relistMinDelay = 100 * time.Millisecond
	relistMaxDelay = 30 * time.Second
)

// retryInterrupted calls f again while it fails with
// netlink.ErrDumpInterrupted, at most maxDumpAttempts times in all. The
// kernel flags a dump as interrupted when the table changed while it was
// read, so its result may miss entries; the library returns that partial
// result with the error, and it is never used. This is the only place the
// watchers retry a netlink call.
func retryInterrupted(f func() error) error {
	var err error
	for range maxDumpAttempts {
		if err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// follower keeps a subscription to address changes (and link changes,
// with links) in one network namespace until its context ends,
// subscribing again with back-off whenever one dies, for example when
// the kernel dropped events because the socket buffer overflowed
// (ENOBUFS). Whoever owns it calls run on a goroutine it waits for.
//
// It subscribes without the library's ListExisting: that sends its dump
// request to the subscription's own multicast groups, so every other
// address subscriber in the namespace (the other watcher of this process
// included) received a request from a user-space socket, which the
// library reports to it as an error. sync lists instead.
type follower struct {
	// what is followed, for the logs ("public interface addresses").
	what string
	// attrs are added to every log line.
	attrs []any
	// failed is logged when a subscription dies or cannot be made.
	failed string
	log    *slog.Logger
	// ns is the network namespace to follow; see nsOption.
	ns    netns.NsHandle
	links bool
	// addrConcerns and linkConcerns tell whether an event may change
	// what sync finds; nil means every event does.
	addrConcerns func(netlink.AddrUpdate) bool
	linkConcerns func(netlink.LinkUpdate) bool
	// sync brings the owner's view up to date. It is called once
	// subscribed (changes before the subscription were not seen), after
	// every change that concerns it, and after the library reports an
	// error (the message lost or not understood may have been a change).
	// A failure is retried with back-off while the subscription lives.
	sync func() error
	// down, if set, is called when a subscription that sync has seen
	// ends, before waiting to subscribe again.
	down func()
}

// run subscribes until ctx ends.
func (f *follower) run(ctx context.Context) {
	delay := relistMinDelay
	for {
		subscribed, err := f.follow(ctx)
		if subscribed && f.down != nil {
			f.down()
		}
		if ctx.Err() != nil {
			return
		}
		if subscribed {
			delay = relistMinDelay
		}
		f.log.Warn(f.failed, append(f.attrs, "err", err, "retry_in", delay)...)
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

// follow subscribes, syncs, and then syncs again after every change that
// concerns the owner. It returns nil when ctx ends, or why the
// subscription died (the library's last reported error, which is why a
// subscription ends), and whether it got as far as subscribing.
func (f *follower) follow(ctx context.Context) (subscribed bool, err error) {
	// done stops the library's receive goroutines; they close their
	// channels when they stop, and must be drained until then or they
	// block forever on a send.
	done := make(chan struct{})
	addrCh := make(chan netlink.AddrUpdate, 64)
	var linkCh chan netlink.LinkUpdate // nil without links: never ready
	var addrOK, linkOK bool
	defer func() {
		close(done)
		if addrOK {
			for range addrCh {
			}
		}
		if linkOK {
			for range linkCh {
			}
		}
	}()

	// kick asks for a sync from the library's goroutines without
	// blocking them. Most errors it reports leave the subscription
	// running (a message from a user-space socket, one that did not
	// parse); the one that ends it (a failed receive) comes just before
	// its channel closes, and is then the reason logged.
	kick := make(chan struct{}, 1)
	var mu sync.Mutex
	var lastErr error
	onError := func(err error) {
		select {
		case <-done: // the socket was closed on purpose
			return
		default:
		}
		mu.Lock()
		lastErr = err
		mu.Unlock()
		f.log.Debug("netlink subscription reported an error; listing again", append(f.attrs, "err", err)...)
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	ended := func(what string) error {
		mu.Lock()
		defer mu.Unlock()
		if lastErr != nil {
			return fmt.Errorf("%s subscription ended: %w", what, lastErr)
		}
		return fmt.Errorf("%s subscription ended", what)
	}

	err = netlink.AddrSubscribeWithOptions(addrCh, done, netlink.AddrSubscribeOptions{
		Namespace:     f.nsOption(),
		ErrorCallback: onError,
	})
	if err != nil {
		return false, fmt.Errorf("subscribing to address changes: %w", err)
	}
	addrOK = true
	if f.links {
		linkCh = make(chan netlink.LinkUpdate, 16)
		err = netlink.LinkSubscribeWithOptions(linkCh, done, netlink.LinkSubscribeOptions{
			Namespace:     f.nsOption(),
			ErrorCallback: onError,
		})
		if err != nil {
			return false, fmt.Errorf("subscribing to link changes: %w", err)
		}
		linkOK = true
	}

	// retry is armed while sync fails; a change that arrives meanwhile
	// syncs at once anyway.
	var retry <-chan time.Time
	delay := relistMinDelay
	dirty := true
	for {
		if dirty {
			dirty = false
			if err := f.sync(); err != nil {
				f.log.Warn("listing "+f.what+" failed", append(f.attrs, "err", err, "retry_in", delay)...)
				retry = time.After(delay)
				delay = min(2*delay, relistMaxDelay)
			} else {
				retry = nil
				delay = relistMinDelay
			}
		}
		select {
		case <-ctx.Done():
			return true, nil
		case u, ok := <-addrCh:
			if !ok {
				return true, ended("address")
			}
			dirty = f.addrConcerns == nil || f.addrConcerns(u)
			// Coalesce a burst (an interface going away with many
			// addresses) into one sync. The receives cannot block:
			// len counts what is already queued.
			for n := len(addrCh); n > 0; n-- {
				u := <-addrCh
				dirty = f.addrConcerns == nil || f.addrConcerns(u) || dirty
			}
		case u, ok := <-linkCh:
			if !ok {
				return true, ended("link")
			}
			dirty = f.linkConcerns == nil || f.linkConcerns(u)
		case <-kick:
			dirty = true
		case <-retry:
			dirty = true
		}
	}
}

// nsOption is the Namespace for a netlink subscription made on the calling
// thread: nil when the thread is in f.ns already (always, outside tests),
// since setns(2) needs CAP_SYS_ADMIN even to enter the namespace one is
// in; &f.ns otherwise.
func (f *follower) nsOption() *netns.NsHandle {
	if cur, err := netns.Get(); err == nil {
		defer cur.Close()
		if cur.Equal(f.ns) {
			return nil
		}
	}
	return &f.ns
}
