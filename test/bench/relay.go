package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/proxy/rawio"
	"github.com/pasvgate/pasvgate/test/bench/load"
)

// relayGW is column F, the floor, or F0, the same without installs: a
// plain TCP relay of the control channel
// in the gw, a separate Go process like pasvgate that does nothing but read
// from one side and write to the other (the bench itself, re-run with
// -relay), with the data connections on a static kernel path shaped like
// pasvgate's: DNAT of the public data ports to the server, SNAT to the gw's
// private address (the address the relay's control connection comes from,
// so vsftpd's same-IP check passes as it does for pasvgate), and FORWARD
// accepts under the lab's DROP policy. The relay does not parse, so its
// 227s name the server; the client is told to connect PASV data to
// gwPublic2 instead (ftpload -pasv-host), and EPSV's 229 already sends it
// to the control address, gwPublic. With no line handling, but pasvgate's
// own socket I/O and thread count (relayPair), it is what a
// control-channel proxy built as pasvgate costs on this machine over the
// kernel data path. Column F adds one install per transfer
// (floorinstall.go), which makes it pasvgate's floor as issue 13 defines
// it; F0 has no rule call per transfer at all.
type relayGW struct {
	l       *lab
	self    string // this program
	install bool   // F: one install per transfer; F0: none
	p       *proc
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

func (g *relayGW) key() string {
	if g.install {
		return "F"
	}
	return "F0"
}

func (g *relayGW) title() string {
	if g.install {
		return "floor: plain Go TCP relay of the control channel (pasvgate's raw socket I/O, one thread), with pasvgate's install of each transfer's mapping before its 227/229, removed in batches after its 226"
	}
	return "F without installs: the same relay over a static DNAT+SNAT data path only"
}
func (g *relayGW) target() netip.AddrPort { return netip.MustParseAddrPort(gwPublic + ":21") }
func (g *relayGW) clientArgs() []string   { return []string{"-pasv-host", gwPublic2} }

func (g *relayGW) up(ctx context.Context, _ bool) error {
	if _, err := run(ctx, g.l.gw, fmt.Sprintf(floorRules, "-A"), iptNFT+"-restore", "--noflush", "--wait", "5"); err != nil {
		return err
	}
	args := []string{"-relay", gwPublic + ":21", "-relay-upstream", serverAddr + ":21"}
	if g.install {
		args = append(args, "-relay-install")
	}
	p, err := startProc(g.l.gw, g.self, args...)
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

// floorInstallsLine starts the line on which the relay reports, as it
// ends, how many mappings it installed.
const floorInstallsLine = "floor installs:"

func (g *relayGW) down(ctx context.Context) error {
	var errs []error
	if g.p != nil {
		if err := g.p.stop(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("relay did not stop cleanly: %w", err))
		}
		if g.install && !installedSome(g.p.output()) {
			errs = append(errs, fmt.Errorf("the floor relay installed no mapping:\n%s", g.p.outputText()))
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

// relay is `bench -relay LISTEN -relay-upstream ADDR [-relay-install]`:
// it relays every connection to LISTEN to ADDR until ctx ends, then closes
// them all and returns. With install, it installs a mapping for each
// transfer (floorInstaller) and takes pasvgate's table out on its way out.
func relay(ctx context.Context, listen, upstream string, install bool) (err error) {
	runtime.GOMAXPROCS(1) // as pasvgate runs (cmd/pasvgate/procs.go)
	var fl *floorInstaller
	if install {
		if fl, err = newFloorInstaller(ctx); err != nil {
			return err
		}
		defer func() {
			err = errors.Join(err, fl.close())
			// Read by relayGW.down: an F that installed nothing is no floor.
			fmt.Printf("%s %d\n", floorInstallsLine, fl.installs())
		}()
	}
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
			var watch *floorSession
			if fl != nil {
				watch = &floorSession{f: fl, client: addrOf(c.RemoteAddr())}
				defer watch.release()
			}
			relayPair(c, u, watch)
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
//
// watch, if not nil, sees what b (the server) sends before a gets it.
func relayPair(a, b net.Conn, watch *floorSession) {
	done := make(chan struct{})
	go func() {
		relayCopy(b, a, nil)
		close(done)
	}()
	relayCopy(a, b, watch)
	<-done
	a.Close()
	b.Close()
}

func relayCopy(dst, src net.Conn, watch *floorSession) {
	buf := make([]byte, 4096)
	rd, wr := rawio.Wrap(src), rawio.Wrap(dst)
	for {
		n, err := rd.Read(buf)
		if n > 0 && watch != nil {
			if werr := watch.reply(buf[:n]); werr != nil {
				// Loudly: the client's transfer fails, and so the bench.
				fmt.Fprintln(os.Stderr, "relay: floor install:", werr)
				src.Close()
				break
			}
		}
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

// addrOf is the IP address of a TCP address.
func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// installedSome reports whether the relay's output says it installed at
// least one mapping.
func installedSome(out []logLine) bool {
	for _, l := range out {
		if rest, ok := strings.CutPrefix(l.text, floorInstallsLine+" "); ok {
			n, err := strconv.Atoi(rest)
			return err == nil && n > 0
		}
	}
	return false
}
