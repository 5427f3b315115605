package demoftpd

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds how long a new connection may take to send its
// PROXY header. A proxy writes it before anything else, at once; a client
// that connects directly sends nothing until it has our 220, so it is
// refused after this long.
const proxyHeaderTimeout = 5 * time.Second

// proxyListener is the control listener under Config.ProxyProtocol. It
// reads each connection's PROXY header on a goroutine of its own and hands
// out only connections whose header was valid, so that one slow or silent
// peer cannot hold up the others: ftpserverlib asks for RemoteAddr on its
// accept goroutine, which with a bare proxyproto.Listener would wait there
// for the header.
type proxyListener struct {
	net.Listener // the socket's listener: Addr, and Close through close
	logger       *slog.Logger

	ready chan net.Conn // connections whose header was read
	errs  chan error    // accept errors other than the listener's close
	done  chan struct{} // closed by Close

	mu      sync.Mutex
	pending map[net.Conn]struct{} // connections whose header is being read
	wg      sync.WaitGroup        // run and every header reader

	closeOnce sync.Once
}

// newProxyListener starts accepting on inner. Close stops it and waits for
// its goroutines.
func newProxyListener(inner net.Listener, logger *slog.Logger) *proxyListener {
	l := &proxyListener{
		Listener: inner,
		logger:   logger,
		ready:    make(chan net.Conn),
		errs:     make(chan error),
		done:     make(chan struct{}),
		pending:  map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.run()
	return l
}

// Accept returns the next connection that sent a valid header. After
// Close it returns net.ErrClosed in a *net.OpError, which ftpserverlib
// takes for a clean stop.
func (l *proxyListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close closes the socket, drops the connections still sending their
// header and waits for every goroutine of the listener.
func (l *proxyListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		l.mu.Lock()
		for c := range l.pending {
			_ = c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

// run accepts on the socket until it is closed.
func (l *proxyListener) run() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Handed to Accept, so the library sees it as it would
			// without PROXY (it retries temporary errors).
			select {
			case l.errs <- err:
				continue
			case <-l.done:
				return
			}
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			_ = c.Close()
			return
		default:
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(c)
	}
}

// handshake reads c's header and passes c on, or closes it.
func (l *proxyListener) handshake(c net.Conn) {
	defer l.wg.Done()
	pc := proxyproto.NewConn(c,
		proxyproto.WithPolicy(proxyproto.REQUIRE),
		proxyproto.SetReadHeaderTimeout(proxyHeaderTimeout))
	// Under REQUIRE the header's error is reported only by Read (and
	// Write); a zero-length Read asks for it without consuming anything.
	_, err := pc.Read(nil)
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		select {
		case <-l.done: // Close cut the read short: nothing to report
		default:
			l.logger.Warn("connection refused: no valid PROXY header", "peer", c.RemoteAddr(), "err", err)
		}
		_ = c.Close()
		return
	}
	h := pc.ProxyHeader()
	l.logger.Info("PROXY header", "peer", c.RemoteAddr(), "version", h.Version,
		"command", commandName(h), "source", h.SourceAddr, "destination", h.DestinationAddr)
	select {
	case l.ready <- proxiedConn{pc}:
	case <-l.done:
		_ = c.Close()
	}
}

// commandName names a header's command for the log: "PROXY", or "LOCAL"
// for a v2 LOCAL or v1 UNKNOWN header, whose addresses are not used.
func commandName(h *proxyproto.Header) string {
	if h.Command.IsLocal() {
		return "LOCAL"
	}
	return "PROXY"
}

// proxiedConn is a connection whose header has been read: RemoteAddr is
// the header's source (the socket's peer for LOCAL), as the library's
// logs and its same-address check of passive data connections must see
// it. LocalAddr stays the socket's own: the header's destination is the
// proxy's public address, not one this server can listen on, and the 227
// (Config.PublicHost unset) must name where the passive listener is.
type proxiedConn struct {
	*proxyproto.Conn
}

// LocalAddr is the socket's local address.
func (c proxiedConn) LocalAddr() net.Addr { return c.Raw().LocalAddr() }
