package proxy_test

import (
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestVerbSmuggling sends PORT and EPRT to another host with the verb
// ended by whitespace other than a space. ProFTPD reads any whitespace as
// the end of a verb (issue 12, item 1), so each is a real bounce attempt:
// pasvgate must refuse it like the space-separated form, with its own
// reply, and the server must never see it.
func TestVerbSmuggling(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	attempts := []struct{ cmd, want string }{
		{"PORT\t127,0,0,9,200,10", "500 Illegal PORT command: address is not yours."},
		{"port\t127,0,0,9,200,10", "500 Illegal PORT command: address is not yours."},
		{"PORT\v127,0,0,9,200,10", "500 Illegal PORT command: address is not yours."},
		{"PORT\f127,0,0,9,200,10", "500 Illegal PORT command: address is not yours."},
		{"PORT\t127,0,0,1,0,22", "500 Illegal PORT command: privileged port."},
		{"EPRT\t|1|127.0.0.9|50000|", "500 Illegal EPRT command: address is not yours."},
		{"eprt\t|1|127.0.0.9|50000|", "500 Illegal EPRT command: address is not yours."},
		{"LPSV\t", "502 Long address commands are not supported: use EPRT/EPSV."},
		{"AUTH\tTLS", "534 AUTH is not supported through this gateway: FTPS is not available."},
	}
	for _, a := range attempts {
		if got := c.cmd(a.cmd); got != a.want {
			t.Errorf("%q: reply %q, want %q", a.cmd, got, a.want)
		}
	}
	if got := c.cmd("NOOP"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP after the attempts: %q", got)
	}
	sent := h.tap.sent()
	for _, w := range []string{"127,0,0,9", "127.0.0.9", "0,22", "LPSV", "AUTH"} {
		if strings.Contains(sent, w) {
			t.Errorf("%q reached the server: %q", w, sent)
		}
	}
	if n := h.backend.Count("install"); n != 0 {
		t.Errorf("the attempts installed %d mappings", n)
	}
}

// TestCanonicalCommands checks that the commands pasvgate acts on reach
// the server as "VERB argument", however the client separated and cased
// them, so that a server that ends verbs only at a space (vsftpd,
// pure-ftpd) reads them as pasvgate did; and that a transfer so sent works.
func TestCanonicalCommands(t *testing.T) {
	h := newHarness(t, options{})
	data := plant(t, h.server.FS(), "file.bin", 1000)
	c := h.dial(t)
	c.login()

	ap := parse227(t, c.cmd("pasv\t"))
	dc, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if got := c.cmd("Retr\tfile.bin"); !strings.HasPrefix(got, "150") && !strings.HasPrefix(got, "125") {
		t.Fatalf("RETR: %q", got)
	}
	_ = dc.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(dc)
	if err != nil || string(got) != string(data) {
		t.Fatalf("downloaded %d bytes (%v), want the file's %d", len(got), err, len(data))
	}
	if r := c.reply(); !strings.HasPrefix(r, "226") {
		t.Fatalf("after RETR: %q", r)
	}
	if got := c.cmd("PORT\t127,0,0,1,195,80"); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT to the client's own port: %q", got)
	}
	c.cmd("EPSV\tALL") // the server's answer does not matter
	if got := c.cmd("PASV"); !strings.HasPrefix(got, "503 ") {
		t.Errorf("PASV after EPSV<TAB>ALL: %q, want 503", got)
	}
	c.cmd("REIN\t")

	sent := h.tap.sent()
	for _, want := range []string{"\r\nPASV\r\n", "\r\nRETR file.bin\r\n", "\r\nEPSV ALL\r\n", "\r\nREIN\r\n"} {
		if !strings.Contains(sent, want) {
			t.Errorf("the server did not get %q: %q", want, sent)
		}
	}
	if !regexp.MustCompile(`\r\nPORT 127,0,0,1,(7[89]|8[0-2]),\d+\r\n`).MatchString(sent) {
		t.Errorf("the PORT reached the server as %q, want pasvgate's canonical rewrite", sent)
	}
	if strings.Contains(sent, "\t") {
		t.Errorf("a TAB reached the server: %q", sent)
	}
}

// TestLinesServersDropRefused checks that the lines some server drops
// without any reply get pasvgate's own 500 and are not forwarded: with no
// verb (empty, or starting with whitespace: ProFTPD), or a verb of other
// bytes than letters and digits (pure-ftpd 1.0.50). Forwarded, each would
// leave pasvgate waiting for a reply that never comes, and every later
// reply matched to the wrong command. A verb ended by a TAB reaches the
// server with a space instead, for the same reason.
func TestLinesServersDropRefused(t *testing.T) {
	h := newHarness(t, options{})
	c := h.dial(t)
	c.login()
	for _, tc := range []struct{ line, want string }{
		{"", "500 Command has no verb."},
		{" NOOP", "500 Command has no verb."},
		{"\tPORT 127,0,0,9,200,10", "500 Command has no verb."},
		{" ", "500 Command has no verb."},
		{"FOO_BAR", "500 Command not understood."},
		{"PORT,127,0,0,9,200,10", "500 Command not understood."},
		{"P@SW", "500 Command not understood."},
	} {
		if got := c.cmd(tc.line); got != tc.want {
			t.Errorf("%q: reply %q, want %q", tc.line, got, tc.want)
		}
	}
	if got := c.cmd("NOOP\t"); !strings.HasPrefix(got, "200") {
		t.Fatalf("NOOP<TAB>: %q", got)
	}
	sent := h.tap.sent()
	for _, w := range []string{" NOOP", "127,0,0,9", "\r\n\r\n", "\r\n \r\n", "FOO", "P@SW", "\t"} {
		if strings.Contains(sent, w) {
			t.Errorf("%q reached the server: %q", w, sent)
		}
	}
	if !strings.HasSuffix(sent, "\r\nNOOP\r\n") {
		t.Errorf("NOOP<TAB> reached the server as %q, want NOOP", sent)
	}
}
