package nat

// This file supplies the public address for gateways whose public address
// is not fixed (DHCP, PPPoE, a cloud instance renumbered on restart): the
// run command starts an AddrWatcher on the public interface and hands
// its Current method to proxy as Settings.PublicAddrFunc, so that every
// PASV advertises the address the interface has at that moment.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
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

// AddrWatcher follows the address of one interface, so that a gateway
// whose public address changes keeps advertising one its clients can reach.
//
// Which address it reports: only global-scope unicast addresses of the
// family count (not loopback, link-local, multicast, or an IPv6 address
// that is tentative or failed duplicate address detection). Deprecated
// addresses count only when no other is left, and, for IPv6, temporary
// (privacy) addresses only when no stable one is left: both are on their
// way out and a client may connect minutes after the 227. Among those that
// count, the current address is kept while it stays, so that a second
// address appearing does not move clients; otherwise the lowest is taken,
// so that the choice is the same on every restart.
//
// The interface is followed by name, not by index: if it is deleted, or
// renamed to something else, the watcher reports no address; when an
// interface of that name appears again (re-created, or renamed back) its
// addresses are used. This is what an operator who wrote the name in the
// configuration means.
type AddrWatcher struct {
	iface  string
	family int // netlink.FAMILY_V4 or FAMILY_V6
	v6     bool
	log    *slog.Logger

	// ns is the network namespace WatchInterface was called in. The
	// watcher's goroutine may run on any OS thread, so every socket it
	// opens is opened in ns explicitly rather than in whatever namespace
	// its thread happens to be in.
	ns netns.NsHandle
	h  *netlink.Handle

	cur atomic.Pointer[netip.Addr]

	// index is the interface's index at the last listing, 0 when there
	// was no interface of that name. Only the watcher's goroutine (and
	// WatchInterface before it starts) uses it.
	index int
	// listed, if set, is called after every successful listing with the
	// addresses of the family found on the interface. Tests use it to know
	// that a change has been seen.
	listed func([]netip.Addr)

	stopped chan struct{}
}

// WatchInterface starts following iface's addresses of the given family
// (IPv4 when v6 is false) in the current network namespace, that of the
// calling thread, which the watcher keeps using whatever thread it runs on.
// It reads the current address at once, so that Current is right as soon
// as it returns, and then follows changes until ctx ends; call Wait after
// cancelling ctx.
//
// It returns an error only if iface does not exist at start (or the
// netlink sockets to follow it cannot be opened): a name that was never
// there is a configuration error, while an interface that loses its
// address later is a state the watcher reports and recovers from.
func WatchInterface(ctx context.Context, iface string, v6 bool, log *slog.Logger) (*AddrWatcher, error) {
	return watchInterface(ctx, iface, v6, log, nil)
}

