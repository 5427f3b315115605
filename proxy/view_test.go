package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/spf13/afero"
)

// viewNow is c's session in the view now, if it is there.
func viewNow(p *proxy.Server, c net.Conn) (proxy.SessionInfo, bool) {
	for _, si := range p.Sessions() {
		if si.Client == c.LocalAddr().String() {
			return si, true
		}
	}
	return proxy.SessionInfo{}, false
}

// waitView polls the view of c's session until ok accepts it, and
// returns it: the session may not be admitted yet, and the view of a
// reply the client has read can lag by the few instructions that follow
// the write in pasvgate.
func waitView(t *testing.T, p *proxy.Server, c net.Conn, what string, ok func(proxy.SessionInfo) bool) proxy.SessionInfo {
	t.Helper()
	var si proxy.SessionInfo
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var there bool
		if si, there = viewNow(p, c); there && ok(si) {
			return si
		}
	}
	t.Fatalf("session never showed %s: %+v", what, si)
	return si
}

// TestSessionsView opens sessions in known states with the built-in
// server (not logged in; logged in and idle; holding a PASV data port;
// in an upload whose data connection the test holds open) and checks
// every field of each one's line in the view against what the test
// holds; then that the byte counters grow, and that the view is sorted
// oldest first and round-trips through JSON.
func TestSessionsView(t *testing.T) {
	h := newHarness(t, options{})
	server := h.tap.ln.Addr().String()
	t0 := time.Now()

	login := h.dial(t)
	if r := login.cmd("USER anonymous"); !strings.HasPrefix(r, "331") {
		t.Fatalf("USER: %q", r)
	}
	idle := h.dial(t)
	idle.login()
	pasv := h.dial(t)
	pasv.login()
	ap := parse227(t, pasv.expectAfter("PASV", "227"))
	xfer := h.dial(t)
	xfer.login()
	xap := parse227(t, xfer.expectAfter("PASV", "227"))
	data, err := net.DialTimeout("tcp", xap.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	stor := time.Now()
	xfer.expectAfter("STOR up.bin", "150")
	upload := []byte(strings.Repeat("x", 5000))
	if _, err := data.Write(upload); err != nil {
		t.Fatal(err)
	}

	all := h.proxy.Sessions()
	if len(all) != 4 {
		t.Fatalf("%d sessions in the view, want 4: %+v", len(all), all)
	}
	for i, c := range []*conn{login, idle, pasv, xfer} {
		if all[i].Client != c.c.LocalAddr().String() {
			t.Fatalf("view[%d] is client %s, want %s: not oldest first", i, all[i].Client, c.c.LocalAddr())
		}
	}
	ids := map[string]bool{}
	for _, si := range all {
		ids[si.ID] = true
		if si.Route != "" || si.Server != server || si.TLS != (proxy.TLSInfo{}) || si.Bytes.Relayed != 0 {
			t.Errorf("%s: route %q, server %q (want %s), tls %+v, relayed %d", si.ID, si.Route, si.Server, server, si.TLS, si.Bytes.Relayed)
		}
		if si.Started.Before(t0) || si.Started.After(time.Now()) || si.AgeSeconds < 0 || si.AgeSeconds > time.Since(t0).Seconds()+1 {
			t.Errorf("%s: started %v, age %v s, want since the test began", si.ID, si.Started, si.AgeSeconds)
		}
	}
	if len(ids) != 4 {
		t.Errorf("session ids not distinct: %v", ids)
	}

	si := all[0] // not logged in
	if si.State != proxy.StateLogin || si.User != "anonymous" || si.Awaiting != "" || si.Transfer != nil || si.Mapping != nil {
		t.Errorf("not logged in: %+v", si)
	}
	si = all[1]
	if si.State != proxy.StateIdle || si.User != "anonymous" || si.Awaiting != "" || si.Transfer != nil || si.Mapping != nil {
		t.Errorf("logged in and idle: %+v", si)
	}
	si = all[2]
	if si.State != proxy.StateIdle || si.Transfer != nil || si.Mapping == nil {
		t.Fatalf("holding a PASV port: %+v", si)
	}
	m := si.Mapping
	if m.Public != ap.String() || m.Source != clientDial || !strings.HasPrefix(m.Target, serverAddr+":") ||
		m.Path != "kernel" || m.Claimed || m.ID == "" || m.AgeSeconds < 0 || m.AgeSeconds > 2 {
		t.Errorf("PASV mapping: %+v, want public %s from %s to the server, kernel, unclaimed", m, ap, clientDial)
	}
	si = all[3]
	if si.State != proxy.StateTransfer || si.Transfer == nil || si.Mapping == nil {
		t.Fatalf("mid-transfer: %+v", si)
	}
	if tr := si.Transfer; tr.Command != "STOR" || tr.Arg != "up.bin" || !tr.Started ||
		tr.Since.Before(stor) || tr.Seconds < 0 || tr.Seconds > time.Since(stor).Seconds()+0.01 {
		t.Errorf("transfer: %+v, want STOR up.bin, started, since %v", tr, stor)
	}
	if si.Awaiting != "STOR" {
		t.Errorf("mid-transfer awaiting %q, want STOR", si.Awaiting)
	}
	if m := si.Mapping; m.Public != xap.String() || !m.Claimed || m.Path != "kernel" {
		t.Errorf("transfer's mapping: %+v, want %s, claimed", m, xap)
	}

	// The counters: the idle session's control bytes are at least what
	// the test sent and read, and grow with one more command.
	before := all[1].Bytes
	sent := len("USER anonymous\r\nPASS test@\r\n")
	if before.FromClient != uint64(sent) || before.FromServer < uint64(len("220 \r\n331 \r\n230 \r\n")) {
		t.Errorf("idle session's bytes %+v, want %d from the client", before, sent)
	}
	idle.expectAfter("NOOP", "200")
	after := waitView(t, h.proxy, idle.c, "the NOOP counted", func(si proxy.SessionInfo) bool {
		return si.Bytes.FromServer > before.FromServer
	}).Bytes
	if after.FromClient != before.FromClient+uint64(len("NOOP\r\n")) {
		t.Errorf("bytes from the client %d after NOOP, want %d", after.FromClient, before.FromClient+6)
	}

	// JSON: the names the endpoint serves.
	b, err := json.Marshal(all[3])
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"id":"s`, `"route":""`, `"client":"127.0.0.1:`, `"state":"transfer"`,
		`"transfer":{"command":"STOR","arg":"up.bin"`, `"started":true`, `"tls":{"client":false`,
		`"mapping":{"id":`, `"path":"kernel"`, `"claimed":true`, `"bytes":{"from_client":`, `"relayed":0`, `"age_seconds":`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON %s lacks %s", b, k)
		}
	}

	// The transfer ends: the session is idle, its port gone.
	data.Close()
	xfer.expect("226")
	waitView(t, h.proxy, xfer.c, "idle without a mapping", func(si proxy.SessionInfo) bool {
		return si.State == proxy.StateIdle && si.Mapping == nil && si.Transfer == nil
	})
	if got, err := afero.ReadFile(h.server.FS(), "/up.bin"); err != nil || string(got) != string(upload) {
		t.Errorf("stored %d bytes (%v), want %d", len(got), err, len(upload))
	}

	// A session gone is gone from the view.
	login.expectAfter("QUIT", "221")
	for deadline := time.Now().Add(5 * time.Second); len(h.proxy.Sessions()) != 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions after a QUIT, want 3", len(h.proxy.Sessions()))
		}
	}
}

// TestSessionsViewProtected: a PROT P upload through pasvgate's relay
// shows TLS on every leg, a relay mapping, and relayed bytes that grow
// while the data connection is still open.
func TestSessionsViewProtected(t *testing.T) {
	p := newPKI(t)
	h := newHarness(t, p.options(nil))
	c := h.dial(t)
	raw := c.c
	c.startTLS(p)
	c.protect("P")
	c.login()
	dc, err := c.protectedData("STOR up.bin", c.tls, "")
	if err != nil {
		t.Fatalf("data handshake: %v", err)
	}
	chunk := []byte(strings.Repeat("protected ", 10000))
	if _, err := dc.Write(chunk); err != nil {
		t.Fatal(err)
	}
	si := waitView(t, h.proxy, raw, "the first chunk relayed", func(si proxy.SessionInfo) bool {
		return si.Bytes.Relayed >= uint64(len(chunk))
	})
	want := proxy.TLSInfo{Client: true, Server: true, ClientData: true, ServerData: true}
	if si.TLS != want || si.State != proxy.StateTransfer || si.Mapping == nil || si.Mapping.Path != "relay" || !si.Mapping.Claimed {
		t.Fatalf("protected upload: %+v (mapping %+v), want TLS everywhere, a claimed relay", si, si.Mapping)
	}
	first := si.Bytes.Relayed
	if _, err := dc.Write(chunk); err != nil {
		t.Fatal(err)
	}
	waitView(t, h.proxy, raw, "the second chunk relayed", func(si proxy.SessionInfo) bool {
		return si.Bytes.Relayed >= first+uint64(len(chunk))
	})
	if err := dc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, dc)
	c.expect("226")
}

// viewServer is a scripted FTP server for the states the built-in one does not
// hold still: mute never sends its greeting; SITE HANG is never
// answered; SITE FLOOD is answered with an endless multi-line reply.
type viewServer struct {
	ln   net.Listener
	mute bool
	wg   sync.WaitGroup
}

func newViewServer(t *testing.T, mute bool) *viewServer {
	ln, err := net.Listen("tcp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	s := &viewServer{ln: ln, mute: mute}
	var mu sync.Mutex
	var conns []net.Conn
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *viewServer) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if s.mute {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	say := func(line string) error { _, err := fmt.Fprintf(c, "%s\r\n", line); return err }
	_ = say("220 scripted")
	r := ftp.NewReader(c, 0)
	for {
		_, text, err := r.ReadLine()
		if err != nil {
			return
		}
		switch line := strings.ToUpper(string(text)); {
		case strings.HasPrefix(line, "USER"):
			_ = say("331 password")
		case strings.HasPrefix(line, "PASS"):
			_ = say("230 in")
		case line == "SITE HANG":
		case line == "SITE FLOOD":
			for say("211-"+strings.Repeat("flood ", 100)) == nil {
			}
			return
		default:
			_ = say("200 ok")
		}
	}
}

// TestSessionsViewStates: a server that has not greeted shows as
// connecting; a command the server has not answered as command, naming
// it; and a session whose client does not read the replies it is sent
// (so that pasvgate's write to it blocks, holding the session's lock) as
// busy, without holding up the view of the others.
func TestSessionsViewStates(t *testing.T) {
	mute := newViewServer(t, true)
	hm := newHarness(t, options{upstream: mute.ln.Addr().String()})
	c, err := net.Dial("tcp", hm.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	si := waitView(t, hm.proxy, c, "a server", func(si proxy.SessionInfo) bool { return si.Server != "" })
	if si.State != proxy.StateConnecting || si.Server != mute.ln.Addr().String() || si.Awaiting != "" {
		t.Errorf("before the greeting: %+v, want connecting to %s", si, mute.ln.Addr())
	}

	srv := newViewServer(t, false)
	h := newHarness(t, options{upstream: srv.ln.Addr().String(), settings: func(st *proxy.Settings) {
		st.WriteTimeout = 20 * time.Second
	}})
	hang := h.dial(t)
	hang.login()
	hang.send("SITE HANG")
	si = waitView(t, h.proxy, hang.c, "the command", func(si proxy.SessionInfo) bool { return si.State != proxy.StateIdle })
	if si.State != proxy.StateCommand || si.Awaiting != "OTHER" || si.User != "anonymous" {
		t.Errorf("unanswered SITE: %+v, want command, awaiting OTHER", si)
	}

	flood := h.dial(t)
	flood.login()
	flood.send("SITE FLOOD") // and never read again
	// Busy for good once the socket buffers are full: no byte has moved
	// for a while (until then writes go through now and then, as the
	// kernel grows the buffers, and the lock is free between them).
	var last uint64
	si = waitView(t, h.proxy, flood.c, "busy", func(si proxy.SessionInfo) bool {
		moved := si.Bytes.FromServer != last
		last = si.Bytes.FromServer
		if si.State != proxy.StateBusy || moved {
			return false
		}
		time.Sleep(100 * time.Millisecond)
		now, ok := viewNow(h.proxy, flood.c)
		return ok && now.State == proxy.StateBusy && now.Bytes.FromServer == last
	})
	if si.User != "" || si.Server != "" || si.Mapping != nil || si.Bytes.FromServer == 0 || si.ID == "" {
		t.Errorf("busy: %+v, want only the fields that need no lock", si)
	}
	t0 := time.Now()
	all := h.proxy.Sessions()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("the view took %v with a blocked session", d)
	}
	if len(all) != 2 || all[0].State != proxy.StateCommand || all[1].State != proxy.StateBusy {
		t.Errorf("view %+v, want the command session and the busy one", all)
	}
	flood.c.Close()
	hang.c.Close()
}

// TestSessionsViewBounded: a user name longer than the view keeps is cut
// to 256 bytes at a character boundary.
func TestSessionsViewBounded(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	long := strings.Repeat("é", 300) // 600 bytes
	c.cmd("USER " + long)
	si := waitView(t, h.proxy, c.c, "the user", func(si proxy.SessionInfo) bool { return si.User != "" })
	if si.User != strings.Repeat("é", 128) {
		t.Errorf("user %d bytes %q, want the first 128 characters (256 bytes)", len(si.User), si.User[:min(len(si.User), 20)])
	}
}
