// Package rules is pasvgate's seam to the kernel: one interface, Backend,
// that installs and removes the forwarding state for a single data
// connection, with implementations for iptables (rules/iptables) and a
// validating in-memory fake for tests (rules/fake).
//
// rules knows nothing of FTP. Its caller is package nat, which decides what
// to map and when; a Backend only turns a Mapping into kernel state and back.
package rules

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Mapping is one data connection admitted through the gateway: a TCP
// connection from Source to Public is DNATed to Target, and, when SNAT is
// valid, its source is rewritten to SNAT on the way out.
//
// The names are neutral on purpose. In passive mode Source is the FTP client
// and Target the server's data port; in active mode Source is the server and
// Target the client's data port.
type Mapping struct {
	// ID names the mapping in logs and in the rules' comments. It is made by
	// package nat and matches IDPattern, so it is safe in an argument list.
	ID string
	// Source is the only address allowed to open the data connection.
	Source netip.Addr
	// Public is the gateway address and port the data connection is made to.
	Public netip.AddrPort
	// Dialed, when valid, is a second gateway address that admits the data
	// connection on Public's port: the address the client dialed for its
	// control connection, for clients that ignore the address of a 227 and
	// connect back to the one they dialed (curl by default, Python ftplib,
	// lftp's ftp:fix-pasv-address). It must differ from Public's address.
	// The mapping stays one-shot across both addresses: it admits one
	// connection, the first, whichever address it arrives at.
	Dialed netip.Addr
	// Target is where the kernel forwards the data connection.
	Target netip.AddrPort
	// SNAT, when valid, is the source address the forwarded connection is
	// given towards Target: the address the proxy itself uses towards it,
	// so that servers with a same-IP data check accept it.
	SNAT netip.Addr
	// Created is when the mapping was made; backends that can store it
	// report it back from List so that `pasvgate rules list` shows an age.
	Created time.Time
}

// Is6 reports whether the mapping is IPv6. Validate guarantees that every
// address in a valid mapping has the same family.
func (m Mapping) Is6() bool { return m.Public.Addr().Is6() }

// String formats a mapping for logs.
func (m Mapping) String() string {
	s := fmt.Sprintf("%s %s->%s=>%s", m.ID, m.Source, m.Public, m.Target)
	if m.Dialed.IsValid() {
		s += " dialed " + m.Dialed.String()
	}
	if m.SNAT.IsValid() {
		s += " snat " + m.SNAT.String()
	}
	return s
}

// Errors every backend reports, so that callers can tell them apart with
// errors.Is whatever the backend.
var (
	// ErrInvalid: the mapping failed Validate; nothing was touched.
	ErrInvalid = errors.New("invalid mapping")
	// ErrExists: a mapping with that ID, or for the same Source and Public,
	// is already installed.
	ErrExists = errors.New("mapping already installed")
	// ErrNotInstalled: Remove was asked for a mapping that is not installed.
	ErrNotInstalled = errors.New("mapping not installed")
)

// idMaxLen bounds mapping IDs so that they fit an iptables comment (256
// bytes) and an nftables element comfortably, together with a prefix.
const idMaxLen = 32

// ValidID reports whether id is a usable mapping ID: 1 to 32 characters of
// lower-case letters, digits and '-'. IDs end up inside kernel rule
// comments, so they are restricted here, once, for every backend.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > idMaxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Validate checks a mapping before any backend acts on it: a usable ID,
// valid unzoned addresses all of one family (an IPv4-mapped IPv6 address
// counts as IPv6 and is refused, so that a 227 can never produce an ip6tables
// rule or the reverse), non-zero ports, and a Dialed address, if any, other
// than Public's.
func (m Mapping) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalid, m.ID, fmt.Sprintf(format, a...))
	}
	if !ValidID(m.ID) {
		return bad("id must be 1-%d of [a-z0-9-]", idMaxLen)
	}
	addrs := []struct {
		name string
		a    netip.Addr
	}{{"source", m.Source}, {"public", m.Public.Addr()}, {"target", m.Target.Addr()}}
	if m.SNAT.IsValid() {
		addrs = append(addrs, struct {
			name string
			a    netip.Addr
		}{"snat", m.SNAT})
	}
	if m.Dialed.IsValid() {
		addrs = append(addrs, struct {
			name string
			a    netip.Addr
		}{"dialed", m.Dialed})
	}
	is4 := m.Public.Addr().Is4()
	for _, x := range addrs {
		switch {
		case !x.a.IsValid():
			return bad("%s address missing", x.name)
		case x.a.Zone() != "":
			return bad("%s address %s has a zone", x.name, x.a)
		case x.a.Is4In6():
			return bad("%s address %s is IPv4-mapped", x.name, x.a)
		case x.a.IsUnspecified():
			return bad("%s address %s is unspecified", x.name, x.a)
		case x.a.Is4() != is4:
			return bad("%s address %s is not the family of public %s", x.name, x.a, m.Public.Addr())
		}
	}
	if m.Public.Port() == 0 || m.Target.Port() == 0 {
		return bad("port 0")
	}
	if m.Dialed == m.Public.Addr() {
		return bad("dialed address %s is the public one", m.Dialed)
	}
	return nil
}

