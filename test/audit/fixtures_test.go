package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/sniff"
	"github.com/pasvgate/pasvgate/test/lab"
)

// updateFixtures is the switch that makes TestMakeFixtures record the
// fixtures anew. An environment variable rather than a flag, because
// `make test` passes no flags to go test.
const updateFixtures = "PASVGATE_UPDATE_FIXTURES"

// testdata is where the fixtures and their golden reports live.
const testdata = "../testdata"

// fixture is one recorded situation: run drives the lab while the gateway
// captures.
type fixture struct {
	name string
	run  func(t *testing.T, ctx context.Context, l *lab.Lab)
}

// fixtures, in the order they are recorded and checked.
var fixtures = []fixture{
	{"healthy", runHealthy},
	{"misconfigured", runMisconfigured},
	{"split227", func(t *testing.T, ctx context.Context, l *lab.Lab) { runScripted(t, ctx, l, shapeSplit) }},
	{"multiline227", func(t *testing.T, ctx context.Context, l *lab.Lab) { runScripted(t, ctx, l, shapeMultiLine) }},
	{"authtls", runAuthTLS},
	{"blocked", runBlocked},
}

// TestMakeFixtures records every fixture in a fresh lab and writes it to
// test/testdata with its golden reports. It runs only when asked to
// (PASVGATE_UPDATE_FIXTURES=1), as root; the other tests only read what
// it wrote.
func TestMakeFixtures(t *testing.T) {
	if os.Getenv(updateFixtures) != "1" {
		t.Skipf("set %s=1 (as root) to record the capture fixtures in the lab", updateFixtures)
	}
	l := newRoutedLab(t)
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			c := startCapture(t, l)
			f.run(t, ctx, l)
			live, pcap := c.stop(t)
			path := filepath.Join(testdata, f.name+".pcap")
			if err := os.WriteFile(path, pcap, 0o644); err != nil {
				t.Fatal(err)
			}
			// The live capture and the file it saved must tell the same
			// story: the file is what the report was made from.
			file, err := sniff.ReadPcap(bytes.NewReader(pcap), sniff.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := reportJSON(t, live, ""), reportJSON(t, file, ""); !bytes.Equal(a, b) {
				t.Errorf("the live report and the saved file's differ:\nlive\n%s\nfile\n%s", a, b)
			}
			writeGolden(t, f.name, file)
			t.Logf("%s: %d bytes, %d frames", path, len(pcap), file.Stats.Packets)
		})
	}
}

