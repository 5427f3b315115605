package deploy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// The least-privilege lab: a client, the gateway pasvgate runs on, and a
// private FTP server, each in its own network namespace.
//
//	client ns                 gateway ns                    server ns
//	eth0 203.0.113.10/24 ---- pub0 203.0.113.1/24
//	                          priv0 192.0.2.1/24 ---------- eth0 192.0.2.10/24
const (
	clientAddr = "203.0.113.10"
	gwPublic   = "203.0.113.1"
	gwPrivate  = "192.0.2.1"
	serverAddr = "192.0.2.10"
	listenAddr = gwPublic + ":21"
	upstream   = serverAddr + ":21"
	dataPorts  = "41000-41099"
	fileName   = "hello.txt"
	// metricsAddr is where the lab's pasvgate serves /healthz and /metrics.
	metricsAddr = "127.0.0.1:9121"
)

type lab struct {
	gw, client, server *netns.NS
	content            string // of fileName on the server
}

// newLab builds the lab and starts the test FTP server in it (as root:
// the server is not what is under test).
func newLab(t *testing.T) *lab {
	t.Helper()
	netns.RequireRoot(t)
	_, ftpd := build(t)
	l := &lab{gw: netns.New(t, nsPrefix), client: netns.New(t, nsPrefix), server: netns.New(t, nsPrefix)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netns.Veth(l.gw, "pub0", l.client, "eth0"))
	must(netns.Veth(l.gw, "priv0", l.server, "eth0"))
	must(l.client.AddAddr("eth0", netip.MustParsePrefix(clientAddr+"/24")))
	must(l.gw.AddAddr("pub0", netip.MustParsePrefix(gwPublic+"/24")))
	must(l.gw.AddAddr("priv0", netip.MustParsePrefix(gwPrivate+"/24")))
	must(l.server.AddAddr("eth0", netip.MustParsePrefix(serverAddr+"/24")))
	must(l.client.AddDefaultRoute(netip.MustParseAddr(gwPublic)))
	must(l.server.AddDefaultRoute(netip.MustParseAddr(gwPrivate)))
	must(l.gw.Sysctl("net.ipv4.ip_forward", "1"))

	root := t.TempDir()
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	l.content = "pasvgate least privilege " + hex.EncodeToString(rnd[:]) + "\n"
	must(os.WriteFile(filepath.Join(root, fileName), []byte(l.content), 0o644))
	start(t, nsCommand(l.server, nil, ftpd, "--listen", upstream, "--public-host", serverAddr,
		"--passive-ports", "30000-30099", "--root", root), "listening on")
	return l
}

// save returns iptables-save's output in the gateway namespace, run as root
// with the system's binary: what the kernel really holds. For the nftables
// backend it is `nft list ruleset`.
func (l *lab) save(t *testing.T, family string) string {
	t.Helper()
	if family == familyNftables {
		return l.gw.MustRun(t, "nft", "list", "ruleset")
	}
	return l.gw.MustRun(t, "iptables-"+family+"-save")
}

// mappingID finds a mapping's id in its iptables rule comments, or in the
// comments of its nftables map elements.
var mappingID = regexp.MustCompile(`(?:pasvgate |")id=(\S+) `)

// mappings counts the mappings whose rules are in the gateway (each has
// several rules, one id).
func (l *lab) mappings(t *testing.T, family string) int {
	ids := map[string]bool{}
	for _, m := range mappingID.FindAllStringSubmatch(l.save(t, family), -1) {
		ids[m[1]] = true
	}
	return len(ids)
}