// Backend turns mappings into kernel state. Implementations are safe for
// concurrent use. Every method takes a context so that a stuck kernel call
// (a held xtables lock, a slow netlink socket) can be bounded by the caller.
//
// Mappings are one-shot, like the kernel FTP helper's expectations: an
// installed mapping admits exactly one data connection, the first one from
// Source to Public that gets through the gateway, and that connection keeps
// flowing for its whole life. Any later connection that matches the
// mapping, from another source port of the same client included, is not
// forwarded, even while the mapping is still installed. The kernel itself
// uses a mapping up, with the first connection's first packet, with no
// call into pasvgate; so Remove is what takes out a mapping never used,
// and the rest of a used one, and it succeeds for both.
type Backend interface {
	// Setup prepares the backend's own chains or tables and the hooks that
	// lead to them, and removes every mapping left by an earlier process.
	// It is idempotent and is called once before the first client is
	// accepted.
	Setup(ctx context.Context) error
	// Install makes m live, all or nothing: on error nothing of m is left
	// in the kernel. It returns ErrInvalid for a mapping that fails
	// Validate and ErrExists for a duplicate.
	Install(ctx context.Context, m Mapping) error
	// Remove takes m out of the kernel. The connection it already
	// admitted keeps flowing. A mapping the kernel has used up is still
	// installed, and removing it is not an error. It returns
	// ErrNotInstalled if m is not installed.
	Remove(ctx context.Context, m Mapping) error
	// List returns the installed mappings.
	List(ctx context.Context) ([]Mapping, error)
	// Flush removes every mapping and the backend's own chains or tables,
	// and nothing that belongs to anyone else. Flushing a clean system is
	// not an error.
	Flush(ctx context.Context) error
}

// BatchRemover is a Backend that can take many mappings out of the kernel
// in one transaction, which costs about what one removal does: package
// nat hands it the whole queue of released mappings at once.
type BatchRemover interface {
	// RemoveBatch removes each of ms as Remove does; errs[i] is ms[i]'s
	// outcome.
	RemoveBatch(ctx context.Context, ms []Mapping) (errs []error)
}

// Interception methods.
const (
	// Redirect rewrites the destination to the local listener (nat REDIRECT);
	// the listener reads the original destination with SO_ORIGINAL_DST.
	Redirect = "redirect"
	// TProxy delivers the connection unchanged to a listener with
	// IP_TRANSPARENT (mangle TPROXY plus a policy route); the accepted
	// socket's local address is the original destination.
	TProxy = "tproxy"
)

// Interception asks the kernel to hand TCP connections that arrive on a
// LAN interface for a given destination port to pasvgate's own listener,
// for the transparent (router sidecar) mode.
type Interception struct {
	// Iface is the interface the intercepted connections arrive on.
	Iface string
	// Port is the destination port intercepted (21 for FTP).
	Port uint16
	// ListenPort is the port of pasvgate's listener that receives them.
	ListenPort uint16
	// Method is Redirect or TProxy.
	Method string
}

// ValidIface reports whether name is a usable Linux interface name: 1 to 15
// bytes, none of them '/', whitespace, ':' or a control character, and
// not "." or "..". Names reach iptables argument lists, so they are
// checked here, once.
func ValidIface(name string) bool {
	if len(name) == 0 || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Validate checks an interception before any backend acts on it.
func (ic Interception) Validate() error {
	switch {
	case !ValidIface(ic.Iface):
		return fmt.Errorf("%w: interface name %q", ErrInvalid, ic.Iface)
	case ic.Port == 0 || ic.ListenPort == 0:
		return fmt.Errorf("%w: port 0", ErrInvalid)
	case ic.Method != Redirect && ic.Method != TProxy:
		return fmt.Errorf("%w: method %q (want %s or %s)", ErrInvalid, ic.Method, Redirect, TProxy)
	}
	return nil
}

// String formats an interception for errors, logs and rule comments:
// "IFACE tcp/PORT -> :LISTENPORT (METHOD)". Installed systems' rule
// comments carry it, so it never changes.
func (ic Interception) String() string {
	return fmt.Sprintf("%s tcp/%d -> :%d (%s)", ic.Iface, ic.Port, ic.ListenPort, ic.Method)
}

// CompareInterceptions orders interceptions (method, interface, port,
// listening port), so that a backend writes the same set as the same rules
// in the same order.
func CompareInterceptions(a, b Interception) int {
	return cmp.Or(strings.Compare(a.Method, b.Method), strings.Compare(a.Iface, b.Iface),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.ListenPort, b.ListenPort))
}

// HasTProxy reports whether any of ics uses TPROXY, which needs policy
// routing besides the rules.
func HasTProxy(ics []Interception) bool {
	return slices.ContainsFunc(ics, func(ic Interception) bool { return ic.Method == TProxy })
}

// Interceptor is implemented by backends that can install interception for
// transparent mode. Interception state lives in the backend's own chains,
// so that Setup sweeps a dead process's interception, and Flush removes it.
type Interceptor interface {
	// Intercept installs ic for IPv4 and, where the backend has it, IPv6.
	// It is idempotent and all or nothing.
	Intercept(ctx context.Context, ic Interception) error
	// StopIntercept removes ic. Removing what is not installed is not an
	// error.
	StopIntercept(ctx context.Context, ic Interception) error
}
