package hostile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// selectorPrefix starts the line a test sends before any greeting to
// pick the hostile server's script for its session: pasvgate forwards a
// client's commands before the server greets, so the script is chosen
// before the server has said anything.
const selectorPrefix = "USER hst-"

// peekWait is how long the hostile server waits for a selector before it
// splices the connection to the real server.
const peekWait = 150 * time.Millisecond

// maxRecorded bounds what the splice records of what the real server got.
const maxRecorded = 1 << 20

// script is what the hostile server does with a session whose selector
// named it.
type script func(s *sconn)

// hostileServer listens where pasvgate's upstream is (192.0.2.10:21). A
// session that starts with a selector line runs that script; any other is
// spliced to test/ftpd (realFTPD), and what the real server receives is
// recorded, so an entry can check that a smuggled command never reached
// it.
type hostileServer struct {
	t       *testing.T
	ns      *netns.NS
	ln      net.Listener
	scripts map[string]script

	mu       sync.Mutex
	conns    map[net.Conn]bool
	received []byte            // what spliced sessions sent the real server
	notes    map[string]string // what scripts observed, by key
	wg       sync.WaitGroup
}

func newHostileServer(t *testing.T, ns *netns.NS) *hostileServer {
	t.Helper()
	ln, err := ns.Listen("tcp", serverAddr+":21")
	if err != nil {
		t.Fatal(err)
	}
	hs := &hostileServer{t: t, ns: ns, ln: ln, scripts: map[string]script{},
		conns: map[net.Conn]bool{}, notes: map[string]string{}}
	t.Cleanup(hs.close)
	hs.wg.Add(1)
	go func() {
		defer hs.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !hs.track(c) {
				return
			}
			hs.wg.Add(1)
			go func() {
				defer hs.wg.Done()
				defer hs.untrack(c)
				hs.handle(c)
			}()
		}
	}()
	return hs
}

// track registers a connection so close can end it; false once closed.
func (hs *hostileServer) track(c net.Conn) bool {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.conns == nil {
		c.Close()
		return false
	}
	hs.conns[c] = true
	return true
}

func (hs *hostileServer) untrack(c net.Conn) {
	c.Close()
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.conns, c)
}

func (hs *hostileServer) close() {
	hs.ln.Close()
	hs.mu.Lock()
	for c := range hs.conns {
		c.Close()
	}
	hs.conns = nil
	hs.mu.Unlock()
	hs.wg.Wait()
}

// handle reads what arrives within peekWait (at most one line): a
// selector runs its script, anything else is spliced to the real server.
func (hs *hostileServer) handle(c net.Conn) {
	r := bufio.NewReaderSize(c, 4096)
	_ = c.SetReadDeadline(time.Now().Add(peekWait))
	var peek []byte
	for len(peek) < 512 {
		b, err := r.ReadByte()
		if err != nil {
			break
		}
		peek = append(peek, b)
		if b == '\n' {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	if name, ok := strings.CutPrefix(strings.TrimRight(string(peek), "\r\n"), selectorPrefix); ok && bytes.HasSuffix(peek, []byte("\n")) {
		hs.mu.Lock()
		sc := hs.scripts[name]
		hs.mu.Unlock()
		if sc == nil {
			fmt.Fprintf(c, "421 no script %q\r\n", name)
			return
		}
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		sc(&sconn{c: c, r: r, hs: hs})
		return
	}
	hs.splice(c, io.MultiReader(bytes.NewReader(peek), r))
}

// splice relays the session to the real server, recording what it sends.
func (hs *hostileServer) splice(c net.Conn, fromClient io.Reader) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := hs.ns.Dial(ctx, "tcp", "", realFTPD)
	cancel()
	if err != nil {
		return // the real server is down: pasvgate sees its upstream close
	}
	if !hs.track(up) {
		return
	}
	defer hs.untrack(up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(c, up)
		c.Close()
	}()
	_, _ = io.Copy(up, io.TeeReader(fromClient, recorder{hs}))
	up.Close()
	<-done
}

// recorder appends what the real server receives to hs.received, bounded.
type recorder struct{ hs *hostileServer }

func (w recorder) Write(b []byte) (int, error) {
	w.hs.mu.Lock()
	defer w.hs.mu.Unlock()
	if room := maxRecorded - len(w.hs.received); room > 0 {
		w.hs.received = append(w.hs.received, b[:min(room, len(b))]...)
	}
	return len(b), nil
}

// reset forgets what was recorded and noted, before an entry.
func (hs *hostileServer) reset() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.received = nil
	hs.notes = map[string]string{}
}