// waitMappings waits until the gateway holds n mapping rules: removal is
// queued, so it trails the reply that ends a transfer.
func (l *lab) waitMappings(t *testing.T, family string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := l.mappings(t, family)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mappings in the gateway, want %d:\n%s", got, n, l.save(t, family))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkChains asserts that pasvgate's four chains and the jumps into them
// are in the gateway.
func (l *lab) checkChains(t *testing.T, family string) {
	t.Helper()
	save := l.save(t, family)
	if family == familyNftables {
		for _, re := range []string{`(?m)^table ip pasvgate \{`, `(?m)^\s+map dnat_map \{`, `(?m)^\s+chain prerouting \{`} {
			if !regexp.MustCompile(re).MatchString(save) {
				t.Fatalf("no %s in the gateway's ruleset:\n%s", re, save)
			}
		}
		return
	}
	for _, re := range []string{
		`(?m)^:PASVGATE-DNAT `, `(?m)^:PASVGATE-SNAT `, `(?m)^:PASVGATE-FORWARD `, `(?m)^:PASVGATE-ADMIT `,
		`(?m)^-A PREROUTING .*-j PASVGATE-DNAT$`, `(?m)^-A POSTROUTING .*-j PASVGATE-SNAT$`,
		`(?m)^-A FORWARD .*-j PASVGATE-FORWARD$`,
	} {
		if !regexp.MustCompile(re).MatchString(save) {
			t.Fatalf("no %s in the gateway's rules:\n%s", re, save)
		}
	}
}

// ftpConn is a control connection from the client namespace.
type ftpConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialFTP(t *testing.T, l *lab) *ftpConn {
	t.Helper()
	c, err := l.client.Dial(context.Background(), "tcp", "", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	f := &ftpConn{c: c, r: bufio.NewReader(c)}
	f.expect(t, "", "220")
	f.expect(t, "USER anonymous", "331")
	f.expect(t, "PASS deploy@example.com", "230")
	f.expect(t, "TYPE I", "200")
	return f
}

// expect sends line (unless empty) and reads the final line of the reply,
// which must start with code.
func (f *ftpConn) expect(t *testing.T, line, code string) string {
	t.Helper()
	if line != "" {
		if _, err := fmt.Fprintf(f.c, "%s\r\n", line); err != nil {
			t.Fatalf("sending %q: %v", line, err)
		}
	}
	for {
		r, err := f.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reply to %q: %v", line, err)
		}
		if len(r) >= 4 && r[3] == '-' {
			continue
		}
		if !strings.HasPrefix(r, code) {
			t.Fatalf("reply to %q: %q, want %s", line, strings.TrimSpace(r), code)
		}
		return strings.TrimSpace(r)
	}
}

var pasvRE = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)

// pasv asks for a passive data address, which must be the gateway's public
// one, and returns it.
func (f *ftpConn) pasv(t *testing.T) netip.AddrPort {
	t.Helper()
	r := f.expect(t, "PASV", "227")
	m := pasvRE.FindStringSubmatch(r)
	if m == nil {
		t.Fatalf("unparsable 227: %q", r)
	}
	var n [6]byte
	for i := range n {
		v, _ := strconv.Atoi(m[i+1])
		n[i] = byte(v)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5]))
	if ap.Addr().String() != gwPublic {
		t.Fatalf("227 names %v, want the gateway's public address %s: %q", ap, gwPublic, r)
	}
	return ap
}

// retr downloads fileName through the mapping at data and checks it.
func (f *ftpConn) retr(t *testing.T, l *lab, data netip.AddrPort) {
	t.Helper()
	dc, err := l.client.Dial(context.Background(), "tcp", "", data.String())
	if err != nil {
		t.Fatalf("data connection to %v: %v", data, err)
	}
	defer dc.Close()
	_ = dc.SetDeadline(time.Now().Add(20 * time.Second))
	f.expect(t, "RETR "+fileName, "1")
	b, err := io.ReadAll(dc)
	if err != nil {
		t.Fatalf("reading the data connection: %v", err)
	}
	f.expect(t, "", "226")
	if string(b) != l.content {
		t.Fatalf("downloaded %q, want %q", b, l.content)
	}
}

