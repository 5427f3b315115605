package lifecycle

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// session is a raw control connection made inside a namespace.
type session struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialSession(t *testing.T, ns *netns.NS) *session {
	t.Helper()
	c, err := ns.Dial(context.Background(), "tcp", "", "203.0.113.1:21")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return &session{t: t, c: c, r: bufio.NewReader(c)}
}

func (s *session) reply() string {
	s.t.Helper()
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading a reply: %v", err)
		}
		if len(line) > 3 && line[3] == '-' {
			continue
		}
		return strings.TrimRight(line, "\r\n")
	}
}

func (s *session) cmd(line string) string {
	s.t.Helper()
	fmt.Fprintf(s.c, "%s\r\n", line)
	return s.reply()
}

func (s *session) login() {
	s.t.Helper()
	if r := s.reply(); !strings.HasPrefix(r, "220") {
		s.t.Fatalf("greeting %q", r)
	}
	s.cmd("USER anonymous")
	if r := s.cmd("PASS x"); !strings.HasPrefix(r, "230") {
		s.t.Fatalf("login %q", r)
	}
}

// keepaliveTimer matches ss's timer column for keepalive, e.g.
// "timer:(keepalive,44sec,0)" or "timer:(keepalive,1min,0)".
var keepaliveTimer = regexp.MustCompile(`timer:\(keepalive,([0-9.]+)(sec|min)`)

var addr227 = regexp.MustCompile(`^227 Entering Passive Mode \((\d+,\d+,\d+,\d+),`)

func pasvAddr(t *testing.T, reply string) string {
	t.Helper()
	m := addr227.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("not a 227: %q", reply)
	}
	return strings.ReplaceAll(m[1], ",", ".")
}

