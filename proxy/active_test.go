package proxy_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// activeServer is a scripted FTP server for active mode. Unlike the
// built-in server it dials data connections from its own address, as a
// server on its own host does, so that a mapping admitting only the server
// can be checked for real.
type activeServer struct {
	ln      net.Listener
	payload []byte
	mu      sync.Mutex
	ports   []netip.AddrPort // data addresses the server was told
	stored  []byte
	wg      sync.WaitGroup
}

func newActiveServer(t *testing.T, payload []byte) *activeServer {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	s := &activeServer{ln: ln, payload: payload}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *activeServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := ftp.NewReader(c, 0)
	say := func(line string) { fmt.Fprintf(c, "%s\r\n", line) }
	say("220 scripted")
	var data netip.AddrPort
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(serverAddr)}}
		return d.Dial("tcp", data.String())
	}
	for {
		_, text, err := r.ReadLine()
		if err != nil {
			return
		}
		verb, arg := ftp.ParseCommand(text)
		switch verb {
		case ftp.VerbUSER:
			say("331 password")
		case ftp.VerbPASS:
			say("230 in")
		case ftp.VerbPORT, ftp.VerbEPRT:
			parse := ftp.ParsePORT
			if verb == ftp.VerbEPRT {
				parse = ftp.ParseEPRT
			}
			if data, err = parse(arg); err != nil {
				say("501 bad")
				continue
			}
			s.mu.Lock()
			s.ports = append(s.ports, data)
			s.mu.Unlock()
			say("200 ok")
		case ftp.VerbRETR:
			say("150 opening")
			dc, err := dial()
			if err != nil {
				say("425 no data connection")
				continue
			}
			_, _ = dc.Write(s.payload)
			dc.Close()
			say("226 done")
		case ftp.VerbSTOR:
			say("150 opening")
			dc, err := dial()
			if err != nil {
				say("425 no data connection")
				continue
			}
			b, _ := io.ReadAll(dc)
			dc.Close()
			s.mu.Lock()
			s.stored = b
			s.mu.Unlock()
			say("226 done")
		case ftp.VerbQUIT:
			say("221 bye")
			return
		default:
			say("200 ok")
		}
	}
}

// TestActiveMode runs PORT and EPRT transfers end to end: the server is
// told pasvgate's address and a public port, the mapping admits only the
// server, and the client receives the data connection from the gateway's
// public address.
func TestActiveMode(t *testing.T) {
	for _, verb := range []string{"PORT", "EPRT"} {
		t.Run(verb, func(t *testing.T) {
			payload := make([]byte, 256<<10)
			_, _ = rand.Read(payload)
			as := newActiveServer(t, payload)
			h := newHarness(t, options{upstream: as.ln.Addr().String()})
			c := h.dial(t)
			c.login()

			dl, err := net.Listen("tcp", clientDial+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer dl.Close()
			mine := netip.MustParseAddrPort(dl.Addr().String())
			cmd := string(ftp.AppendPORT(nil, mine))
			if verb == "EPRT" {
				cmd = string(ftp.AppendEPRT(nil, mine))
			}
			accept := func() ([]byte, netip.Addr) {
				_ = dl.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
				dc, err := dl.Accept()
				if err != nil {
					t.Fatalf("no data connection: %v", err)
				}
				defer dc.Close()
				b, _ := io.ReadAll(dc)
				return b, netip.MustParseAddrPort(dc.RemoteAddr().String()).Addr()
			}

			// Download.
			if got := c.cmd(strings.TrimSpace(cmd)); !strings.HasPrefix(got, "200") {
				t.Fatalf("%s: %q", verb, got)
			}
			ms, _ := h.backend.List(t.Context())
			if len(ms) != 1 {
				t.Fatalf("mappings %v, want one", ms)
			}
			m := ms[0]
			if m.Source != netip.MustParseAddr(serverAddr) || m.Target != mine || m.SNAT != publicAddr {
				t.Fatalf("mapping %v: want only the server %s admitted, to %v, from %v", m, serverAddr, mine, publicAddr)
			}
			as.mu.Lock()
			told := as.ports[0]
			as.mu.Unlock()
			if told != m.Public || told.Addr() != netip.MustParseAddr("127.0.0.1") || !inRange(told.Port()) {
				t.Fatalf("server was told %v, want pasvgate's address and the mapping's port %v", told, m.Public)
			}
			c.send("RETR file")
			got, from := accept()
			if r := c.reply(); !strings.HasPrefix(r, "150") {
				t.Fatalf("RETR: %q", r)
			}
			if r := c.reply(); !strings.HasPrefix(r, "226") {
				t.Fatalf("RETR end: %q", r)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("downloaded %d bytes, want the server's %d", len(got), len(payload))
			}
			if from != publicAddr {
				t.Fatalf("data connection came from %v, want the gateway's public address %v", from, publicAddr)
			}
			h.waitInstalled(t, 0)

			// Upload over a fresh PORT.
			if got := c.cmd(strings.TrimSpace(cmd)); !strings.HasPrefix(got, "200") {
				t.Fatalf("%s: %q", verb, got)
			}
			c.send("STOR up")
			if r := c.reply(); !strings.HasPrefix(r, "150") {
				t.Fatalf("STOR: %q", r)
			}
			_ = dl.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
			dc, err := dl.Accept()
			if err != nil {
				t.Fatal(err)
			}
			_, _ = dc.Write(payload)
			dc.Close()
			if r := c.reply(); !strings.HasPrefix(r, "226") {
				t.Fatalf("STOR end: %q", r)
			}
			as.mu.Lock()
			stored := as.stored
			as.mu.Unlock()
			if !bytes.Equal(stored, payload) {
				t.Fatalf("server stored %d bytes, want %d", len(stored), len(payload))
			}
			h.waitInstalled(t, 0)
			if i, r := h.backend.Count("install"), h.backend.Count("remove"); i != 2 || r != 2 {
				t.Fatalf("%d installs, %d removals for two transfers", i, r)
			}
			// The client's own address never reached the server.
			if strings.Contains(h.tap.sent(), fmt.Sprint(mine.Port())) {
				t.Fatalf("the client's data port reached the server: %q", h.tap.sent())
			}
		})
	}
}