// setup is how pasvgate is run in one case.
type setup struct {
	config string   // its --config file, as the unit's ExecStart gives one
	wrap   []string // argv prefix that drops privileges: setpriv ...
	uid    int      // what wrap makes it
	caps   []string // what pasvgate ends up with (effective, permitted)
	bound  []string // its bounding set; nil: caps
	amb    []string // its ambient set
	bin    string   // the pasvgate binary
	ipt    string   // its --iptables-path
	family string   // nft or legacy: which iptables-save shows the kernel's rules
	env    []string // XTABLES_LOCKFILE
	flush  []string // pasvgate's arguments for the final flush
	notify bool     // talk sd_notify, as under the unit's Type=notify
}

func (s setup) command(args ...string) []string {
	return append(append(slices.Clone(s.wrap), s.bin), args...)
}

// runArgs are the unit's ExecStart arguments, with the lab's config.
func (s setup) runArgs() []string { return []string{"run", "--config", s.config} }

// writeConfig writes the lab's config for s and sets s.config.
func (s *setup) writeConfig(t *testing.T) {
	t.Helper()
	s.config = filepath.Join(sharedDir(t), "pasvgate.yaml")
	cfg := fmt.Sprintf("listen:\n  - %s\nupstream: %s\ndata-ports: %s\niptables-path: %s\nmetrics: %s\n",
		listenAddr, upstream, dataPorts, s.ipt, metricsAddr)
	if s.family != familyNftables {
		// The iptables families test the iptables backend; the nftables
		// one leaves the choice to the default, auto, as the unit does.
		cfg += "backend: iptables\n"
	}
	if err := os.WriteFile(s.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// notifySocket listens where pasvgate's sd_notify messages go, as systemd
// does for a Type=notify unit, and returns the path for NOTIFY_SOCKET and
// the messages.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(sharedDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// The service's user must be able to send to it.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 64)
	go func() {
		defer close(msgs)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return path, msgs
}

// expectNotify waits for an sd_notify message that has want (a line such
// as READY=1).
func expectNotify(t *testing.T, msgs <-chan string, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed before %s", want)
			}
			if slices.Contains(strings.Split(m, "\n"), want) {
				return
			}
		case <-timeout:
			t.Fatalf("no sd_notify %s within 10s", want)
		}
	}
}

