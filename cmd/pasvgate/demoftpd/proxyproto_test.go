package demoftpd

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/spf13/afero"
)

// logBuffer collects a server's log lines for the checks; the server
// writes from its own goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits (up to 3 s) until the log holds substr: the server logs
// from its handler goroutine, after the client has its greeting.
func (l *logBuffer) waitLog(t *testing.T, substr string) {
	t.Helper()
	for range 300 {
		if strings.Contains(l.String(), substr) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("log lacks %q:\n%s", substr, l.String())
}

// startProxied starts a server with ProxyProtocol and a log the test reads.
func startProxied(t *testing.T, cfg Config) (*Server, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.ProxyProtocol = true
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return startServer(t, cfg), logs
}

// dialWith opens a control connection from local (an address of this
// host, "" for the kernel's choice), sends header (nothing if nil) and
// returns the connection with a 5 s deadline.
func dialWith(t *testing.T, s *Server, local string, header []byte) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	nc, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("dial control: %v", err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if header != nil {
		if _, err := nc.Write(header); err != nil {
			t.Fatalf("writing header: %v", err)
		}
	}
	return nc
}

// proxyHeader is a PROXY header of version v (1 or 2) from src to dst.
func proxyHeader(t *testing.T, v byte, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(v,
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// localHeaders are the headers that carry no client: what a proxy's
// health check sends.
var localHeaders = map[string][]byte{
	"v1 UNKNOWN": []byte("PROXY UNKNOWN\r\n"),
	"v2 LOCAL":   mustFormat(&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}),
}

func mustFormat(h *proxyproto.Header) []byte {
	b, err := h.Format()
	if err != nil {
		panic(err)
	}
	return b
}

func TestProxyProtocolClientAddress(t *testing.T) {
	for _, v := range []byte{1, 2} {
		t.Run("v"+strconv.Itoa(int(v)), func(t *testing.T) {
			s, logs := startProxied(t, Config{})
			nc := dialWith(t, s, "", proxyHeader(t, v, "203.0.113.10:54321", "203.0.113.1:21"))
			c := textproto.NewConn(nc)
			expect(t, c, 220)
			cmd(t, c, 331, "USER anonymous")
			cmd(t, c, 230, "PASS x@example.com")
			logs.waitLog(t, `msg="client connected" client=203.0.113.10:54321`)
			logs.waitLog(t, "version="+strconv.Itoa(int(v))+" command=PROXY source=203.0.113.10:54321")
		})
	}
}

func TestProxyProtocolLocal(t *testing.T) {
	for name, h := range localHeaders {
		t.Run(name, func(t *testing.T) {
			s, logs := startProxied(t, Config{})
			nc := dialWith(t, s, "", h)
			c := textproto.NewConn(nc)
			expect(t, c, 220)
			cmd(t, c, 221, "QUIT")
			// The connection's own address stands for the client.
			logs.waitLog(t, `msg="client connected" client=`+nc.LocalAddr().String())
			logs.waitLog(t, "command=LOCAL")
		})
	}
}

func TestProxyProtocolRefusesWithoutHeader(t *testing.T) {
	for name, first := range map[string]string{
		// A client that talks FTP first: no FTP client does (they wait
		// for 220), but it must not get a session either.
		"FTP command":    "USER anonymous\r\n",
		"bad v1 header":  "PROXY TCP4 203.0.113.10 nonsense\r\n",
		"v1 wrong count": "PROXY TCP4 203.0.113.10 203.0.113.1 54321\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			s, logs := startProxied(t, Config{})
			nc := dialWith(t, s, "", []byte(first))
			got, err := io.ReadAll(nc)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after 5 s (read %q)", got)
			}
			if len(got) != 0 {
				t.Fatalf("server answered a connection without a valid header: %q", got)
			}
			logs.waitLog(t, "no valid PROXY header")
			if strings.Contains(logs.String(), `msg="client connected"`) {
				t.Fatalf("a session started:\n%s", logs.String())
			}
		})
	}
}

// TestProxyProtocolSilentPeerBlocksNoOne: ftpserverlib asks for a new
// connection's address on its accept loop, so a listener that read the
// header there would hold every other client for the header timeout.
func TestProxyProtocolSilentPeerBlocksNoOne(t *testing.T) {
	s, _ := startProxied(t, Config{})
	dialWith(t, s, "", nil) // connects and says nothing
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	nc := dialWith(t, s, "", proxyHeader(t, 2, "203.0.113.10:54321", "203.0.113.1:21"))
	expect(t, textproto.NewConn(nc), 220)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("greeting took %v behind a silent peer", d)
	}
}

