//go:build !linux

package sniff

import (
	"context"
	"errors"
	"io"
	"time"
)

var errNoLive = errors.New("live capture needs Linux (AF_PACKET)")

// LiveCapture is a live capture; only Linux has one.
type LiveCapture struct {
	// Save is as on Linux.
	Save io.Writer
}

// OpenLive fails: live capture needs Linux.
func OpenLive(iface string, cfg Config) (*LiveCapture, error) { return nil, errNoLive }

// Run fails: live capture needs Linux.
func (c *LiveCapture) Run(ctx context.Context, d time.Duration) (*Report, error) {
	return nil, errNoLive
}

// Close does nothing.
func (c *LiveCapture) Close() {}

// Live fails: live capture needs Linux.
func Live(ctx context.Context, iface string, d time.Duration, cfg Config) (*Report, error) {
	return nil, errNoLive
}