func watchInterface(ctx context.Context, iface string, v6 bool, log *slog.Logger, listed func([]netip.Addr)) (*AddrWatcher, error) {
	if !rules.ValidIface(iface) {
		return nil, fmt.Errorf("watching interface %q: not a valid interface name", iface)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("watching interface %s: opening the current network namespace: %w", iface, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // no setns: see nsOption
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("watching interface %s: opening a netlink socket: %w", iface, err)
	}
	w := &AddrWatcher{
		iface:   iface,
		family:  netlink.FAMILY_V4,
		v6:      v6,
		log:     log,
		ns:      ns,
		h:       h,
		listed:  listed,
		stopped: make(chan struct{}),
	}
	if v6 {
		w.family = netlink.FAMILY_V6
	}
	addrs, index, err := w.list()
	w.index = index
	switch {
	case err == nil && index == 0:
		w.close()
		return nil, fmt.Errorf("watching interface %s: no such interface", iface)
	case err != nil && index == 0:
		w.close()
		return nil, fmt.Errorf("watching interface %s: %w", iface, err)
	case err != nil:
		// The interface is there but its addresses could not be read
		// consistently; the goroutine lists them again shortly.
		log.Warn("listing public interface addresses failed", "iface", iface, "err", err)
	default:
		a := pickAddr(addrs, netip.Addr{}, v6)
		w.cur.Store(&a)
	}
	if a := w.Current(); a.IsValid() {
		log.Info("following public interface", "iface", iface, "addr", a)
	} else {
		log.Warn("public interface has no usable address", "iface", iface, "reason", noneReason(w.index))
	}
	go w.run(ctx)
	return w, nil
}

// Current returns the address to advertise now, or an invalid netip.Addr
// when the interface has none usable. It is safe for concurrent use and
// costs one atomic load: it is called on every PASV.
func (w *AddrWatcher) Current() netip.Addr {
	if p := w.cur.Load(); p != nil {
		return *p
	}
	return netip.Addr{}
}

// Wait blocks until the watcher's goroutine has stopped after the context
// given to WatchInterface ended. Current keeps returning the last address.
func (w *AddrWatcher) Wait() { <-w.stopped }

func (w *AddrWatcher) close() {
	w.h.Close()
	w.ns.Close()
}

// run owns the watcher's goroutine: it keeps a subscription alive until
// ctx ends, subscribing again (and so listing again) whenever one dies,
// for example when the kernel dropped events because the socket buffer
// overflowed (ENOBUFS).
func (w *AddrWatcher) run(ctx context.Context) {
	defer close(w.stopped)
	defer w.close()
	delay := relistMinDelay
	for {
		subscribed, err := w.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if subscribed {
			delay = relistMinDelay
		}
		w.log.Warn("following public interface addresses failed; subscribing again",
			"iface", w.iface, "err", err, "retry_in", delay)
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

// follow subscribes to address and link changes, lists the interface's
// addresses again (changes before the subscription are otherwise lost),
// and then lists again after every change that concerns the interface. It
// returns nil when ctx ends, or the reason the subscription died, and
// whether it got as far as subscribing.
func (w *AddrWatcher) follow(ctx context.Context) (subscribed bool, err error) {
	// done stops the library's receive goroutines; they close their
	// channels when they stop, and must be drained until then or they
	// block forever on a send.
	done := make(chan struct{})
	addrCh := make(chan netlink.AddrUpdate, 64)
	linkCh := make(chan netlink.LinkUpdate, 16)
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

	// kick asks for a listing from the library's goroutines without
	// blocking them. Any reported error may mean an event was lost (a
	// message that did not parse, an interrupted dump), and a listing is
	// cheap and always right.
	kick := make(chan struct{}, 1)
	onError := func(err error) {
		select {
		case <-done: // the socket was closed on purpose
			return
		default:
		}
		w.log.Warn("netlink subscription error", "iface", w.iface, "err", err)
		select {
		case kick <- struct{}{}:
		default:
		}
	}

	// ListExisting makes the kernel replay the current addresses after
	// the subscription is in place; the explicit listing below is still
	// needed, because that replay carries no end marker and cannot say
	// that the interface has no address.
	err = netlink.AddrSubscribeWithOptions(addrCh, done, netlink.AddrSubscribeOptions{
		Namespace:     w.nsOption(),
		ErrorCallback: onError,
		ListExisting:  true,
	})
	if err != nil {
		return false, fmt.Errorf("subscribing to address changes: %w", err)
	}
	addrOK = true
	// Renames and deletions of the interface itself come only as link
	// events.
	err = netlink.LinkSubscribeWithOptions(linkCh, done, netlink.LinkSubscribeOptions{
		Namespace:     w.nsOption(),
		ErrorCallback: onError,
	})
	if err != nil {
		return false, fmt.Errorf("subscribing to link changes: %w", err)
	}
	linkOK = true

	// retry is armed while listing fails; a change that arrives meanwhile
	// lists at once anyway.
	var retry <-chan time.Time
	delay := relistMinDelay
	dirty := true
	for {
		if dirty {
			dirty = false
			if err := w.relist(); err != nil {
				w.log.Warn("listing public interface addresses failed", "iface", w.iface, "err", err, "retry_in", delay)
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
				return true, errors.New("address subscription ended")
			}
			dirty = w.addrConcerns(u)
			// Coalesce a burst (an interface going away with many
			// addresses) into one listing. The receives cannot block:
			// len counts what is already queued.
			for n := len(addrCh); n > 0; n-- {
				dirty = w.addrConcerns(<-addrCh) || dirty
			}
		case u, ok := <-linkCh:
			if !ok {
				return true, errors.New("link subscription ended")
			}
			dirty = w.linkConcerns(u)
		case <-kick:
			dirty = true
		case <-retry:
			dirty = true
		}
	}
}

// addrConcerns reports whether an address event may change the answer:
// an address of the family on the interface, or on any interface while
// there is none of that name (cheap insurance against a missed link event).
func (w *AddrWatcher) addrConcerns(u netlink.AddrUpdate) bool {
	if (u.LinkAddress.IP.To4() == nil) != w.v6 {
		return false
	}
	return w.index == 0 || u.LinkIndex == w.index
}

// linkConcerns reports whether a link event may change the answer: one
// about the interface being followed (deleted, renamed away) or about a
// link that now has its name (created, renamed to it).
func (w *AddrWatcher) linkConcerns(u netlink.LinkUpdate) bool {
	if u.Link == nil {
		return false
	}
	a := u.Attrs()
	return a != nil && (a.Index == w.index || a.Name == w.iface)
}

// relist lists the interface's addresses and updates Current.
func (w *AddrWatcher) relist() error {
	addrs, index, err := w.list()
	if err != nil {
		return err
	}
	w.apply(addrs, index)
	return nil
}

// list returns the addresses of the family on the interface named iface,
// and its index; index 0 means there is no interface of that name, which
// is not an error.
func (w *AddrWatcher) list() (addrs []netlink.Addr, index int, err error) {
	err = retryInterrupted(func() error {
		addrs, index = nil, 0
		link, err := w.h.LinkByName(w.iface)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("finding interface %s: %w", w.iface, err)
		}
		index = link.Attrs().Index
		addrs, err = w.h.AddrList(link, w.family)
		if err != nil {
			addrs = nil
			return fmt.Errorf("listing addresses of %s: %w", w.iface, err)
		}
		return nil
	})
	return addrs, index, err
}

// retryInterrupted calls f again while it fails with
// netlink.ErrDumpInterrupted, at most maxDumpAttempts times in all. The
// kernel flags a dump as interrupted when the table changed while it was
// read, so its result may miss entries; the library returns that partial
// result with the error, and it is never used. This is the only place the
// watcher retries a netlink call.
func retryInterrupted(f func() error) error {
	var err error
	for range maxDumpAttempts {
		if err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// apply records a listing: it picks the address to advertise and logs a
// change.
func (w *AddrWatcher) apply(addrs []netlink.Addr, index int) {
	w.index = index
	if w.listed != nil {
		// After the update, so that a test that has seen a listing also
		// sees its effect on Current.
		defer func() {
			all := make([]netip.Addr, 0, len(addrs))
			for _, a := range addrs {
				if ip, ok := addrOf(a); ok {
					all = append(all, ip)
				}
			}
			w.listed(all)
		}()
	}
	old := w.Current()
	next := pickAddr(addrs, old, w.v6)
	if next == old {
		return
	}
	w.cur.Store(&next)
	if next.IsValid() {
		w.log.Info("public address changed", "old", fmtAddr(old), "new", next, "iface", w.iface)
		return
	}
	w.log.Warn("public interface has no usable address", "iface", w.iface, "old", fmtAddr(old), "reason", noneReason(index))
}

// noneReason says why an interface has no usable address, for the log.
func noneReason(index int) string {
	if index == 0 {
		return "no interface of that name"
	}
	return "no global unicast address"
}

// fmtAddr shows a missing address as "none" in logs rather than
// netip's "invalid IP".
func fmtAddr(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

// addrOf converts a netlink address to a netip.Addr without zone, IPv4
// as a 4-byte address.
func addrOf(a netlink.Addr) (netip.Addr, bool) {
	if a.IPNet == nil {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	return ip.Unmap(), ok
}

// Ranks of a usable address; lower is better.
const (
	rankPreferred  = 0
	rankTemporary  = 1 // IPv6 privacy address: rotated away within a day
	rankDeprecated = 2 // its preferred lifetime is over: being renumbered
)

// pickAddr chooses the address to advertise from an interface's addresses
// (see AddrWatcher for the rules), given the one advertised until now. It
// returns an invalid address when none is usable.
func pickAddr(addrs []netlink.Addr, cur netip.Addr, v6 bool) netip.Addr {
	best := -1
	var cands []netip.Addr
	for _, a := range addrs {
		ip, ok := addrOf(a)
		if !ok || ip.Is6() != v6 || !ip.IsGlobalUnicast() || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		// The kernel drops packets to a tentative address, and one that
		// failed DAD belongs to another host.
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		rank := rankPreferred
		switch {
		case a.Flags&unix.IFA_F_DEPRECATED != 0:
			rank = rankDeprecated
		case v6 && a.Flags&unix.IFA_F_TEMPORARY != 0:
			// For IPv4 the same bit means "secondary", which is fine.
			rank = rankTemporary
		}
		switch {
		case best == -1 || rank < best:
			best, cands = rank, []netip.Addr{ip}
		case rank == best:
			cands = append(cands, ip)
		}
	}
	if len(cands) == 0 {
		return netip.Addr{}
	}
	if slices.Contains(cands, cur) {
		return cur
	}
	return slices.MinFunc(cands, netip.Addr.Compare)
}

// nsOption is the Namespace for a netlink subscription made on the calling
// thread: nil when the thread is in w.ns already (always, outside tests),
// since setns(2) needs CAP_SYS_ADMIN even to enter the namespace one is
// in; &w.ns otherwise.
func (w *AddrWatcher) nsOption() *netns.NsHandle {
	if cur, err := netns.Get(); err == nil {
		defer cur.Close()
		if cur.Equal(w.ns) {
			return nil
		}
	}
	return &w.ns
}
