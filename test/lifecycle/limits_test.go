package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// Client addresses of this file's lab: one that tries to hold the data
// range, one that only wants its download.
const (
	greedyAddr = "198.51.100.10"
	otherAddr  = "198.51.100.11"
)

// dialFrom is dialSession from a given client address.
func dialFrom(t *testing.T, ns *netns.NS, from string) *session {
	t.Helper()
	c, err := ns.Dial(context.Background(), "tcp", from+":0", "203.0.113.1:21")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return &session{t: t, c: c, r: bufio.NewReader(c)}
}

// TestNoLoginHoldsNoPorts runs the binary with the limits it ships with,
// plus a small --max-mappings-per-ip, on a ten-port data range. A client
// that never logs in sends 500 PORT commands (its own address, an
// unprivileged port: all a bounce check lets through) and some PASV, EPSV
// and EPRT: each gets 530 and the kernel holds no mapping. The same
// address, logged in, gets data ports up to its cap and then 425. Another
// address still downloads, through the kernel's mapping, while the first
// sits at its cap. A reload that raises the cap lets the first have one
// more.
func TestNoLoginHoldsNoPorts(t *testing.T) {
	requireNft(t)
	pasvgate, ftpd := build(t)
	ns := netns.New(t, "lim")
	for _, a := range []string{"203.0.113.1", "192.0.2.10", greedyAddr, otherAddr} {
		ns.MustRun(t, "ip", "addr", "add", a+"/32", "dev", "lo")
	}
	root := t.TempDir()
	payload := make([]byte, 256<<10)
	_, _ = rand.Read(payload)
	if err := os.WriteFile(filepath.Join(root, "f.bin"), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099", "--root", root)
	// The cap comes from the file, so that a reload can change it (a flag
	// would win over the file).
	conf := filepath.Join(t.TempDir(), "pasvgate.yaml")
	writeCap := func(n int) {
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("max-mappings-per-ip: %d\n", n)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCap(3)
	p := start(t, ns, "pasvgate started", pasvgate, "run", "--config", conf, "--listen", "203.0.113.1:21",
		"--upstream", "192.0.2.10:21", "--data-ports", "40000-40009", "--backend", "nftables",
		"--metrics", "127.0.0.1:9121")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pasvgate's output:\n%s", p.output())
		}
	})
	live := func() int {
		return len(pasvgates(mapElems(t, ns, "dnat_map")))
	}

	// 1. No login: 500 PORTs in one burst, then the other data commands.
	s := dialFrom(t, ns, greedyAddr)
	if r := s.reply(); !strings.HasPrefix(r, "220") {
		t.Fatalf("greeting %q", r)
	}
	var burst bytes.Buffer
	for i := range 500 {
		port := 40000 + i // unprivileged, the client's own address
		fmt.Fprintf(&burst, "PORT 198,51,100,10,%d,%d\r\n", port>>8, port&0xff)
	}
	if _, err := s.c.Write(burst.Bytes()); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if r := s.reply(); r != "530 Please login with USER and PASS." {
			t.Fatalf("PORT %d before login: %q, want 530", i, r)
		}
	}
	for _, cmd := range []string{"PASV", "EPSV", "EPRT |1|198.51.100.10|50000|"} {
		if r := s.cmd(cmd); r != "530 Please login with USER and PASS." {
			t.Fatalf("%s before login: %q, want 530", cmd, r)
		}
	}
	if n := live(); n != 0 {
		t.Fatalf("%d mappings in the kernel after 503 data commands before login, want 0", n)
	}
	_, body := scrape(t, ns, "/metrics")
	if got := metric(t, body, "pasvgate_mappings_opened_total"); got != "0" {
		t.Fatalf("mappings opened before any login: %q, want 0", got)
	}
	if got := metric(t, body, `pasvgate_refusals_total{reason="login-required"}`); got != "503" {
		t.Fatalf("login-required refusals: %q, want 503", got)
	}

	// 2. Logged in, the same address gets data ports up to its cap.
	s.cmd("USER anonymous")
	if r := s.cmd("PASS x"); !strings.HasPrefix(r, "230") {
		t.Fatalf("login %q", r)
	}
	if r := s.cmd("PASV"); !strings.HasPrefix(r, "227 ") {
		t.Fatalf("PASV logged in: %q", r)
	}
	for range 2 {
		g := dialFrom(t, ns, greedyAddr)
		g.login()
		if r := g.cmd("PASV"); !strings.HasPrefix(r, "227 ") {
			t.Fatalf("PASV under the cap: %q", r)
		}
	}
	over := dialFrom(t, ns, greedyAddr)
	over.login()
	for _, cmd := range []string{"PASV", "EPSV", "PORT 198,51,100,10,195,80"} {
		if r := over.cmd(cmd); r != "425 Can't open data connection: too many data connections from your address." {
			t.Fatalf("%s over the cap: %q, want 425", cmd, r)
		}
	}
	if n := live(); n != 3 {
		t.Fatalf("%d mappings in the kernel, want the cap's 3", n)
	}

	// 3. Another address downloads while the first sits at its cap.
	o := dialFrom(t, ns, otherAddr)
	o.login()
	o.cmd("TYPE I")
	r := o.cmd("PASV")
	ap, err := parsePASV(r)
	if err != nil {
		t.Fatalf("the other address's PASV: %q", r)
	}
	dc, err := ns.Dial(context.Background(), "tcp", otherAddr+":0", ap.String())
	if err != nil {
		t.Fatalf("the other address's data connection: %v", err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(15 * time.Second))
	if r := o.cmd("RETR f.bin"); !strings.HasPrefix(r, "150") && !strings.HasPrefix(r, "125") {
		t.Fatalf("RETR: %q", r)
	}
	got, err := io.ReadAll(dc)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("the other address downloaded %d bytes (%v), want the file's %d", len(got), err, len(payload))
	}
	if r := o.reply(); !strings.HasPrefix(r, "226") {
		t.Fatalf("RETR final reply %q, want 226", r)
	}
	_, body = scrape(t, ns, "/metrics")
	if got := metric(t, body, `pasvgate_refusals_total{reason="max-mappings-per-ip"}`); got != "3" {
		t.Errorf("max-mappings-per-ip refusals: %q, want 3", got)
	}

	// 4. SIGHUP with a higher cap: the capped address's next PASV works.
	writeCap(4)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitOutput("reloaded") {
		t.Fatalf("no reload logged:\n%s", p.output())
	}
	if r := over.cmd("PASV"); !strings.HasPrefix(r, "227 ") {
		t.Fatalf("PASV after the reload raised the cap: %q", r)
	}
}

// parsePASV reads the address of a 227 reply.
func parsePASV(reply string) (netip.AddrPort, error) {
	open, end := strings.IndexByte(reply, '('), strings.IndexByte(reply, ')')
	if !strings.HasPrefix(reply, "227 ") || open < 0 || end < open {
		return netip.AddrPort{}, fmt.Errorf("not a 227: %q", reply)
	}
	f := strings.Split(reply[open+1:end], ",")
	if len(f) != 6 {
		return netip.AddrPort{}, fmt.Errorf("not six numbers: %q", reply)
	}
	var n [6]byte
	for i, s := range f {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v > 255 {
			return netip.AddrPort{}, fmt.Errorf("bad number %q in %q", s, reply)
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5])), nil
}
