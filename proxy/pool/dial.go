package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// DefaultDialTimeout bounds each connect of a Dial whose net.Dialer has no
// Timeout, so that a blackholed server cannot hold a session for the
// kernel's two minutes of SYN retries.
const DefaultDialTimeout = 10 * time.Second

// Conn is a connection to a member of a pool, counted in its sessions
// until closed.
type Conn struct {
	net.Conn        // as the net.Dialer made it (a *net.TCPConn), the PROXY header already sent
	Member   string // the member's Addr

	pool *Pool
	m    *member
	once sync.Once
}

// Close closes the connection and ends its session in the member's count,
// once however often it is called (and for a member Update has removed
// meanwhile too).
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.pool != nil {
			c.pool.release(c.m)
		}
	})
	return err
}

// Dial picks a member by the policy and connects to it. A member whose
// connect fails is marked Down (logged) and the next candidate is tried, so
// that the client never sees a dead server while another is Up. Down
// members are tried last, only when no Up member answered. Drained members
// (weight 0) are never picked. With ProxyProtocol set the header is written
// before Dial returns (source Key.Client, destination Key.Local; a Key
// without them is an error, and nothing is dialled). Errors wrap every
// underlying dial error (errors.Is(err, syscall.EMFILE) works); a pool with
// nothing to pick returns an error wrapping ErrNoServer.
//
// d.Timeout bounds each connect (DefaultDialTimeout if 0): give the connect
// bound there rather than as ctx's deadline, so that a blackholed first
// member leaves time for the next. ctx bounds the whole Dial; its end is
// not held against a member. d may be nil.
func (p *Pool) Dial(ctx context.Context, d *net.Dialer, k Key) (*Conn, error) {
	dialer := net.Dialer{Timeout: DefaultDialTimeout}
	if d != nil {
		dialer = *d
		if dialer.Timeout <= 0 {
			dialer.Timeout = DefaultDialTimeout
		}
	}

	p.mu.Lock()
	p.expireLocked(time.Now())
	name, pp := p.cfg.Name, p.cfg.ProxyProtocol
	cands := p.candidatesLocked(k)
	if len(cands) > 0 {
		// Counted before the lock is let go, so that concurrent least-conn
		// picks see this one.
		cands[0].dialing++
	}
	p.mu.Unlock()
	if len(cands) == 0 {
		return nil, fmt.Errorf("pool %s: %w", name, ErrNoServer)
	}

	var header []byte
	if pp != ProxyOff {
		var err error
		if header, err = sessionHeader(pp, k); err != nil {
			p.mu.Lock()
			cands[0].dialing--
			p.mu.Unlock()
			return nil, fmt.Errorf("pool %s: %w", name, err)
		}
	}

	var errs []error
	for i, m := range cands {
		if i > 0 {
			if err := ctx.Err(); err != nil {
				errs = append(errs, err) // the caller gave up
				break
			}
			p.mu.Lock()
			m.dialing++
			p.mu.Unlock()
		}
		conn, err := connect(ctx, &dialer, m.addr, header)
		now := time.Now()
		p.mu.Lock()
		m.dialing--
		if err == nil {
			m.sessions++
			if !m.healthy && p.health.Interval == 0 {
				p.markUpLocked(m, now, "connect succeeded")
			}
			p.mu.Unlock()
			return &Conn{Conn: conn, Member: m.addr, pool: p, m: m}, nil
		}
		local := ctx.Err() != nil || isLocal(err)
		if !local {
			p.markDownLocked(m, now, err.Error())
		}
		p.mu.Unlock()
		errs = append(errs, err)
		if local {
			// This host's own failure: every other member would fail
			// alike, and none of them is to blame.
			break
		}
	}
	return nil, fmt.Errorf("pool %s: no server answered: %w", name, errors.Join(errs...))
}

// connect dials addr and writes header (if any) to it.
func connect(ctx context.Context, d *net.Dialer, addr string, header []byte) (net.Conn, error) {
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if len(header) == 0 {
		return conn, nil
	}
	// The header fits in any socket buffer, so the write waits only if
	// the server has vanished since the handshake; bound it all the same.
	_ = conn.SetWriteDeadline(time.Now().Add(d.Timeout))
	_, err = conn.Write(header)
	if err == nil {
		err = conn.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("writing PROXY header to %s: %w", addr, err)
	}
	return conn, nil
}

// isLocal reports whether a connect failed for a reason of this host's
// (descriptors, memory, local ports) or its caller's, which says nothing
// about the server.
func isLocal(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL, context.Canceled} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
