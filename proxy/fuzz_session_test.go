package proxy_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/rules/fake"
)

// FuzzSession drives whole sessions through the proxy: the fuzzer writes
// both byte streams, the client's and the server's, and the proxy relays
// them over real loopback sockets with the fake backend behind it. After
// each session it checks the invariants the issue names:
//
//   - no mapping before login: a server that never sent a line starting
//     with 230 gets none installed;
//   - none to an address other than the server's own or the client's own:
//     every mapping goes from the client to the server (passive) or from
//     the server to the client (active);
//   - none outliving its session: once both sides have closed, every
//     mapping is removed.
//
// The client writes its whole stream at once; the server answers one line
// per line it receives, like a server; the client closes once the proxy
// has been quiet for 15 ms.
func FuzzSession(f *testing.F) {
	for _, seed := range [][2]string{
		{"USER a\r\nPASS b\r\nPASV\r\nRETR f\r\n", "220 hi\r\n331 pw\r\n230 in\r\n227 Entering Passive Mode (127,0,0,2,82,8).\r\n150 go\r\n226 done\r\n"},
		{"USER a\r\nPASS b\r\nEPSV\r\nLIST\r\n", "220 hi\r\n331 pw\r\n230 in\r\n229 Entering Extended Passive Mode (|||21001|)\r\n150 go\r\n226 done\r\n"},
		{"USER a\r\nPASS b\r\nPORT 127,0,0,1,82,9\r\nRETR f\r\n", "220 hi\r\n331 pw\r\n230 in\r\n200 ok\r\n150 go\r\n226 done\r\n"},
		{"PORT 127,0,0,1,82,9\r\nPASV\r\n", "220 hi\r\n200 ok\r\n227 Entering Passive Mode (127,0,0,2,82,8).\r\n"},
		{"PORT\t127,0,0,9,0,22\r\nEPRT\t|1|127.0.0.9|22|\r\n", "220 hi\r\n230 in\r\n200 ok\r\n200 ok\r\n"},
		{"PASV\r\n", "220 hi\r\n230-in\r\n227 Entering Passive Mode (10,0,0,9,82,8).\r\n230 in\r\n"},
		{"USER a\r\nPASV\r\nPASV\r\n", "220 hi\r\n230 in\r\n227 (127,0,0,2,82,8)\r\n227 (127,0,0,3,82,8)\r\n"},
	} {
		f.Add([]byte(seed[0]), []byte(seed[1]))
	}
	f.Fuzz(fuzzOne)
}

func fuzzOne(t *testing.T, fromClient, fromServer []byte) {
	client := netip.MustParseAddr(clientDial)
	server := netip.MustParseAddr(serverAddr)
	{
		if len(fromClient) > 1<<16 || len(fromServer) > 1<<16 {
			return
		}
		up, err := net.Listen("tcp", serverAddr+":0")
		if err != nil {
			t.Skip(err)
		}
		defer up.Close()
		// The server answers like one: its first line at once (the
		// greeting), then its next line for each line the proxy sends
		// it, and the rest when the proxy closes.
		replies := bytes.SplitAfter(fromServer, []byte("\n"))
		upDone := make(chan struct{})
		go func() {
			defer close(upDone)
			c, err := up.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			next := func() {
				if len(replies) > 0 {
					c.Write(replies[0])
					replies = replies[1:]
				}
			}
			next()
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				for _, b := range buf[:n] {
					if b == '\n' {
						next()
					}
				}
				if err != nil {
					return
				}
			}
		}()

		backend := &fake.Backend{}
		if err := backend.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		table, err := nat.New(backend, nat.Config{Ports: nat.PortRange{Low: 20000, High: 20999}, ConnectTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		p := &proxy.Server{Settings: proxy.Settings{
			Upstream: up.Addr().String(), PublicAddr: publicAddr, SNAT: true,
			IdleTimeout: 5 * time.Second, WriteTimeout: 300 * time.Millisecond,
		}, NAT: table}
		ln, err := net.Listen("tcp", clientDial+":0")
		if err != nil {
			t.Skip(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- p.Serve(ctx, ln) }()

		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(fromClient)
		// Read until the proxy has been quiet for a moment: by then it has
		// relayed what it will of both streams.
		buf := make([]byte, 4096)
		for {
			_ = c.SetReadDeadline(time.Now().Add(15 * time.Millisecond))
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		closed := time.Now()
		<-upDone
		if d := time.Since(closed); d > 2*time.Second {
			t.Errorf("the server's connection outlived the client's by %v", d)
		}

		// Every mapping ever installed, checked against who the session's
		// peers are.
		loggedIn := bytes.HasPrefix(fromServer, []byte("230")) || bytes.Contains(fromServer, []byte("\n230"))
		for _, op := range backend.Ops() {
			if op.Kind != "install" || op.Err != nil {
				continue
			}
			m := op.Mapping
			if !loggedIn {
				t.Errorf("mapping %v installed, but the server never accepted a login", m)
			}
			src, dst := m.Source, m.Target.Addr()
			if !(src == client && dst == server) && !(src == server && dst == client) {
				t.Errorf("mapping %v: not client->server nor server->client (client %v, server %v)", m, client, server)
			}
		}
		// The session has ended on both sides: its mappings go.
		deadline := time.Now().Add(5 * time.Second)
		for backend.Len() != 0 && time.Now().Before(deadline) {
			select {
			case <-backend.Changed():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if n := backend.Len(); n != 0 {
			t.Errorf("%d mappings outlive their session", n)
		}
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := table.Close(context.Background()); err != nil {
			t.Errorf("closing the table: %v", err)
		}
	}
}