// exercise runs the whole life of pasvgate under s, in l, as the systemd
// unit drives it: ExecStart with a config file and, with s.notify,
// READY=1; its chains; a passive download through a mapping; `rules
// list`; ExecReload's SIGHUP (RELOADING=1, READY=1, and it goes on);
// SIGTERM with a mapping open (STOPPING=1, 421, the mapping removed); and
// ExecStopPost's `rules flush`. trace, if not empty, is a directory:
// pasvgate and the flush then run under strace, which writes there.
func exercise(t *testing.T, l *lab, s setup, trace string) {
	t.Helper()
	strace := func(name string, argv []string) []string {
		if trace == "" {
			return argv
		}
		return append([]string{"strace", "-f", "-ff", "-qq", "-o", filepath.Join(trace, name)}, argv...)
	}
	env := s.env
	var msgs <-chan string
	if s.notify {
		var path string
		path, msgs = notifySocket(t)
		env = append(slices.Clone(env), "NOTIFY_SOCKET="+path)
	}
	p := start(t, nsCommand(l.gw, env, strace("run", s.command(s.runArgs()...))...), "pasvgate started")
	if s.notify {
		expectNotify(t, msgs, "READY=1")
	}
	checkMetrics(t, l.gw, metricsAddr)
	pid := p.cmd.Process.Pid // ip netns exec and setpriv exec, so this is pasvgate
	if trace != "" {
		pid = tracee(t, pid)
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != filepath.Base(s.bin) {
		t.Fatalf("process %d is %s, not pasvgate", pid, exe)
	}
	bound := s.bound
	if bound == nil {
		bound = s.caps
	}
	checkPrivileges(t, pid, s.uid, s.caps, bound, s.amb)
	l.checkChains(t, s.family)
	if n := l.mappings(t, s.family); n != 0 {
		t.Fatalf("%d mapping rules before any client", n)
	}

	// A download through a mapping: PASV installs it, the data connection
	// goes through it to the server, the end of the transfer removes it.
	f := dialFTP(t, l)
	data := f.pasv(t)
	l.waitMappings(t, s.family, 1)
	if out, err := nsCommand(l.gw, s.env, s.command("rules", "list", "--iptables-path", s.ipt)...).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), clientAddr) || !strings.Contains(string(out), data.String()) {
		t.Fatalf("rules list (err %v) does not show the mapping %s for %s:\n%s", err, data, clientAddr, out)
	}
	f.retr(t, l, data)
	l.waitMappings(t, s.family, 0)

	if s.notify {
		// ExecReload: SIGHUP re-reads the config; the session stays.
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		expectNotify(t, msgs, "RELOADING=1")
		expectNotify(t, msgs, "READY=1")
		if !p.waitFor("reloaded", 10*time.Second) {
			t.Fatalf("no reload after SIGHUP:\n%s", p.output())
		}
		f.retr(t, l, f.pasv(t))
		l.waitMappings(t, s.family, 0)
	}

	// SIGTERM with a mapping open: the client is told 421, the mapping
	// goes, the chains stay, the exit status is 0.
	g := dialFTP(t, l)
	g.pasv(t)
	l.waitMappings(t, s.family, 1)
	if err := p.stop(t, pid, syscall.SIGTERM); err != nil {
		t.Fatalf("pasvgate after SIGTERM: %v\n%s", err, p.output())
	}
	if s.notify {
		expectNotify(t, msgs, "STOPPING=1")
	}
	// Nothing it does may have been refused for want of a privilege, even
	// what it can do without (a warning and a feature off is a failure
	// here: the unit would run it that way).
	if d := denied(p.output()); d != "" {
		t.Errorf("pasvgate, with capabilities %v, logged a permission error: %s", s.caps, d)
	}
	if b, _ := io.ReadAll(g.c); !strings.HasPrefix(string(b), "421") {
		t.Errorf("a client open at SIGTERM got %q, want 421", b)
	}
	if n := l.mappings(t, s.family); n != 0 {
		t.Fatalf("%d mapping rules after SIGTERM", n)
	}
	l.checkChains(t, s.family)

	// rules flush: the chains and jumps go too.
	flush := nsCommand(l.gw, s.env, strace("flush", s.command(s.flush...))...)
	if out, err := flush.CombinedOutput(); err != nil {
		t.Fatalf("pasvgate %s: %v\n%s", strings.Join(s.flush, " "), err, out)
	}
	if save := l.save(t, s.family); strings.Contains(strings.ToLower(save), "pasvgate") {
		t.Fatalf("rules flush left pasvgate's rules:\n%s", save)
	}
}

