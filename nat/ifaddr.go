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

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
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

// run owns the watcher's goroutine: it keeps a subscription to address
// and link changes alive until ctx ends (see follower), listing the
// interface's addresses again after every change that concerns it.
func (w *AddrWatcher) run(ctx context.Context) {
	defer close(w.stopped)
	defer w.close()
	f := &follower{
		what:         "public interface addresses",
		attrs:        []any{"iface", w.iface},
		failed:       "following public interface addresses failed; subscribing again",
		log:          w.log,
		ns:           w.ns,
		links:        true,
		addrConcerns: w.addrConcerns,
		linkConcerns: w.linkConcerns,
		sync:         w.relist,
	}
	f.run(ctx)
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
