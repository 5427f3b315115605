//go:build linux

package sniff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"
)

// readTimeout is how long one read of a live capture may block: how late
// a capture notices its end, and how often an idle one flushes.
const readTimeout = 200 * time.Millisecond

// LiveCapture is a live capture on one interface (AF_PACKET, through
// pcapgo: no cgo, no libpcap). It needs CAP_NET_RAW.
type LiveCapture struct {
	// Save, if set before Run, receives every captured frame as a pcap
	// file (Ethernet, nanosecond timestamps), so that what was audited
	// can be audited again, or opened in Wireshark.
	Save io.Writer

	iface  string
	cfg    Config
	handle *pcapgo.EthernetHandle
}

// OpenLive opens a capture on iface, in the network namespace of the
// calling thread, with a kernel filter that passes the control ports of
// cfg and the handshakes of all TCP connections (see controlFilter).
// Frames are queued from here on, before Run reads them.
func OpenLive(iface string, cfg Config) (*LiveCapture, error) {
	prog, err := controlFilter(cfg.ports(), maxSnapLen)
	if err != nil {
		return nil, err
	}
	h, err := pcapgo.NewEthernetHandle(iface)
	if err != nil {
		return nil, fmt.Errorf("opening capture on %s: %w", iface, err)
	}
	c := &LiveCapture{iface: iface, cfg: cfg, handle: h}
	// pcapgo captures one MTU per frame by default; a veth or a NIC with
	// offloads hands the tap 64 KiB GSO frames, which would be cut.
	if err := h.SetCaptureLength(maxSnapLen); err != nil {
		c.Close()
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	if err := h.SetBPF(prog); err != nil {
		c.Close()
		return nil, fmt.Errorf("capture on %s: attaching filter: %w", iface, err)
	}
	fd, err := handleFD(h)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	// Close does not wake a read blocked in recvmsg, and pcapgo has no
	// read timeout: a socket one makes every read return within
	// readTimeout, so that Run ends on time on a quiet link.
	tv := unix.NsecToTimeval(readTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		c.Close()
		return nil, fmt.Errorf("capture on %s: read timeout: %w", iface, err)
	}
	// A larger queue rides out bursts; it needs CAP_NET_ADMIN beyond
	// rmem_max, and a capture works without it.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	return c, nil
}

// Run reads frames until d has passed (d <= 0: until ctx ends) or ctx
// ends, and returns the report. Frames the kernel queued before the end
// are still read. On a read error it returns the report so far and the
// error.
func (c *LiveCapture) Run(ctx context.Context, d time.Duration) (*Report, error) {
	var w *pcapgo.Writer
	if c.Save != nil {
		w = pcapgo.NewWriterNanos(c.Save)
		if err := w.WriteFileHeader(maxSnapLen, layers.LinkTypeEthernet); err != nil {
			return nil, fmt.Errorf("saving capture: %w", err)
		}
	}
	// end is when the capture ends: d from now, or when ctx ends if that
	// is sooner. Frames captured before it and still queued are read.
	var end time.Time
	if d > 0 {
		end = time.Now().Add(d)
	}
	t := newTracker(c.cfg)
	var runErr error
	for {
		if ctx.Err() != nil && (end.IsZero() || time.Now().Before(end)) {
			end = time.Now()
		}
		over := !end.IsZero() && !time.Now().Before(end)
		data, ci, err := c.handle.ZeroCopyReadPacketData()
		if err != nil {
			if !isReadTimeout(err) {
				runErr = fmt.Errorf("capturing on %s: %w", c.iface, err)
				break
			}
			if over {
				break // the queue is empty
			}
			t.advance(time.Now())
			continue
		}
		if over && !ci.Timestamp.Before(end) {
			break // after the end: only the backlog from before it counts
		}
		if w != nil {
			if err := w.WritePacket(ci, data); err != nil {
				runErr = fmt.Errorf("saving capture: %w", err)
				break
			}
		}
		t.packet(data, ci, layers.LinkTypeEthernet)
	}
	rep := t.finish()
	rep.Source = "live:" + c.iface
	if st, err := c.handle.Stats(); err == nil && st.Drops > 0 {
		rep.Stats.KernelDrops = uint64(st.Drops)
		rep.Warnings = append(rep.Warnings, pluralf(int(st.Drops), "frame", "dropped by the kernel: the capture fell behind"))
	}
	return rep, runErr
}

// Close releases the capture socket.
func (c *LiveCapture) Close() {
	c.handle.Close()
}

// Live captures on iface for d (or until ctx ends) and reports, in the
// network namespace of the calling thread.
func Live(ctx context.Context, iface string, d time.Duration, cfg Config) (*Report, error) {
	c, err := OpenLive(iface, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Run(ctx, d)
}

// handleFD returns the packet socket of h. pcapgo v1.1.19 keeps it in an
// unexported field and offers no way to set a socket option; reflect may
// read (not write) it. If gopacket renames the field this fails loudly
// rather than capture without a timeout.
func handleFD(h *pcapgo.EthernetHandle) (int, error) {
	f := reflect.ValueOf(h).Elem().FieldByName("fd")
	if !f.IsValid() || f.Kind() != reflect.Int {
		return -1, errors.New("pcapgo.EthernetHandle has no fd field (gopacket changed?)")
	}
	return int(f.Int()), nil
}

// isReadTimeout reports whether err from a pcapgo read is the socket's
// read timeout (EAGAIN) or a signal that cut a read short (EINTR: reads
// with SO_RCVTIMEO are not restarted, and the Go runtime signals its
// threads). pcapgo formats the errno into its message with %s instead of
// wrapping it, so its text is all there is to match; this is the one
// place that does.
func isReadTimeout(err error) bool {
	msg := err.Error()
	return strings.HasSuffix(msg, unix.EAGAIN.Error()) || strings.HasSuffix(msg, unix.EINTR.Error())
}