// TestProxyProtocolPASV: the 227 names the socket's own address (the
// header's destination is the proxy's), and PasvSameIP compares a passive
// data connection with the header's source. 127.0.0.2 stands for the
// client, 127.0.0.1 for a proxy that SNATs data connections to itself.
func TestProxyProtocolPASV(t *testing.T) {
	s, _ := startProxied(t, Config{PasvSameIP: true})
	if err := afero.WriteFile(s.FS(), "/f.txt", []byte("proxied"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dataFrom string
		ok       bool
	}{
		{"127.0.0.2", true},  // the header's source: as with pasvgate --snat=false
		{"127.0.0.1", false}, // the proxy's own: as with pasvgate --snat (default)
	} {
		t.Run("data from "+tc.dataFrom, func(t *testing.T) {
			nc := dialWith(t, s, "127.0.0.1", proxyHeader(t, 2, "127.0.0.2:54321", "203.0.113.1:21"))
			c := textproto.NewConn(nc)
			expect(t, c, 220)
			cmd(t, c, 331, "USER anonymous")
			cmd(t, c, 230, "PASS x@example.com")
			msg := cmd(t, c, 227, "PASV")
			m := pasvRE.FindStringSubmatch(msg)
			if m == nil || strings.Join(m[1:5], ".") != "127.0.0.1" {
				t.Fatalf("227 %q: want the socket's own address 127.0.0.1", msg)
			}
			p1, _ := strconv.Atoi(m[5])
			p2, _ := strconv.Atoi(m[6])
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.dataFrom)}}
			dc, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p1*256+p2)))
			if err != nil {
				t.Fatalf("dial data: %v", err)
			}
			defer dc.Close()
			_ = dc.SetDeadline(time.Now().Add(5 * time.Second))
			if err := c.PrintfLine("RETR f.txt"); err != nil {
				t.Fatal(err)
			}
			code, rmsg, err := c.ReadResponse(0)
			if err != nil {
				t.Fatalf("RETR: %v", err)
			}
			if !tc.ok {
				if code/100 != 4 {
					t.Fatalf("RETR with data from %s: %d %s, want 4xx (not the header's source)", tc.dataFrom, code, rmsg)
				}
				return
			}
			if code != 150 {
				t.Fatalf("RETR: %d %s, want 150", code, rmsg)
			}
			got, err := io.ReadAll(dc)
			if err != nil || string(got) != "proxied" {
				t.Fatalf("data: %q, %v", got, err)
			}
			expect(t, c, 226)
		})
	}
}

// TestPasvSameIPWithoutProxy: without PROXY the check compares with the
// control connection's peer, so PasvSameIP alone refuses data from
// another address: the vsftpd-like default the lab tests use it for.
func TestPasvSameIPWithoutProxy(t *testing.T) {
	s := startServer(t, Config{PasvSameIP: true})
	if err := afero.WriteFile(s.FS(), "/f.txt", []byte("direct"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := rawLogin(t, s) // from 127.0.0.1
	m := pasvRE.FindStringSubmatch(cmd(t, c, 227, "PASV"))
	p1, _ := strconv.Atoi(m[5])
	p2, _ := strconv.Atoi(m[6])
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	dc, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p1*256+p2)))
	if err != nil {
		t.Fatalf("dial data: %v", err)
	}
	defer dc.Close()
	if err := c.PrintfLine("RETR f.txt"); err != nil {
		t.Fatal(err)
	}
	if code, msg, err := c.ReadResponse(0); err != nil || code/100 != 4 {
		t.Fatalf("RETR with data from 127.0.0.2: %d %s %v, want 4xx", code, msg, err)
	}
}

// TestProxyProtocolClose: Close returns promptly with a peer still owing
// its header, and drops it.
func TestProxyProtocolClose(t *testing.T) {
	s, err := Start(t.Context(), Config{PassivePorts: testPorts, ProxyProtocol: true})
	if err != nil {
		t.Fatal(err)
	}
	nc := dialWith(t, s, "", nil)
	time.Sleep(50 * time.Millisecond) // let the listener take it
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return with a header pending")
	}
	if b, err := io.ReadAll(nc); len(b) != 0 || err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("peer after Close: read %q, %v; want the connection closed", b, err)
	}
}
