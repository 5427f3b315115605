package rulestest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// SNATReuseServerPort is the first port of the servers SNATPortReuse
// starts, one per round: each sends one byte on each connection and
// closes it first, as an FTP server does after a download, so that the
// server holds the connection in TIME_WAIT.
const SNATReuseServerPort = 30001

// SNATPortReuse checks, on a real kernel, that a SNATed data connection
// is never given the 4-tuple of a recent one that the server still holds
// in TIME_WAIT.
//
// That is what happened under load (issue 13, "connection refused" with
// default flags): the kernel's SNAT keeps the client's source port when
// it can, and on kernels that evict a TIME_WAIT conntrack entry whose
// sequence numbers have advanced, it reuses the very tuple of a closed
// data connection when the client happens to reuse its source port and
// the server its passive port. The server's TIME_WAIT socket then
// rejects the SYN (PAWS: a client's timestamps start from a different
// offset for each destination address, and a mapping's public address
// is often not the previous one's), the client's retry comes after the
// one-shot element was spent, and the transfer fails.
//
// Each round makes that as likely as it gets: the client connects from
// one source port to mapping A (public address pubA) and reads until the
// server closes; the gateway's conntrack entry of that connection is
// deleted (pasvgate's own flush after an abnormal end did that to
// TIME_WAIT entries, and so do an operator's `conntrack -D` and a full
// table's early drop); then the client connects from the same source
// port to mapping B (public address pubB), whose target is the same
// server port. B's connection must get through every time. With the
// source port kept, about two rounds in five failed on Linux 6.18 (86 of
// 200), so the default rounds fail all but certainly. With a random
// source port, a round fails only if it draws A's port again, about one
// in 64,000; each round has a server port of its own so that the ports
// of earlier rounds' forgotten connections do not add up. It needs the
// conntrack tool.
func SNATPortReuse(t *testing.T, b rules.Backend, l *netns.GatewayLab, client, pubA, pubB, server, snat netip.Addr, rounds int) {
	t.Helper()
	ctx := context.Background()
	failed := 0
	for i := range rounds {
		target := netip.AddrPortFrom(server, uint16(SNATReuseServerPort+i))
		ln, err := l.Server.Listen("tcp", target.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("x"))
				c.Close()
			}
		}()
		sport := uint16(45000 + i)
		for j, pub := range []netip.Addr{pubA, pubB} {
			m := rules.Mapping{
				ID:      fmt.Sprintf("m-reuse%d-%d", i, j),
				Source:  client,
				Public:  netip.AddrPortFrom(pub, uint16(42000+2*i+j)),
				Target:  target,
				SNAT:    snat,
				Created: time.Now(),
			}
			if err := b.Install(ctx, m); err != nil {
				t.Fatalf("Install %v: %v", m, err)
			}
			err := readFrom(l.Client, netip.AddrPortFrom(client, sport), m.Public)
			if rerr := b.Remove(ctx, m); rerr != nil {
				t.Fatalf("Remove %v: %v", m, rerr)
			}
			if j == 0 && err == nil {
				// The gateway forgets the closed connection, as an
				// abnormal end's flush, `conntrack -D` or a full table's
				// early drop do; the server still holds it in TIME_WAIT.
				l.GW.MustRun(t, "conntrack", "-D", "-p", "tcp", "--orig-src", client.String(),
					"--orig-dst", pub.String(), "--orig-port-dst", fmt.Sprint(m.Public.Port()))
			}
			if err != nil {
				if j == 0 {
					t.Fatalf("round %d: first connection, from port %d to %s: %v", i, sport, m.Public, err)
				}
				t.Errorf("round %d: connection from port %d to %s, after one from the same port to %s that the server closed: %v",
					i, sport, m.Public, pubA, err)
				failed++
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d reused source ports failed", failed, rounds)
	}
}

// readFrom connects from local to to within 3 s (a lost SYN is retried
// after 1 s) and reads until the server closes, expecting one byte.
func readFrom(ns *netns.NS, local, to netip.AddrPort) error {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{
			LocalAddr: net.TCPAddrFromAddrPort(local),
			Timeout:   3 * time.Second,
			// The client's side of the previous connection closed
			// second (LAST_ACK), so its port is free; SO_REUSEADDR only
			// guards against a slow final ACK.
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
		var err error
		c, err = d.Dial("tcp", to.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading: %w", err)
	}
	if string(got) != "x" {
		return fmt.Errorf("read %q, want %q", got, "x")
	}
	return nil
}