// serverGot reports whether the real server received s since the reset.
func (hs *hostileServer) serverGot(s string) bool {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return bytes.Contains(hs.received, []byte(s))
}

func (hs *hostileServer) note(k, v string) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.notes[k] = v
}

func (hs *hostileServer) noted(k string) string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.notes[k]
}

// add registers a script under name.
func (hs *hostileServer) add(name string, sc script) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.scripts[name] = sc
}

// sconn is one session of a script.
type sconn struct {
	c  net.Conn
	r  *bufio.Reader
	hs *hostileServer
}

// send writes s as it is (the script writes its own line ends).
func (s *sconn) send(str string) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(s.c, str)
	return err
}

// line reads one command line (bounded), without its line end.
func (s *sconn) line() (string, error) {
	var b []byte
	for len(b) < 8192 {
		c, err := s.r.ReadByte()
		if err != nil {
			return "", err
		}
		if c == '\n' {
			return strings.TrimRight(string(b), "\r"), nil
		}
		b = append(b, c)
	}
	return "", errors.New("command line too long")
}

// login answers the selector (a USER) and the PASS that follows.
func (s *sconn) login() bool {
	if s.send("220 hostile server ready\r\n331 Password please.\r\n") != nil {
		return false
	}
	l, err := s.line()
	if err != nil || !strings.HasPrefix(strings.ToUpper(l), "PASS") {
		return false
	}
	return s.send("230 Logged in.\r\n") == nil
}

// until reads commands, answering the ordinary ones, until one with verb
// arrives; false if the session ended first.
func (s *sconn) until(verb string) bool {
	for i := 0; i < 1000; i++ {
		l, err := s.line()
		if err != nil {
			return false
		}
		v, _, _ := strings.Cut(l, " ")
		if strings.EqualFold(v, verb) {
			return true
		}
		if !s.answer(v) {
			return false
		}
	}
	return false
}

// answer gives an ordinary command its ordinary reply; false for QUIT.
func (s *sconn) answer(verb string) bool {
	switch strings.ToUpper(verb) {
	case "QUIT":
		_ = s.send("221 Bye.\r\n")
		return false
	case "NOOP", "TYPE":
		return s.send("200 OK.\r\n") == nil
	default:
		return s.send("502 Not implemented.\r\n") == nil
	}
}

// serve answers ordinary commands until the session ends.
func (s *sconn) serve() { s.until("\x00never") }

// passiveListener opens a data listener on the server's address; the
// caller closes it. Its accepted connections are counted under key and
// get "hello\n".
func (s *sconn) passiveListener(key string) (net.Listener, int, error) {
	ln, err := s.hs.ns.Listen("tcp", serverAddr+":0")
	if err != nil {
		return nil, 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		n := 0
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n++
			s.hs.note(key, fmt.Sprint(n))
			_, _ = io.WriteString(c, "hello\n")
			// Kept open, as a transfer in progress would be, until the
			// listener's owner closes the session.
			go func() {
				_, _ = io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	return ln, port, nil
}

// pasv227 is a 227 naming the server's address and port.
func pasv227(port int) string {
	return fmt.Sprintf("227 Entering Passive Mode (192,0,2,10,%d,%d).\r\n", port>>8, port&0xff)
}