// tracee returns the PID of the child strace (PID straceePID) started.
func tracee(t *testing.T, stracePID int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", stracePID, stracePID))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("strace %d has children %q, want one", stracePID, f)
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// lockFile makes a stand-in for /run/xtables.lock: root's, mode 0600, as
// iptables-legacy creates it. Pointing XTABLES_LOCKFILE (libxtables) at it
// keeps these tests from holding the host's lock, while pasvgate meets the
// same ownership and mode as on a real host.
func lockFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(sharedDir(t), "xtables.lock")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// familyNftables is the "family" of the nftables backend, in the tests
// that run the unit's set-up once per kernel backend (unitBackends).
const familyNftables = "nftables"

// unitBackends are the kernel backends the unit runs pasvgate with: the
// two iptables of the iptables backend, and the nftables backend, which
// the default, --backend auto, picks on a host without a forward DROP.
var unitBackends = append(slices.Clone(backends), struct {
	family string
	caps   []string
}{familyNftables, capsNFT})

// testName is the subtest name for a family of unitBackends.
func testName(family string) string {
	if family == familyNftables {
		return family
	}
	return "iptables-" + family
}

// iptablesFor is the --iptables-path of a family's test: the nftables
// backend's test keeps the usual one, which auto would fall back to.
func iptablesFor(family string) string {
	if family == familyNftables {
		return "iptables-nft"
	}
	return "iptables-" + family
}

// requireFamily skips t without the tools a family's test reads the
// kernel with.
func requireFamily(t *testing.T, family string) {
	t.Helper()
	if family == familyNftables {
		requireTools(t, "nft")
		return
	}
	requireTools(t, "iptables-"+family, "iptables-"+family+"-save")
}

// backends are the two iptables pasvgate supports, with what each needs.
var backends = []struct {
	family string
	caps   []string
}{
	{"nft", capsNFT},
	{"legacy", append(slices.Clone(capsNFT), capsLegacyExtra...)},
}

// unitFlush returns the arguments of the systemd unit's ExecStopPost for
// family (the legacy drop-in replaces it), without the binary.
func unitFlush(t *testing.T, family string) []string {
	t.Helper()
	var u unit
	if family == "legacy" {
		u = readUnit(t, "systemd/pasvgate.service", "systemd/legacy.conf")
	} else {
		u = readUnit(t, "systemd/pasvgate.service")
	}
	v := u.values("Service", "ExecStopPost")
	if len(v) == 0 {
		t.Fatal("the unit has no ExecStopPost")
	}
	argv := strings.Fields(v[len(v)-1])
	if family == "nft" {
		// The unit's flush uses the config's default, "iptables", which is
		// whichever the host's alternatives say; name nft here.
		argv = append(argv, "--iptables-path", "iptables-nft")
	}
	return argv[1:]
}

// TestLeastPrivilege proves what pasvgate needs to run as an unprivileged
// user: with iptables-nft, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE; with
// iptables-legacy, CAP_NET_RAW and CAP_DAC_READ_SEARCH as well. The real
// binary runs as nobody under setpriv, with exactly those capabilities
// (ambient, so that the iptables binaries it runs inherit them), and
// no_new_privs, as the systemd unit runs it. It starts, installs its
// chains, maps a passive download that really goes through, removes the
// mapping on SIGTERM, and `rules flush` run the same way removes its
// chains. Then, for each capability, a run without it fails.
func TestLeastPrivilege(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, "setpriv")
	pasvgate, _ := build(t)
	for _, b := range unitBackends {
		t.Run(testName(b.family), func(t *testing.T) {
			t.Parallel()
			requireFamily(t, b.family)
			l := newLab(t)
			s := setup{wrap: asNobody(b.caps), uid: nobodyUID, caps: b.caps, amb: b.caps, bin: pasvgate,
				ipt: iptablesFor(b.family), family: b.family, flush: unitFlush(t, b.family), notify: true}
			s.writeConfig(t)
			var lock string
			if b.family == "legacy" {
				lock = lockFile(t)
				s.env = []string{"XTABLES_LOCKFILE=" + lock}
			}

			// Each capability is necessary: without it pasvgate cannot
			// start, and says why.
			for _, c := range b.caps {
				less := slices.DeleteFunc(slices.Clone(b.caps), func(x string) bool { return x == c })
				argv := append(asNobody(less), append([]string{pasvgate}, s.runArgs()...)...)
				p := start(t, nsCommand(l.gw, s.env, argv...), "")
				err := p.wait(t, 30*time.Second)
				out := p.output()
				if exitCode(err) != 1 || denied(out) == "" {
					t.Fatalf("without %s: exit %v, want 1 and a permission error:\n%s", c, err, out)
				}
				t.Logf("without %s: %s", c, denied(out))
			}
			if lock != "" {
				// Even with a lock file anyone may open, legacy needs
				// CAP_DAC_READ_SEARCH: iptables-legacy-save lists the
				// tables from /proc/net/ip_tables_names, mode 0440 root.
				open := lockFile(t)
				if err := os.Chmod(open, 0o644); err != nil {
					t.Fatal(err)
				}
				less := slices.DeleteFunc(slices.Clone(b.caps), func(x string) bool { return x == "dac_read_search" })
				argv := append(asNobody(less), append([]string{pasvgate}, s.runArgs()...)...)
				p := start(t, nsCommand(l.gw, []string{"XTABLES_LOCKFILE=" + open}, argv...), "")
				err := p.wait(t, 30*time.Second)
				if exitCode(err) != 1 || !strings.Contains(denied(p.output()), "ip_tables_names") {
					t.Fatalf("without dac_read_search, lock file 0644: exit %v, want 1 and a permission error on /proc/net/ip_tables_names:\n%s", err, p.output())
				}
				t.Logf("without dac_read_search, lock file 0644: %s", denied(p.output()))
			}

			exercise(t, l, s, "")

			if lock != "" {
				// pasvgate, as nobody, waits on the same lock as root's
				// iptables-legacy: it gives up after --rule-timeout while
				// root holds it.
				checkLockShared(t, l, s, lock)
			}
		})
	}
}

