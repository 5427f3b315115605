package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

// relayGW is column R: a plain TCP relay in the gw, a separate Go process
// like pasvgate that does nothing but read from one side and write to the
// other (the bench itself, re-run with -relay). It carries the control
// channel only, so no transfer can work through it and it is measured with
// NOOPs alone: what any userspace control-channel proxy written in Go
// costs per round trip on this machine, before it parses anything. It is
// the floor to read pasvgate's NOOP numbers against.
type relayGW struct {
	l    *lab
	self string // this program
	p    *proc
}

func (g *relayGW) key() string            { return "R" }
func (g *relayGW) title() string          { return "plain Go TCP relay, control channel only (NOOPs)" }
func (g *relayGW) target() netip.AddrPort { return netip.MustParseAddrPort(gwPublic + ":21") }
func (g *relayGW) noopsOnly() bool        { return true }

func (g *relayGW) up(ctx context.Context, _ bool) error {
	p, err := startProc(g.l.gw, g.self, "-relay", gwPublic+":21", "-relay-upstream", serverAddr+":21")
	if err != nil {
		return err
	}
	g.p = p
	return waitBanner(ctx, g.l.client, g.target().String(), p)
}

func (g *relayGW) check(context.Context, load.Result) error { return nil }

func (g *relayGW) down(context.Context) error {
	if g.p == nil {
		return nil
	}
	err := g.p.stop(10 * time.Second)
	g.p = nil
	if err != nil {
		return fmt.Errorf("relay did not stop cleanly: %w", err)
	}
	return nil
}

// noopsOnly is implemented by gateways that carry no data connection.
type noopsOnly interface{ noopsOnly() bool }

func isNoopsOnly(g gateway) bool {
	n, ok := g.(noopsOnly)
	return ok && n.noopsOnly()
}

// relay is `bench -relay LISTEN -relay-upstream ADDR`: it relays every
// connection to LISTEN to ADDR until ctx ends, then closes them all and
// returns.
func relay(ctx context.Context, listen, upstream string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	}()
	fmt.Printf("relay listening on %s\n", listen)
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
			if err != nil {
				c.Close()
				return
			}
			track(c, true)
			track(u, true)
			relayPair(c, u)
			track(c, false)
			track(u, false)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("relay: listener failed")
}

// relayPair copies both ways until both sides are done. It reads and
// writes with a small buffer on purpose: io.Copy between two TCP sockets
// would splice in the kernel, which no line-reading proxy can do.
func relayPair(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		relayCopy(b, a)
		close(done)
	}()
	relayCopy(a, b)
	<-done
	a.Close()
	b.Close()
}

func relayCopy(dst, src net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
