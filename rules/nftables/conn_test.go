package nftables

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/test/netns"
)

// TestDoRetries checks how do treats each kind of failure: socket errors
// worth retrying are retried, a bounded number of times, on a fresh
// socket; a kernel's answer is returned at once on the same socket; a
// failure that may leave answers unread (a timeout) replaces the socket.
func TestDoRetries(t *testing.T) {
	netns.RequireRoot(t)
	b := newBackend(t, netns.New(t, nsPrefix), Config{})
	ctx := context.Background()
	opErr := func(err error) error { return &netlink.OpError{Op: "receive", Err: err} }
	for _, c := range []struct {
		name      string
		errs      []error // what f returns on each call; nil after the last
		wantCalls int
		wantErr   error
		newSocket bool
	}{
		{"ok", nil, 1, nil, false},
		{"enobufs then ok", []error{opErr(unix.ENOBUFS)}, 2, nil, true},
		{"eintr twice then ok", []error{opErr(unix.EINTR), opErr(unix.EINTR)}, 3, nil, true},
		{"enobufs always", []error{opErr(unix.ENOBUFS), opErr(unix.ENOBUFS), opErr(unix.ENOBUFS), opErr(unix.ENOBUFS)}, maxAttempts, unix.ENOBUFS, true},
		{"kernel refusal", []error{opErr(unix.ENOENT)}, 1, unix.ENOENT, false},
		{"timeout", []error{opErr(os.ErrDeadlineExceeded)}, 1, os.ErrDeadlineExceeded, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := b.lock(ctx); err != nil {
				t.Fatal(err)
			}
			defer b.unlock()
			// A first call opens the socket to compare with.
			if err := b.do(ctx, func(*nftables.Conn) error { return nil }); err != nil {
				t.Fatal(err)
			}
			before := b.conn
			calls := 0
			err := b.do(ctx, func(*nftables.Conn) error {
				calls++
				if calls <= len(c.errs) {
					return c.errs[calls-1]
				}
				return nil
			})
			if calls != c.wantCalls {
				t.Errorf("f called %d times, want %d", calls, c.wantCalls)
			}
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("do = %v, want %v", err, c.wantErr)
			}
			if replaced := b.conn != before; replaced != c.newSocket {
				t.Errorf("socket replaced = %v, want %v", replaced, c.newSocket)
			}
		})
	}
	// The Backend works on after all that.
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
}
