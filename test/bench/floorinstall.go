package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/nftables"
)

// floorInstaller gives column F its one install per transfer: the floor
// is the helper's time, plus the relay's round trips, plus one install
// (issue 13), and an install costs more than its system call. Every
// nf_tables transaction makes the kernel wait for an RCU grace period
// afterwards (nf_tables_trans_destroy_work), and on a kernel that
// expedites grace periods (/sys/kernel/rcu_expedited = 1, as on the VM the
// bench was written on) that wait interrupts every CPU, the client's and
// the server's too. So the floor's relay installs, for each 227 or 229 it
// relays, the mapping pasvgate would (pasvgate's nftables backend, with
// the address, SNAT and dialed address of column D), before it relays the
// reply. The data connection then takes pasvgate's kernel path, as D's
// do. After the 226 the mapping is released, and released mappings are
// removed in one transaction every nat.DefaultRemoveDelay, as pasvgate
// removes them.
//
// The relay does not rewrite the reply, so the public port is the
// server's, and a mapping still waiting for its removal may hold the key a
// new 227 needs: then the pending removals are done first (a rare extra
// transaction, counted against the floor).
type floorInstaller struct {
	b *nftables.Backend

	mu      sync.Mutex
	pending []rules.Mapping // released, not removed yet
	ids     int             // mappings asked for, for their IDs
	n       int             // mappings installed

	stop chan struct{}
	done chan struct{}
}

// newFloorInstaller sets pasvgate's table up in the current network
// namespace (the relay runs in the gw) and starts the removal worker.
func newFloorInstaller(ctx context.Context) (*floorInstaller, error) {
	b, err := nftables.New(nftables.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	if err := b.Setup(ctx); err != nil {
		b.Close()
		return nil, err
	}
	f := &floorInstaller{b: b, stop: make(chan struct{}), done: make(chan struct{})}
	go f.removeLoop()
	return f, nil
}

// removeLoop removes the released mappings every nat.DefaultRemoveDelay.
func (f *floorInstaller) removeLoop() {
	defer close(f.done)
	t := time.NewTicker(nat.DefaultRemoveDelay)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			f.removePending()
		}
	}
}

// removePending removes every released mapping in one transaction.
func (f *floorInstaller) removePending() error {
	f.mu.Lock()
	ms := f.pending
	f.pending = nil
	f.mu.Unlock()
	if len(ms) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(f.b.RemoveBatch(ctx, ms)...)
}

// installs is how many mappings were installed.
func (f *floorInstaller) installs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// close stops the worker and takes pasvgate's table out again, leaving the
// gw at its baseline.
func (f *floorInstaller) close() error {
	close(f.stop)
	<-f.done
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := f.b.Flush(ctx)
	return errors.Join(err, f.b.Close())
}

// The lab's addresses, parsed once for the mappings the bench installs
// itself (floorInstaller, oneInstall).
var (
	clientIP      = netip.MustParseAddr(clientAddr)
	gwPublicAddr  = netip.MustParseAddr(gwPublic)
	gwPublic2Addr = netip.MustParseAddr(gwPublic2)
	gwPrivateAddr = netip.MustParseAddr(gwPrivate)
	serverIP      = netip.MustParseAddr(serverAddr)
)

// mappingLikeD is the mapping column D's pasvgate makes for a transfer
// from client to the server's port target, announced as public (with a
// second, dialed address for a PASV, or none): SNAT to the gw's private
// address, as D runs.
func mappingLikeD(id string, client netip.Addr, public netip.AddrPort, dialed netip.Addr, target uint16) rules.Mapping {
	return rules.Mapping{
		ID:      id,
		Source:  client,
		Public:  public,
		Dialed:  dialed,
		Target:  netip.AddrPortFrom(serverIP, target),
		SNAT:    gwPrivateAddr,
		Created: time.Now(),
	}
}

// maxFloorLine bounds the part of a reply line a floorSession holds
// while it waits for the rest.
const maxFloorLine = 4096

// floorSession follows one control connection's replies.
type floorSession struct {
	f       *floorInstaller
	client  netip.Addr
	current *rules.Mapping // installed for the transfer under way
	carry   []byte         // the start of a line whose end has not come yet
	buf     []byte         // carry and the chunk after it, kept for reuse
}

// reply sees each chunk the server sends before the relay passes it on:
// it installs a mapping for a 227 or 229 line and releases it at a 226.
// A failed install is an error: the floor must not skip its install. A
// line split across reads is put together first (up to maxFloorLine), so
// that its install comes before its last part is relayed.
func (s *floorSession) reply(chunk []byte) error {
	s.buf = append(s.buf[:0], s.carry...)
	s.buf = append(s.buf, chunk...)
	s.carry = s.carry[:0]
	for line := range bytes.Lines(s.buf) {
		if line[len(line)-1] != '\n' {
			if len(line) <= maxFloorLine {
				s.carry = append(s.carry, line...)
			}
			break
		}
		if len(line) < 4 || line[3] != ' ' {
			continue
		}
		switch string(line[:3]) {
		case "227":
			ap, err := ftp.ParsePASV(line[4:])
			if err != nil {
				return err
			}
			// As D: announced on the second public address, and
			// admitted on the one the client dialed too.
			if err := s.install(netip.AddrPortFrom(gwPublic2Addr, ap.Port()), gwPublicAddr); err != nil {
				return err
			}
		case "229":
			p, err := ftp.ParseEPSV(line[4:])
			if err != nil {
				return err
			}
			if err := s.install(netip.AddrPortFrom(gwPublicAddr, p), netip.Addr{}); err != nil {
				return err
			}
		case "226":
			s.release()
		}
	}
	return nil
}

// install installs the mapping for a data connection to the server's port
// public.Port().
func (s *floorSession) install(public netip.AddrPort, dialed netip.Addr) error {
	s.release()
	f := s.f
	f.mu.Lock()
	f.ids++
	m := mappingLikeD(fmt.Sprintf("floor-%d", f.ids), s.client, public, dialed, public.Port())
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := f.b.Install(ctx, m)
	if errors.Is(err, rules.ErrExists) {
		// A released mapping on the same server port has not been
		// removed yet.
		if rerr := f.removePending(); rerr != nil {
			return rerr
		}
		err = f.b.Install(ctx, m)
	}
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
	s.current = &m
	return nil
}

// release queues the current mapping, if any, for removal.
func (s *floorSession) release() {
	if s.current == nil {
		return
	}
	s.f.mu.Lock()
	s.f.pending = append(s.f.pending, *s.current)
	s.f.mu.Unlock()
	s.current = nil
}