// scrape fetches /metrics (or another path) from inside the namespace.
func scrape(t *testing.T, ns *netns.NS, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, "", addr)
		},
	}}
	resp, err := client.Get("http://127.0.0.1:9121" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func metric(t *testing.T, body, name string) string {
	t.Helper()
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return ""
}

// TestReloadMetricsAndPublicIface runs the binary with a config file, a
// metrics listener and --public-iface: the metrics move with a session, a
// renumbered interface shows in the next 227 of the same session, and a
// SIGHUP with a new limit applies to new sessions without dropping the
// established one.
func TestReloadMetricsAndPublicIface(t *testing.T) {
	netns.RequireRoot(t)
	pasvgate, ftpd := build(t)
	ns := gateway(t)
	// The "WAN" interface whose address pasvgate follows: a veth pair
	// inside the namespace (this kernel has no dummy links).
	ns.MustRun(t, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
	ns.MustRun(t, "ip", "link", "set", "wan0", "up")
	ns.MustRun(t, "ip", "link", "set", "wan0p", "up")
	ns.MustRun(t, "ip", "addr", "add", "203.0.113.50/24", "dev", "wan0")
	// Renumbering adds the new address before removing the old; without
	// promotion the kernel would drop the new one (a secondary in the same
	// subnet) along with the old primary.
	if err := ns.Sysctl("net.ipv4.conf.wan0.promote_secondaries", "1"); err != nil {
		t.Fatal(err)
	}

	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099")
	conf := filepath.Join(t.TempDir(), "pasvgate.yaml")
	write := func(body string) {
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("listen: [203.0.113.1:21]\nupstream: 192.0.2.10:21\npublic-iface: wan0\ndata-ports: 41000-41099\n" +
		"metrics: 127.0.0.1:9121\niptables-path: iptables-nft\nkeepalive: 45s\n")
	p := start(t, ns, "pasvgate started", pasvgate, "run", "--config", conf)

	if code, body := scrape(t, ns, "/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pasvgate output:\n%s", p.output())
		}
	})
	s1 := dialSession(t, ns)
	s1.login()
	if got := pasvAddr(t, s1.cmd("PASV")); got != "203.0.113.50" {
		t.Fatalf("227 carries %s, want the interface's 203.0.113.50", got)
	}
	// --keepalive (45s here) is on both legs of the session: the client's
	// connection to pasvgate and pasvgate's to the server. Go's own default
	// is 15s, so a timer above that can only be pasvgate's setting.
	// ss shows one timer per socket, and a retransmit timer ("on") hides
	// keepalive while data is in flight: look again (bounded) until both
	// legs show it.
	var ss string
	for i := 0; i < 50; i++ {
		ss = ns.MustRun(t, "ss", "-tnoH", "state", "established")
		legs := 0
		for _, l := range strings.Split(ss, "\n") {
			f := strings.Fields(l)
			m := keepaliveTimer.FindStringSubmatch(l)
			if len(f) < 4 || m == nil {
				continue
			}
			if secs, _ := strconv.ParseFloat(m[1], 64); m[2] == "sec" && secs <= 16 {
				continue
			}
			if f[2] == "203.0.113.1:21" || (f[3] == "192.0.2.10:21" && f[2] != "192.0.2.10:21") {
				legs++ // pasvgate's end towards the client, or towards the server
			}
		}
		if legs == 2 {
			break
		}
		if i == 49 {
			t.Errorf("keepalive not on both legs of the session:\n%s", ss)
		}
		time.Sleep(20 * time.Millisecond)
	}

	_, body := scrape(t, ns, "/metrics")
	for name, want := range map[string]string{
		"pasvgate_sessions_active":                            "1",
		"pasvgate_mappings_active":                            "1",
		`pasvgate_rewrites_total{kind="227"}`:                 "1",
		`pasvgate_mapping_install_seconds_count{result="ok"}`: "1",
		"pasvgate_data_ports":                                 "100",
	} {
		if got := metric(t, body, name); got != want {
			t.Errorf("%s = %q, want %s", name, got, want)
		}
	}

	// Renumbering: the next 227 of the same session carries the new
	// address; with no address at all, PASV gets 425 and /healthz says so.
	ns.MustRun(t, "ip", "addr", "add", "203.0.113.51/24", "dev", "wan0")
	ns.MustRun(t, "ip", "addr", "del", "203.0.113.50/24", "dev", "wan0")
	var got string
	for i := 0; i < 50; i++ {
		if r := s1.cmd("PASV"); strings.HasPrefix(r, "227 ") {
			if got = pasvAddr(t, r); got == "203.0.113.51" {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got != "203.0.113.51" {
		t.Fatalf("after renumbering the 227 carries %s, want 203.0.113.51", got)
	}
	ns.MustRun(t, "ip", "addr", "del", "203.0.113.51/24", "dev", "wan0")
	var r string
	for i := 0; i < 50; i++ {
		if r = s1.cmd("PASV"); strings.HasPrefix(r, "425 ") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.HasPrefix(r, "425 ") {
		t.Fatalf("PASV with no public address: %q, want 425", r)
	}
	if code, _ := scrape(t, ns, "/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz with no public address = %d, want 503", code)
	}
	ns.MustRun(t, "ip", "addr", "add", "203.0.113.52/24", "dev", "wan0")

	// SIGHUP: a session limit applies to new sessions; the open one stays.
	write("listen: [203.0.113.1:21]\nupstream: 192.0.2.10:21\npublic-iface: wan0\ndata-ports: 41000-41099\n" +
		"metrics: 127.0.0.1:9121\niptables-path: iptables-nft\nmax-sessions: 1\nlog-level: debug\n")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitOutput("reloaded") {
		t.Fatalf("no reload logged:\n%s", p.output())
	}
	s2 := dialSession(t, ns)
	if r := s2.reply(); !strings.HasPrefix(r, "421 ") {
		t.Fatalf("a second session over the reloaded limit got %q, want 421", r)
	}
	if r := s1.cmd("NOOP"); !strings.HasPrefix(r, "200") {
		t.Fatalf("the established session after the reload: %q", r)
	}
	if got := pasvAddr(t, s1.cmd("PASV")); got != "203.0.113.52" {
		t.Fatalf("227 after the reload carries %s", got)
	}
	if !p.waitOutput("passive reply rewritten") {
		t.Error("the reloaded log level (debug) did not take effect")
	}
	_, body = scrape(t, ns, "/metrics")
	if got := metric(t, body, `pasvgate_sessions_refused_total{reason="max-sessions"}`); got != "1" {
		t.Errorf("max-sessions refusals = %q, want 1", got)
	}
	// A bad config on SIGHUP changes nothing.
	write("listen: [203.0.113.1:21]\nupstream: 192.0.2.10:21\ndata-ports: 9-1\n")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	refused := p.waitOutput("reload refused")
	if r := s1.cmd("NOOP"); !strings.HasPrefix(r, "200") || !refused {
		t.Fatalf("after a bad reload: %q\n%s", r, p.output())
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

// TestReloadUnderRace runs pasvgate built with the race detector while
// /healthz is read without pause and SIGHUPs move --public-iface between
// two interfaces: /healthz and a reload both reach the public address
// source, which a reload replaces. A last reload changes a restart-only
// key (data-ports) together with the upstream: the upstream change must
// still apply, and only data-ports keep its running value.
func TestReloadUnderRace(t *testing.T) {
	netns.RequireRoot(t)
	race := bins.BuildRace(t)
	_, ftpd := build(t)
	ns := gateway(t)
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.11/32", "dev", "lo")
	for i, a := range []string{"203.0.113.50/24", "203.0.113.60/24"} {
		l := fmt.Sprintf("wan%d", i)
		ns.MustRun(t, "ip", "link", "add", l, "type", "veth", "peer", "name", l+"p")
		ns.MustRun(t, "ip", "link", "set", l, "up")
		ns.MustRun(t, "ip", "link", "set", l+"p", "up")
		ns.MustRun(t, "ip", "addr", "add", a, "dev", l)
	}
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.10:21", "--public-host", "192.0.2.10",
		"--passive-ports", "30000-30099")
	start(t, ns, "listening on", ftpd, "--listen", "192.0.2.11:21", "--public-host", "192.0.2.11",
		"--passive-ports", "30100-30199")
	conf := filepath.Join(t.TempDir(), "pasvgate.yaml")
	write := func(up, iface, ports string) {
		body := fmt.Sprintf("listen: [203.0.113.1:21]\nupstream: %s\npublic-iface: %s\ndata-ports: %s\n"+
			"metrics: 127.0.0.1:9121\nbackend: nftables\n", up, iface, ports)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("192.0.2.10:21", "wan0", "41000-41099")
	p := start(t, ns, "pasvgate started", race, "run", "--config", conf)

	ctx, cancel := context.WithCancel(context.Background())
	scrapes := make(chan int, 1)
	go func() {
		n := 0
		defer func() { scrapes <- n }()
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return ns.Dial(ctx, network, "", addr)
			},
		}}
		for ctx.Err() == nil && n < 20000 {
			resp, err := client.Get("http://127.0.0.1:9121/healthz")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n++
			}
		}
	}()
	const reloads = 40
	for i := 0; i < reloads; i++ {
		write("192.0.2.10:21", fmt.Sprintf("wan%d", (i+1)%2), "41000-41099")
		_ = p.cmd.Process.Signal(syscall.SIGHUP)
		for w := 0; w < 250 && strings.Count(p.output(), "msg=reloaded") <= i; w++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	cancel()
	t.Logf("%d /healthz reads during %d reloads", <-scrapes, reloads)

	// data-ports (restart only) and the upstream change in one reload.
	write("192.0.2.11:21", "wan0", "42000-42099")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitOutput(`keys="[data-ports]"`) && !p.waitOutput("keys=[data-ports]") {
		t.Errorf("the reload did not say data-ports needs a restart:\n%s", lastLines(p.output(), 10))
	}
	time.Sleep(200 * time.Millisecond)
	s := dialSession(t, ns)
	s.reply()
	s.c.Close()
	if !p.waitOutput("backend=192.0.2.11:21") {
		t.Errorf("after a reload that changed data-ports and the upstream, the session did not go to the new upstream 192.0.2.11:\n%s", lastLines(p.output(), 10))
	}

	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	err := p.wait(t)
	if out := p.output(); strings.Contains(out, "DATA RACE") {
		t.Fatalf("the race detector found a race:\n%s", out)
	}
	if err != nil {
		t.Fatalf("exit: %v\n%s", err, lastLines(p.output(), 20))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
