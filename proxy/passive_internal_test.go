package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// tcpPair returns the two ends of a loopback TCP connection, the dialing
// end from 127.0.0.1 to a listener on addr.
func tcpPair(t *testing.T, addr string) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close(); accepted.Close() })
	return dialed, accepted
}

// TestTransparentPASVCanonical: in transparent mode a 227 that names the
// server's own address reaches the client as pasvgate formats it, one
// line, one address, whatever shape the server gave it (issue 12, low
// items): a client must never read an odd 227 differently from pasvgate,
// which checked the address it found. Before the fix such a 227 was
// forwarded as the server wrote it. Transparent mode takes a connection's
// original destination, which loopback cannot give, so the session is
// built here by hand around the replies relay.
func TestTransparentPASVCanonical(t *testing.T) {
	for _, tc := range []struct{ name, reply string }{
		{"a second address after the first", "227 Entering Passive Mode (127,0,0,2,117,48) (10,0,0,1,4,1).\r\n"},
		{"multi-line", "227-Entering Passive Mode\r\n227 127,0,0,2,117,48\r\n"},
		{"RFC 1123 form", "227 =127,0,0,2,117,48\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server is at 127.0.0.2, which the 227 names.
			toServer, server := tcpPair(t, "127.0.0.2")
			client, fromClient := tcpPair(t, "127.0.0.1")
			s := &session{
				srv:       &Server{}, // no Upstream: transparent
				id:        "t1",
				log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
				client:    fromClient,
				rawClient: fromClient,
				server:    toServer,
				rawServer: toServer,
				start:     time.Now(),
				over:      make(chan struct{}),
				queue:     []pending{{verb: ftp.VerbPASV}},
			}
			done := make(chan struct{})
			go func() { defer close(done); s.replies(context.Background()) }()
			if _, err := io.WriteString(server, tc.reply); err != nil {
				t.Fatal(err)
			}
			_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := bufio.NewReader(client).ReadString('\n')
			server.Close()
			<-done
			if err != nil {
				t.Fatalf("reading the 227: %v", err)
			}
			if want := "227 Entering Passive Mode (127,0,0,2,117,48).\r\n"; got != want {
				t.Fatalf("the server sent %q; the client got %q, want %q", tc.reply, got, want)
			}
		})
	}
}
