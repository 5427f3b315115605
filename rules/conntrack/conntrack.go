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
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
)

const (
	// maxDumpAttempts bounds how often a flush is repeated when the
	// kernel flags its dump as interrupted (the table changed while it
	// was read, so entries may have been missed). Five is what
	// containernetworking's netlinksafe uses.
	maxDumpAttempts = 5
	// socketTimeout bounds each send and each receive on the netlink
	// socket when the caller's context has no nearer deadline, so that a
	// stuck kernel call cannot hang the mapping's teardown.
	socketTimeout = 10 * time.Second
)

// ErrClosed is returned by FlushFlows after Close.
var ErrClosed = errors.New("conntrack flusher closed")

// Flusher deletes the conntrack entries of a mapping's data connections.
// It is safe for concurrent use; calls share one netlink socket and so run
// one at a time.
//
// A flush is two kinds of kernel request. First a dump filtered in the
// kernel (CTA_FILTER, Linux 5.8): the kernel walks its table and sends
// back only the entries whose original tuple is TCP from the mapping's
// Source to its Public address and port, so nothing of the rest of the
// table is copied to pasvgate, however big it is. Then, for each entry
// that came back (usually one), a delete by its exact tuple and id, which
// is a hash lookup. The tuple filter can't be given to a delete directly:
// the kernel's flush takes only a mark or a status as filter, and an
// exact delete needs the client's source port, which pasvgate does not
// know until the dump has told it.
//
// Every entry that comes back is checked against the mapping in userspace
// as well before it is deleted: a kernel older than 5.8 ignores the filter
// and answers with the family's whole table, and then the flush is as slow
// as a full dump but still deletes only the mapping's entries.
type Flusher struct {
	// mu guards sock and serialises calls, whose timeouts are set on the
	// shared socket. A closed socket must never be used: nl would then
	// open a fresh one in whatever namespace the calling thread is in.
	mu   sync.Mutex
	sock *nl.SocketHandle
}

// New returns a Flusher bound to the network namespace of the calling
// thread: later calls act on that namespace's table whatever thread they
// run on. The caller must Close it.
func New() (*Flusher, error) {
	// With no namespace given, the socket is opened where the calling
	// thread is, without setns(2), which needs CAP_SYS_ADMIN even to
	// enter the namespace one is in.
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a conntrack netlink socket: %w", err)
	}
	return &Flusher{sock: &nl.SocketHandle{Socket: s}}, nil
}

// FlushFlows deletes every conntrack entry whose ORIGINAL tuple is TCP
// from m.Source to m.Public (address and port), i.e. the data
// connection(s) the mapping admitted, in m's family, except those in
// TIME_WAIT, which carry nothing. It returns how many were deleted.
// Deleting nothing is not an error.
//
// ctx bounds the call: its deadline, if nearer than the package's socket
// timeout, bounds each send and receive, and it is checked between them.
func (f *Flusher) FlushFlows(ctx context.Context, m rules.Mapping) (int, error) {
	deleted, err := f.flush(ctx, m)
	if err != nil {
		return deleted, fmt.Errorf("flushing flows of mapping %s: %w", m.ID, err)
	}
	return deleted, nil
}

func (f *Flusher) flush(ctx context.Context, m rules.Mapping) (int, error) {
	// A mapping that passed Validate has every address set and of one
	// family, so the filter cannot come out broader than meant.
	if err := m.Validate(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sock == nil {
		return 0, ErrClosed
	}
	total := 0
	err := retryInterrupted(ctx, func() error {
		entries, _, dumpErr := f.dump(ctx, m)
		if dumpErr != nil && !errors.Is(dumpErr, nl.ErrDumpInterrupted) {
			return fmt.Errorf("dumping the mapping's entries: %w", dumpErr)
		}
		// On an interrupted dump the entries read are still real; they
		// are deleted now and the retry finds the rest.
		for _, e := range entries {
			if e.timeWait() {
				// Closed already: nothing flows. Its entry is what keeps
				// the kernel's SNAT from giving a new data connection the
				// tuple of this one while the server may still hold it in
				// TIME_WAIT and refuse the new SYN; and a new SYN with
				// its original tuple re-creates it in any case.
				continue
			}
			switch err := f.delete(ctx, family(m), e); {
			case err == nil:
				total++
			case errors.Is(err, unix.ENOENT):
				// Gone since the dump: it ended, or timed out.
			default:
				return fmt.Errorf("deleting entry %d: %w", e.id, err)
			}
		}
		return dumpErr
	})
	return total, err
}

// dump returns the entries of m's data connections, as filtered by the
// kernel and checked again here. ignored counts the entries the kernel sent
// that fail the check: more than zero means it did not filter.
func (f *Flusher) dump(ctx context.Context, m rules.Mapping) (es []entry, ignored int, err error) {
	if err := f.setTimeouts(ctx); err != nil {
		return nil, 0, err
	}
	req := dumpRequest(m)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: f.sock}
	var parseErr error
	err = req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		e, err := parseEntry(msg)
		if err != nil {
			parseErr = err
			return false
		}
		if !e.orig.matches(m) {
			ignored++
			return true
		}
		es = append(es, e)
		return true
	})
	if err == nil {
		err = parseErr
	}
	return es, ignored, err
}

// delete deletes the one entry e by a kernel lookup of its tuple.
func (f *Flusher) delete(ctx context.Context, fam uint8, e entry) error {
	if err := f.setTimeouts(ctx); err != nil {
		return err
	}
	req := deleteRequest(fam, e)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: f.sock}
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}

// setTimeouts bounds the next send and receives by ctx's deadline, or by
// socketTimeout if that is nearer or there is none. It fails once ctx has
// ended.
func (f *Flusher) setTimeouts(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := socketTimeout
	if dl, ok := ctx.Deadline(); ok {
		// A zero timeout would mean none at all.
		d = max(min(d, time.Until(dl)), time.Millisecond)
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return errors.Join(f.sock.Socket.SetSendTimeout(&tv), f.sock.Socket.SetReceiveTimeout(&tv))
}

// retryInterrupted calls f again while it fails with nl.ErrDumpInterrupted,
// at most maxDumpAttempts times in all, and not once ctx has ended. It is
// the only place the package retries.
func retryInterrupted(ctx context.Context, f func() error) error {
	var err error
	for range maxDumpAttempts {
		if cerr := ctx.Err(); cerr != nil {
			return errors.Join(err, cerr)
		}
		if err = f(); !errors.Is(err, nl.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// Close releases the netlink socket. Later FlushFlows calls return
// ErrClosed; closing twice is harmless.
func (f *Flusher) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sock != nil {
		f.sock.Close()
		f.sock = nil
	}
	return nil
}
