package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/proxy/rawio"
	"github.com/pasvgate/pasvgate/test/bench/load"
)

// relayGW is column F, the floor: a plain TCP relay of the control channel
// in the gw, a separate Go process like pasvgate that does nothing but read
// from one side and write to the other (the bench itself, re-run with
// -relay), with the data connections on a static kernel path shaped like
// pasvgate's: DNAT of the public data ports to the server, SNAT to the gw's
// private address (the address the relay's control connection comes from,
// so vsftpd's same-IP check passes as it does for pasvgate), and FORWARD
// accepts under the lab's DROP policy. The relay does not parse, so its
// 227s name the server; the client is told to connect PASV data to
// gwPublic2 instead (ftpload -pasv-host), and EPSV's 229 already sends it
// to the control address, gwPublic. With no rule call per transfer and no
// line handling, but pasvgate's own socket I/O and thread count
// (relayPair), it is what a control-channel proxy built as pasvgate is
// costs on this machine over the kernel data path: pasvgate's floor.
type relayGW struct {
	l    *lab
	self string // this program
	p    *proc
}

// floorRules are column F's static data path (see relayGW).
const floorRules = `*nat
%[1]s PREROUTING -d ` + gwPublic2 + `/32 -p tcp -m tcp --dport ` + serverPortsIpt + ` -m comment --comment pgbench -j DNAT --to-destination ` + serverAddr + `
%[1]s PREROUTING -d ` + gwPublic + `/32 -p tcp -m tcp --dport ` + serverPortsIpt + ` -m comment --comment pgbench -j DNAT --to-destination ` + serverAddr + `
%[1]s POSTROUTING -d ` + serverAddr + `/32 -p tcp -m tcp --dport ` + serverPortsIpt + ` -m comment --comment pgbench -j SNAT --to-source ` + gwPrivate + `
COMMIT
*filter
%[1]s FORWARD -m conntrack --ctstate ESTABLISHED -m comment --comment pgbench -j ACCEPT
%[1]s FORWARD -s ` + clientAddr + `/32 -d ` + serverAddr + `/32 -p tcp -m tcp --dport ` + serverPortsIpt + ` -m conntrack --ctstate NEW -m comment --comment pgbench -j ACCEPT
COMMIT
`

func (g *relayGW) key() string { return "F" }
func (g *relayGW) title() string {
	return "floor: plain Go TCP relay of the control channel (pasvgate's raw socket I/O, one thread), static DNAT+SNAT data path"
}
func (g *relayGW) target() netip.AddrPort { return netip.MustParseAddrPort(gwPublic + ":21") }
func (g *relayGW) clientArgs() []string   { return []string{"-pasv-host", gwPublic2} }

func (g *relayGW) up(ctx context.Context, _ bool) error {
	if _, err := run(ctx, g.l.gw, fmt.Sprintf(floorRules, "-A"), iptNFT+"-restore", "--noflush", "--wait", "5"); err != nil {
		return err
	}
	p, err := startProc(g.l.gw, g.self, "-relay", gwPublic+":21", "-relay-upstream", serverAddr+":21")
	if err != nil {
		return err
	}
	g.p = p
	return waitBanner(ctx, g.l.client, g.target().String(), p)
}

func (g *relayGW) check(_ context.Context, res load.Result) error {
	if err := wantData(res.PASVAddr, gwPublic2, serverPorts); err != nil {
		return fmt.Errorf("floor PASV: %w", err)
	}
	if res.EPSVAddr != "" {
		if err := wantData(res.EPSVAddr, gwPublic, serverPorts); err != nil {
			return fmt.Errorf("floor EPSV: %w", err)
		}
	}
	return nil
}

func (g *relayGW) down(ctx context.Context) error {
	var errs []error
	if g.p != nil {
		if err := g.p.stop(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("relay did not stop cleanly: %w", err))
		}
		g.p = nil
	}
	if _, err := run(ctx, g.l.gw, fmt.Sprintf(floorRules, "-D"), iptNFT+"-restore", "--noflush", "--wait", "5"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// clientArgs is implemented by gateways whose client needs more flags.
type clientArgs interface{ clientArgs() []string }

// relay is `bench -relay LISTEN -relay-upstream ADDR`: it relays every
// connection to LISTEN to ADDR until ctx ends, then closes them all and
// returns.
func relay(ctx context.Context, listen, upstream string) error {
	runtime.GOMAXPROCS(1) // as pasvgate runs (cmd/pasvgate/procs.go)
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
// would splice in the kernel, which no line-reading proxy can do. It
// reads and writes as pasvgate does (package proxy/rawio, on one thread:
// relay sets GOMAXPROCS), so that the floor is not slower than pasvgate
// for want of pasvgate's own I/O.
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
	rd, wr := rawio.Wrap(src), rawio.Wrap(dst)
	for {
		n, err := rd.Read(buf)
		if n > 0 {
			if _, werr := wr.Write(buf[:n]); werr != nil {
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
