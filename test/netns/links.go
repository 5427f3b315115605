package netns

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkHandle opens a netlink handle bound to the namespace, so that link,
// address and route changes need no thread switching.
func (n *NS) netlinkHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", n.Name, err)
	}
	return h, nil
}

// Veth connects two namespaces with a veth pair: interface aName in a and
// bName in b, both brought up. a and b may be the same namespace.
func Veth(a *NS, aName string, b *NS, bName string) error {
	ha, err := a.netlinkHandle()
	if err != nil {
		return err
	}
	defer ha.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := ha.LinkAdd(v); err != nil {
		return fmt.Errorf("creating veth %s/%s between %s and %s: %w", aName, bName, a.Name, b.Name, err)
	}
	if err := a.LinkUp(aName); err != nil {
		return err
	}
	return b.LinkUp(bName)
}

// LinkUp brings an interface of the namespace up.
func (n *NS) LinkUp(dev string) error {
	h, err := n.netlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bringing %s up in %s: %w", dev, n.Name, err)
	}
	return nil
}

// AddAddr adds an address to an interface of the namespace. IPv6
// addresses skip duplicate address detection, so they are usable at once.
func (n *NS) AddAddr(dev string, p netip.Prefix) error {
	h, err := n.netlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", p, dev, n.Name, err)
	}
	return nil
}

// AddDefaultRoute adds a default route via gw (IPv4 or IPv6).
func (n *NS) AddDefaultRoute(gw netip.Addr) error {
	h, err := n.netlinkHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	r := &netlink.Route{Gw: gw.AsSlice()}
	if gw.Is6() {
		r.Family = netlink.FAMILY_V6
	} else {
		r.Family = netlink.FAMILY_V4
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("adding a default route via %s in %s: %w", gw, n.Name, err)
	}
	return nil
}
