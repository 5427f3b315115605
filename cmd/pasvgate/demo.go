package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/cmd/pasvgate/demoftpd"
	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// cmdDemo runs the loopback demonstration: the built-in FTP server on
// 127.0.0.2 advertising its "private" address, pasvgate in front of it on
// 127.0.0.1 advertising 127.0.0.3, with the in-memory rules backend, and a
// client asking each for a passive address. It needs no root and changes
// nothing on the machine.
func cmdDemo(args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("demo takes no arguments")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := demoftpd.Start(ctx, demoftpd.Config{Listen: "127.0.0.2:0", PublicHost: "127.0.0.2", PassivePorts: [2]int{21000, 21099}})
	if err != nil {
		return fmt.Errorf("starting the built-in server: %w", err)
	}
	defer srv.Close()
	backend := &fake.Backend{}
	_ = backend.Setup(ctx)
	table, err := nat.New(backend, nat.Config{Ports: nat.PortRange{Low: 20000, High: 20099}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	p := &proxy.Server{
		Settings: proxy.Settings{Upstream: srv.Addr().String(), PublicAddr: netip.MustParseAddr("127.0.0.3"), SNAT: true},
		NAT:      table,
		Logger:   slog.New(slog.DiscardHandler),
	}
	served := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { served <- p.Serve(sctx, ln) }()

	fmt.Printf("built-in FTP server on %s, advertising its private address\n", srv.Addr())
	fmt.Printf("pasvgate on %s, public address 127.0.0.3, data ports 20000-20099\n\n", ln.Addr())
	direct, err := askPASV(srv.Addr().String(), nil)
	if err != nil {
		return err
	}
	fmt.Printf("server's reply:         %s\n", direct)
	var ms []rules.Mapping
	via, err := askPASV(ln.Addr().String(), func() { ms, _ = backend.List(ctx) })
	if err != nil {
		return err
	}
	fmt.Printf("client sees (rewritten): %s\n", via)
	for _, m := range ms {
		fmt.Printf("mapping while the session was open: %s\n", m)
	}
	stop()
	if err := <-served; err != nil {
		return err
	}
	if err := table.Close(ctx); err != nil {
		return err
	}
	fmt.Printf("mappings left after the session: %d\n", backend.Len())
	return nil
}

// askPASV logs in anonymously at addr and returns the reply to PASV.
// whileOpen, if not nil, runs after the reply and before the connection
// closes: the session, and so its mapping, lives until then (once the
// client is gone the mapping is released at any moment).
func askPASV(addr string, whileOpen func()) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	reply := func() (string, error) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			if len(line) >= 4 && line[3] == ' ' {
				return strings.TrimRight(line, "\r\n"), nil
			}
		}
	}
	if _, err := reply(); err != nil {
		return "", err
	}
	var last string
	for _, cmd := range []string{"USER anonymous", "PASS demo@", "PASV"} {
		if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
			return "", err
		}
		if last, err = reply(); err != nil {
			return "", err
		}
	}
	if whileOpen != nil {
		whileOpen()
	}
	return last, nil
}