// newRoutedLab is a gateway lab whose gateway routes between client and
// server (FORWARD accepts everything): a plain router, so that the client
// reaches the server's own address and whatever address the server
// advertises goes on the wire from the client's side.
func newRoutedLab(t *testing.T) *lab.Lab {
	t.Helper()
	l := lab.New(t, lab.Options{})
	if _, err := l.Exec(t.Context(), l.GW, l.IPTables, "-w", "5", "-A", "FORWARD", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	return l
}

// capture is a live capture on the gateway's client-side interface, the
// place an operator would capture on, saving what it sees.
type capture struct {
	lc     *sniff.LiveCapture
	saved  bytes.Buffer
	cancel context.CancelFunc
	done   chan struct{}
	rep    *sniff.Report
	err    error
}

func startCapture(t *testing.T, l *lab.Lab) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	// The socket must be made inside the gw namespace; it stays there.
	err := l.Do(l.GW, func() error {
		var err error
		c.lc, err = sniff.OpenLive(lab.GWPublicIface, sniff.Config{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c.lc.Save = &c.saved
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		defer close(c.done)
		c.rep, c.err = c.lc.Run(ctx, 0)
	}()
	t.Cleanup(func() {
		cancel()
		<-c.done
		c.lc.Close()
	})
	return c
}

// stop ends the capture once the last segments (FIN, ACK) have been
// seen, and returns the live report and the saved pcap.
func (c *capture) stop(t *testing.T) (*sniff.Report, []byte) {
	t.Helper()
	time.Sleep(500 * time.Millisecond)
	c.cancel()
	<-c.done
	if c.err != nil {
		t.Fatal(c.err)
	}
	return c.rep, c.saved.Bytes()
}

// runHealthy: vsftpd advertising its own address; one session doing a
// listing over PASV, EPSV and PORT.
func runHealthy(t *testing.T, ctx context.Context, l *lab.Lab) {
	srv := startVsftpd(t, ctx, l, "")
	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login(srv.User, srv.Password); err != nil {
		t.Fatal(err)
	}
	d, err := c.pasv(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if d, err = c.epsv(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if err := c.activeList(); err != nil {
		t.Fatal(err)
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
}

// runMisconfigured: vsftpd advertising 192.0.2.99, which is nobody's. A
// client that trusts the 227 gets no answer; a second one that ignores the
// 227 address (curl's default) connects to the control address instead.
func runMisconfigured(t *testing.T, ctx context.Context, l *lab.Lab) {
	srv := startVsftpd(t, ctx, l, "192.0.2.99")
	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login(srv.User, srv.Password); err != nil {
		t.Fatal(err)
	}
	if d, err := c.pasv(ctx, false); err == nil {
		d.Close()
		t.Fatal("a data connection to 192.0.2.99 succeeded")
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}

	c, err = dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login(srv.User, srv.Password); err != nil {
		t.Fatal(err)
	}
	d, err := c.pasv(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
}

// runScripted: the scripted server sends its 227 in the given shape; the
// client lists over it.
func runScripted(t *testing.T, ctx context.Context, l *lab.Lab, shape string) {
	startScripted(t, l, shape, nil)
	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login("pgtest", "pgtest-pass"); err != nil {
		t.Fatal(err)
	}
	d, err := c.pasv(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
}

// runAuthTLS: explicit FTPS with a real TLS handshake (a certificate made
// for the run); the 227 and the listing's commands travel inside TLS,
// the listing itself in the clear (PROT C).
func runAuthTLS(t *testing.T, ctx context.Context, l *lab.Lab) {
	serverConf, clientConf := selfSigned(t)
	startScripted(t, l, shapePlain, serverConf)
	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.startTLS(clientConf); err != nil {
		t.Fatal(err)
	}
	if err := c.login("pgtest", "pgtest-pass"); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"PBSZ 0", "PROT C"} {
		if _, err := c.cmd(200, "%s", cmd); err != nil {
			t.Fatal(err)
		}
	}
	d, err := c.pasv(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(d); err != nil {
		t.Fatal(err)
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
}

// runBlocked: vsftpd advertising its own address, but a firewall on the
// server drops everything to the passive range: SYN, no SYN-ACK.
func runBlocked(t *testing.T, ctx context.Context, l *lab.Lab) {
	srv := startVsftpd(t, ctx, l, "")
	rule := []string{"INPUT", "-p", "tcp", "--dport", "30000:30099", "-j", "DROP"}
	if _, err := l.Exec(ctx, l.Server, l.IPTables, append([]string{"-w", "5", "-A"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = l.Exec(context.Background(), l.Server, l.IPTables, append([]string{"-w", "5", "-D"}, rule...)...)
	})
	c, err := dialFTP(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login(srv.User, srv.Password); err != nil {
		t.Fatal(err)
	}
	if d, err := c.pasv(ctx, false); err == nil {
		d.Close()
		t.Fatal("a data connection through the DROP rule succeeded")
	}
	if err := c.quit(); err != nil {
		t.Fatal(err)
	}
}

// startVsftpd starts vsftpd (advertising public, if set) for this test
// and stops it at its end, so that the next one can have port 21.
func startVsftpd(t *testing.T, ctx context.Context, l *lab.Lab, public string) *lab.Server {
	t.Helper()
	srv, err := l.StartServer(ctx, lab.Vsftpd, lab.ServerOptions{PublicAddr: public})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Proc.Stop)
	return srv
}

// writeGolden writes the text and JSON reports of the fixture name.
func writeGolden(t *testing.T, name string, r *sniff.Report) {
	t.Helper()
	text, js := render(t, name, r)
	for ext, b := range map[string][]byte{".txt": text, ".json": js} {
		if err := os.WriteFile(filepath.Join(testdata, name+ext), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// render prints r as `pasvgate audit NAME.pcap` and `... --json` do,
// run in test/testdata.
func render(t *testing.T, name string, r *sniff.Report) (text, js []byte) {
	t.Helper()
	r.Source = name + ".pcap"
	var tb bytes.Buffer
	if err := r.WriteText(&tb); err != nil {
		t.Fatal(err)
	}
	return tb.Bytes(), reportJSON(t, r, r.Source)
}

// reportJSON is the JSON of r with source set, indented as the command
// prints it; live captures' kernel counters are left out, as a file
// cannot have them.
func reportJSON(t *testing.T, r *sniff.Report, source string) []byte {
	t.Helper()
	c := *r
	c.Source = source
	c.Stats.KernelDrops = 0
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&c); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
