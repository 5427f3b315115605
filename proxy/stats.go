package proxy

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Stats are a Server's counters since it was made, for metrics. Reasons are
// a small fixed set of words (see the refuse and rewrite calls), so they can
// be metric labels.
type Stats struct {
	// SessionsActive and SessionsTotal count admitted sessions.
	SessionsActive int64
	SessionsTotal  uint64
	// SessionsRefused counts sessions refused before relaying, by reason
	// (max-sessions, max-sessions-per-ip, loop, upstream-unreachable, fd-limit,
	// shutting down).
	SessionsRefused map[string]uint64
	// SessionsEnded counts sessions by how they ended (client closed,
	// server closed, idle timeout, login timeout, shutdown, ...).
	SessionsEnded map[string]uint64
	// Refused counts commands and replies pasvgate refused, by reason.
	Refused map[string]uint64
	// Rewrites counts rewritten lines, by kind (227, 229, PORT, EPRT,
	// 227-fixed).
	Rewrites map[string]uint64
	// BytesFromClient and BytesFromServer count control-channel bytes
	// relayed in each direction.
	BytesFromClient, BytesFromServer uint64
	// TLSHandshakes counts completed TLS handshakes on the control
	// channel, by leg (client, server).
	TLSHandshakes map[string]uint64
	// TLSFailures counts failed TLS upgrades, by reason (client-handshake,
	// cleartext-after-auth, upstream-refused, upstream-handshake,
	// upstream-verify, upstream-protocol), and failed handshakes of
	// protected data connections (data-client-handshake,
	// data-server-handshake, data-no-reuse).
	TLSFailures map[string]uint64
	// Transfers counts transfers whose final reply has come, by the path
	// their data took: kernel (a mapping: plain FTP, PROT C) or relay
	// (PROT P, through pasvgate).
	Transfers map[string]uint64
	// BytesRelayed counts the data bytes pasvgate relayed itself, both
	// directions together.
	BytesRelayed uint64
}

// counters is the live form of Stats. Byte counts are atomics because they
// move on every line; the rest is rare and takes the mutex.
type counters struct {
	active          atomic.Int64
	total           atomic.Uint64
	fromClient      atomic.Uint64
	fromServer      atomic.Uint64
	relayed         atomic.Uint64
	mu              sync.Mutex
	refusedSessions map[string]uint64
	ended           map[string]uint64
	refused         map[string]uint64
	rewrites        map[string]uint64
	tlsHandshakes   map[string]uint64
	tlsFailures     map[string]uint64
	transfers       map[string]uint64
}

func inc(m *map[string]uint64, k string) {
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[k]++
}

func (c *counters) sessionStarted() { c.active.Add(1); c.total.Add(1) }
func (c *counters) sessionEnded()   { c.active.Add(-1) }

func (c *counters) refuseSession(why string) {
	c.mu.Lock()
	inc(&c.refusedSessions, why)
	c.mu.Unlock()
}

func (c *counters) endSession(why string) {
	c.mu.Lock()
	inc(&c.ended, why)
	c.mu.Unlock()
}

func (c *counters) refuse(why string) {
	c.mu.Lock()
	inc(&c.refused, why)
	c.mu.Unlock()
}

func (c *counters) tlsHandshake(leg string) {
	c.mu.Lock()
	inc(&c.tlsHandshakes, leg)
	c.mu.Unlock()
}

func (c *counters) transfer(path string) {
	c.mu.Lock()
	inc(&c.transfers, path)
	c.mu.Unlock()
}

func (c *counters) tlsFailed(why string) {
	c.mu.Lock()
	inc(&c.tlsFailures, why)
	c.mu.Unlock()
}

func (c *counters) rewrite(kind string) {
	c.mu.Lock()
	inc(&c.rewrites, kind)
	c.mu.Unlock()
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		SessionsActive:  c.active.Load(),
		SessionsTotal:   c.total.Load(),
		SessionsRefused: maps.Clone(c.refusedSessions),
		SessionsEnded:   maps.Clone(c.ended),
		Refused:         maps.Clone(c.refused),
		Rewrites:        maps.Clone(c.rewrites),
		BytesFromClient: c.fromClient.Load(),
		BytesFromServer: c.fromServer.Load(),
		TLSHandshakes:   maps.Clone(c.tlsHandshakes),
		TLSFailures:     maps.Clone(c.tlsFailures),
		Transfers:       maps.Clone(c.transfers),
		BytesRelayed:    c.relayed.Load(),
	}
}