// checkLockShared holds lock as root and checks that a rule change by
// pasvgate waits for it and gives up.
func checkLockShared(t *testing.T, l *lab, s setup, lock string) {
	t.Helper()
	f, err := os.Open(lock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	// Setup changes rules (it creates the chains), so it needs the lock.
	argv := s.command(append(s.runArgs(), "--rule-timeout", "1s")...)
	p := start(t, nsCommand(l.gw, s.env, argv...), "")
	err = p.wait(t, 30*time.Second)
	if err == nil || !strings.Contains(p.output(), "xtables lock") {
		t.Fatalf("with the xtables lock held by root, pasvgate: %v, want a lock error\n%s", err, p.output())
	}
	t.Logf("lock held by root: pasvgate gave up after %v: %s", time.Since(t0).Round(time.Millisecond), lastLine(p.output()))
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if out, err := nsCommand(l.gw, s.env, s.command(s.flush...)...).CombinedOutput(); err != nil {
		t.Fatalf("flush after the lock was released: %v\n%s", err, out)
	}

	// Under the unit's ProtectSystem=strict, /run is read-only. The lock
	// still opens when it is there (O_RDONLY|O_CREAT needs no write access
	// to an existing file); a missing one cannot be made, which is why
	// xtables-lock.tmpfiles makes it at boot. Shown with the lock's
	// directory made read-only in a private mount namespace.
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Log("no unshare(1): the read-only /run case is not checked")
		return
	}
	readOnly := func(lock string) *exec.Cmd {
		dir := filepath.Dir(lock)
		argv := append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"`, dir,
			"ip", "netns", "exec", l.gw.Name}, s.command(append(s.runArgs(), "--rule-timeout", "1s")...)...)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+lock)
		cmd.Dir = "/"
		return cmd
	}
	p = start(t, readOnly(lock), "pasvgate started")
	if err := p.stop(t, p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatalf("with the lock on a read-only file system: %v\n%s", err, p.output())
	}
	p = start(t, readOnly(filepath.Join(filepath.Dir(lock), "missing.lock")), "")
	if err := p.wait(t, 30*time.Second); err == nil || !strings.Contains(p.output(), "Read-only file system") {
		t.Fatalf("with no lock on a read-only file system: %v, want it unable to create one\n%s", err, p.output())
	}
	t.Logf("read-only /run, no lock file: %s", lastLine(p.output()))
	if out, err := nsCommand(l.gw, s.env, s.command(s.flush...)...).CombinedOutput(); err != nil {
		t.Fatalf("flush: %v\n%s", err, out)
	}
}

var deniedRE = regexp.MustCompile(`(?i)permission denied|not permitted`)

// denied returns the last line of out that reports a permission error
// (for a failed run, the one it died of), or "".
func denied(out string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if deniedRE.MatchString(lines[i]) {
			return lines[i]
		}
	}
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
