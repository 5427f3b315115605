// Package lab builds a throw-away three-namespace network for end-to-end
// tests of pasvgate against real FTP servers and clients, and drives those
// servers, clients and packet captures inside it.
//
// Tests in test/interop (and any later kernel-level test) call New once per
// gateway lab they need. That topology (reverse mode: a gateway in front of
// a private server) is
//
//	client ns                 gw ns                          server ns
//	eth0 203.0.113.10/24 ---- pub0  203.0.113.1/24
//	     203.0.113.11/24            203.0.113.2/24
//	     (the intruder)       priv0 192.0.2.1/24  ---------- eth0 192.0.2.10/24
//	                                                              192.0.2.11/24
//	                                                              (a neighbour)
//
// The client's default route and the server's default route point at the gw,
// which forwards IPv4 but has FORWARD policy DROP: the client reaches the
// server's network only through a DNAT that pasvgate installs (or by talking
// to a proxy on the gw). With Options.IPv6 the same links also carry
// 2001:db8:1::/64 (client side) and 2001:db8:2::/64 (server side), with
// IPv6 forwarding on and ip6tables FORWARD policy DROP as well.
//
// NewRouter builds the other topology, a router with a LAN behind it
// (transparent mode: pasvgate as a router sidecar); see its doc. Only
// documentation address ranges are used, so no packet of a lab can mean
// anything outside it.
//
// Besides the topologies, the package drives what runs in them: real FTP
// servers (StartServer) and clients (Client: curl, lftp, ftplib,
// jlaffaye/ftp, passive or active), a raw Go client that lets a test act
// between the data command and the data connection (RawPassiveRetr,
// RawActiveRetr), packet captures (Capture) with parsers of what crossed a
// link (Stream, Parse227s, ParseActive, Connects, Leaks), and a results
// table for suites of cells (Grid).
//
// Every namespace is named pglab-<pid>-<n>-<role> (gateway labs) or
// pgsc-<pid>-<n>-<role> (router labs), so a later run can tell a namespace
// left behind by a crashed run (its pid is gone) from one that a
// concurrently running test still uses, and Sweep removes only the former.
// Nothing here touches the host's own network, addresses, routes or firewall:
// every command runs inside one of the lab's namespaces.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Addresses and interface names of the topology. They are fixed so that
// tests, configs and expectations can name them; namespaces differ per lab.
const (
	ClientAddr     = "203.0.113.10" // the FTP client's own address
	IntruderAddr   = "203.0.113.11" // a second host on the client's network
	GWPublicAddr   = "203.0.113.1"  // where clients reach the proxy's port 21
	GWPublicAddr2  = "203.0.113.2"  // a second public address, for 227 rewrites
	GWPrivateAddr  = "192.0.2.1"    // the gateway on the server's network
	ServerAddr     = "192.0.2.10"   // the FTP server
	NeighborAddr   = "192.0.2.11"   // a second host on the server's network
	PrivatePrefix  = "192.0.2."     // what must never reach the client
	ClientIface    = "eth0"
	GWPublicIface  = "pub0"
	GWPrivateIface = "priv0"
	ServerIface    = "eth0"
)

// IPv6 addresses of a gateway lab made with Options.IPv6. Written in the
// canonical form (RFC 5952) that Go and the FTP clients print, so that a
// test can look for them in a capture.
const (
	ClientAddr6    = "2001:db8:1::10" // the FTP client
	IntruderAddr6  = "2001:db8:1::11" // a second host on the client's network
	GWPublicAddr6  = "2001:db8:1::1"  // where clients reach the proxy's port 21
	GWPublicAddr6b = "2001:db8:1::2"  // a second public address
	GWPrivateAddr6 = "2001:db8:2::1"  // the gateway on the server's network
	ServerAddr6    = "2001:db8:2::10" // the FTP server
	NeighborAddr6  = "2001:db8:2::11" // a second host on the server's network
	PrivatePrefix6 = "2001:db8:2:"    // what must never reach the client
)

// Namespace name prefixes. Sweep relies on the whole format
// <prefix><pid>-<n>-<role>.
const (
	nsPrefix       = "pglab-" // gateway labs (New)
	routerNSPrefix = "pgsc-"  // router labs (NewRouter)
)

// DefaultIPTables is the iptables binary used in the gw namespace when
// Options.IPTables is empty: the nft backend, Debian 12's default.
const DefaultIPTables = "/usr/sbin/iptables-nft"

// Options select variants of the topology.
type Options struct {
	// IPTables is the iptables binary the gw namespace uses (for its FORWARD
	// policy, and for whatever the test installs there). The nft and legacy
	// backends must never both program one namespace: rules of one are
	// invisible to the other and both get evaluated, so pick one per lab.
	// Empty means DefaultIPTables.
	IPTables string
	// ClientLinkRate, if not zero, makes the client's link slow: both
	// ends of the client-gw veth are shaped (tc tbf) to this many bytes
	// per second, and TCP buffers in the client and server namespaces are
	// capped at 64 KiB (tcp_rmem and tcp_wmem are per namespace). Both
	// are needed to make a transfer last: with Linux's default buffers of
	// several MiB a 1 MiB file fits in them, the server's last write
	// returns at once and its final reply (and with it the end of a data
	// mapping) comes long before the data has crossed the slow link.
	// Shaping in the kernel paces every client the same way, where the
	// clients' own limiters differ (curl's overshoots by far).
	ClientLinkRate int
	// IPv6 adds the IPv6 addresses (ClientAddr6 and the others) to a
	// gateway lab, turns on IPv6 forwarding in the gw and sets its
	// ip6tables FORWARD policy to DROP, with the ip6tables binary of the
	// same backend as IPTables (Lab.IP6Tables). Servers started in such a
	// lab listen on IPv6 too, where they can (see StartServer).
	IPv6 bool
	// AcceptMark, if not zero, adds to the gw's FORWARD (in each family
	// it has) the one rule an operator adds for pasvgate's nftables
	// backend: accept connections whose conntrack mark has these bits.
	AcceptMark uint32
	// NSPrefix, if not empty, replaces the namespaces' prefix "pglab-",
	// as RouterOptions.NSPrefix does for a router lab: Sweep does not
	// know such a prefix, the suite sweeps its own with SweepPrefix.
	NSPrefix string
}

// Lab is one instance of the topology. Its methods are safe for concurrent
// use. Close (registered with t.Cleanup by New) stops every process and
// capture it started and deletes its namespaces and directory.
type Lab struct {
	// Client, GW and Server are the names of the three network namespaces.
	Client, GW, Server string
	// Dir is a scratch directory, world-traversable so that servers that
	// drop privileges (to nobody) can reach files below it.
	Dir string
	// IPTables is the iptables binary in use in the gw namespace.
	IPTables string
	// IP6Tables is the ip6tables binary of the same backend as IPTables
	// (iptables-nft gives ip6tables-nft). The lab uses it only when it has
	// IPv6.
	IP6Tables string
	// IPv6 reports whether the lab has IPv6 addresses (Options.IPv6).
	IPv6 bool
	// Extra holds the names of a custom lab's further namespaces
	// (NewCustom), by role. Close deletes them with the other three.
	Extra map[string]string

	// serverAddr and serverAddr6 are where StartServer's servers listen:
	// they differ between a gateway lab and a router lab.
	serverAddr, serverAddr6 string
	// build makes the namespaces' links, addresses, routes and firewall.
	build    func(ctx context.Context) error
	linkRate int
	// acceptMark is Options.AcceptMark.
	acceptMark uint32
	seq        atomic.Int64 // numbers server directories

	mu       sync.Mutex
	procs    []*Proc
	captures []*Capture
	closed   bool
}

var nsSeq atomic.Int64

// sweepOnce makes the first New of a test binary remove namespaces left
// behind by earlier, crashed runs.
var sweepOnce sync.Once

// RequireRoot skips tb unless the test runs as root with the tools the lab
// needs. Kernel-level tests call it (New does) so that an ordinary `go test
// ./...` as a user skips them with a reason instead of failing.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("lab: needs root (network namespaces, veth, iptables)")
	}
	if runtime.GOOS != "linux" {
		tb.Skip("lab: needs Linux")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("lab: needs the ip command (iproute2); run test/install-deps.sh")
	}
}

// New builds a fresh gateway lab for tb and registers its teardown with
// tb.Cleanup. It fails tb if the topology cannot be built.
func New(tb testing.TB, opt Options) *Lab {
	tb.Helper()
	prefix := nsPrefix
	if opt.NSPrefix != "" {
		prefix = opt.NSPrefix
	}
	l := newLab(tb, prefix, "c", "g", "s", opt.IPTables)
	l.linkRate = opt.ClientLinkRate
	l.IPv6 = opt.IPv6
	l.acceptMark = opt.AcceptMark
	l.serverAddr = ServerAddr
	if opt.IPv6 {
		l.serverAddr6 = ServerAddr6
	}
	l.build = l.buildGateway
	l.create(tb)
	return l
}

// newLab makes the Lab value of a new lab: namespace names with prefix and
// the three role letters, the scratch directory and the clean-up. It skips
// tb if the lab cannot run here at all.
func newLab(tb testing.TB, prefix, client, gw, server, ipt string) *Lab {
	tb.Helper()
	RequireRoot(tb)
	sweepOnce.Do(func() {
		if err := Sweep(); err != nil {
			tb.Logf("lab: sweeping stale namespaces: %v", err)
		}
	})
	if ipt == "" {
		ipt = DefaultIPTables
	}
	if _, err := os.Stat(ipt); err != nil {
		tb.Skipf("lab: iptables binary %s: %v", ipt, err)
	}
	base := fmt.Sprintf("%s%d-%d-", prefix, os.Getpid(), nsSeq.Add(1))
	return &Lab{
		Client:    base + client,
		GW:        base + gw,
		Server:    base + server,
		IPTables:  ipt,
		IP6Tables: ip6tablesFor(ipt),
	}
}

// create makes the scratch directory and the namespaces, and runs l.build.
// The clean-up is registered first, so a half-built lab is removed too.
func (l *Lab) create(tb testing.TB) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "pglab-")
	if err != nil {
		tb.Fatalf("lab: %v", err)
	}
	l.Dir = dir
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("lab: close: %v", err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatalf("lab: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range l.namespaces() {
		if err := ipCmd(ctx, "netns", "add", ns); err != nil {
			tb.Fatalf("lab: building topology: %v", err)
		}
	}
	if err := l.build(ctx); err != nil {
		tb.Fatalf("lab: building topology: %v", err)
	}
}

// ip6tablesFor returns the ip6tables binary of the same backend as the
// iptables binary ipt: /usr/sbin/iptables-nft gives /usr/sbin/ip6tables-nft.
// The two families of one namespace must use one backend, for the same
// reason as the two tables of one family (see Options.IPTables).
func ip6tablesFor(ipt string) string {
	dir, base := filepath.Split(ipt)
	if rest, ok := strings.CutPrefix(base, "iptables"); ok {
		return dir + "ip6tables" + rest
	}
	return ""
}

// ipCmd runs the ip command with args in the host's namespace; every use
// names a lab namespace (netns add, or -n NS).
func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// buildGateway creates the gateway lab's veth pairs, addresses, routes and
// the gw's forwarding policy. Veth pairs are created inside the namespaces
// (ip -n), so no interface ever appears in the host's namespace, even for
// a moment.
func (l *Lab) buildGateway(ctx context.Context) error {
	steps := [][]string{
		{"-n", l.GW, "link", "add", GWPublicIface, "type", "veth", "peer", "name", ClientIface, "netns", l.Client},
		{"-n", l.GW, "link", "add", GWPrivateIface, "type", "veth", "peer", "name", ServerIface, "netns", l.Server},

		{"-n", l.Client, "addr", "add", ClientAddr + "/24", "dev", ClientIface},
		{"-n", l.Client, "addr", "add", IntruderAddr + "/24", "dev", ClientIface},
		{"-n", l.Client, "link", "set", "lo", "up"},
		{"-n", l.Client, "link", "set", ClientIface, "up"},
		{"-n", l.Client, "route", "add", "default", "via", GWPublicAddr},

		{"-n", l.GW, "addr", "add", GWPublicAddr + "/24", "dev", GWPublicIface},
		{"-n", l.GW, "addr", "add", GWPublicAddr2 + "/24", "dev", GWPublicIface},
		{"-n", l.GW, "addr", "add", GWPrivateAddr + "/24", "dev", GWPrivateIface},
		{"-n", l.GW, "link", "set", "lo", "up"},
		{"-n", l.GW, "link", "set", GWPublicIface, "up"},
		{"-n", l.GW, "link", "set", GWPrivateIface, "up"},

		{"-n", l.Server, "addr", "add", ServerAddr + "/24", "dev", ServerIface},
		// Secondary: the server's own connections keep ServerAddr as
		// their source.
		{"-n", l.Server, "addr", "add", NeighborAddr + "/24", "dev", ServerIface},
		{"-n", l.Server, "link", "set", "lo", "up"},
		{"-n", l.Server, "link", "set", ServerIface, "up"},
		{"-n", l.Server, "route", "add", "default", "via", GWPrivateAddr},
	}
	if l.IPv6 {
		// nodad: duplicate address detection would keep each address
		// unusable for a second or two, and there is nothing on these
		// links to collide with. The second address of each host is
		// deprecated (preferred_lft 0): IPv6 has no primary address, and
		// Linux would pick the newest one as the source of the host's
		// own connections; a deprecated one is used only when bound,
		// which is how tests speak as the intruder or the neighbour.
		second := []string{"nodad", "preferred_lft", "0"}
		steps = append(steps,
			[]string{"-n", l.Client, "addr", "add", ClientAddr6 + "/64", "dev", ClientIface, "nodad"},
			append([]string{"-n", l.Client, "addr", "add", IntruderAddr6 + "/64", "dev", ClientIface}, second...),
			[]string{"-n", l.Client, "-6", "route", "add", "default", "via", GWPublicAddr6},
			[]string{"-n", l.GW, "addr", "add", GWPublicAddr6 + "/64", "dev", GWPublicIface, "nodad"},
			append([]string{"-n", l.GW, "addr", "add", GWPublicAddr6b + "/64", "dev", GWPublicIface}, second...),
			[]string{"-n", l.GW, "addr", "add", GWPrivateAddr6 + "/64", "dev", GWPrivateIface, "nodad"},
			[]string{"-n", l.Server, "addr", "add", ServerAddr6 + "/64", "dev", ServerIface, "nodad"},
			append([]string{"-n", l.Server, "addr", "add", NeighborAddr6 + "/64", "dev", ServerIface}, second...),
			[]string{"-n", l.Server, "-6", "route", "add", "default", "via", GWPrivateAddr6},
		)
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	// Forwarding on, but nothing forwarded unless a rule accepts it: a
	// client that ignores the proxy's 227 address must fail, not slip
	// through a routing gateway.
	if _, err := l.Exec(ctx, l.GW, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if _, err := l.Exec(ctx, l.GW, l.IPTables, "-w", "5", "-P", "FORWARD", "DROP"); err != nil {
		return err
	}
	if err := l.addAcceptMark(ctx, l.IPTables); err != nil {
		return err
	}
	if l.IPv6 {
		if err := l.ipv6Forwarding(ctx); err != nil {
			return err
		}
	}
	if l.linkRate > 0 {
		for _, ns := range []string{l.Client, l.Server} {
			for _, key := range []string{"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"} {
				if _, err := l.Exec(ctx, ns, "sysctl", "-qw", key+"=4096 16384 65536"); err != nil {
					return err
				}
			}
		}
		rate := strconv.Itoa(l.linkRate * 8)
		for _, link := range [][2]string{{l.Client, ClientIface}, {l.GW, GWPublicIface}} {
			// A burst of 32 KiB lets control replies through at once;
			// latency bounds the queue, so TCP, not tbf, sets the pace.
			out, err := exec.CommandContext(ctx, "tc", "-n", link[0], "qdisc", "add", "dev", link[1], "root",
				"tbf", "rate", rate+"bit", "burst", "32kb", "latency", "100ms").CombinedOutput()
			if err != nil {
				return fmt.Errorf("tc qdisc add in %s: %w: %s", link[0], err, bytes.TrimSpace(out))
			}
		}
	}
	return nil
}

// ipv6Forwarding turns IPv6 forwarding on in the gw with FORWARD policy
// DROP, as buildGateway does for IPv4. The policy goes in first, so that
// not one packet is forwarded unfiltered. (net.ipv4.tcp_rmem and _wmem
// cover IPv6 sockets as well, so shaping needs nothing more.)
func (l *Lab) ipv6Forwarding(ctx context.Context) error {
	if l.IP6Tables == "" {
		return fmt.Errorf("no ip6tables binary goes with %s", l.IPTables)
	}
	if _, err := l.Exec(ctx, l.GW, l.IP6Tables, "-w", "5", "-P", "FORWARD", "DROP"); err != nil {
		return err
	}
	if err := l.addAcceptMark(ctx, l.IP6Tables); err != nil {
		return err
	}
	_, err := l.Exec(ctx, l.GW, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	return err
}

// addAcceptMark adds Options.AcceptMark's rule with the iptables binary
// ipt, if the lab has one.
func (l *Lab) addAcceptMark(ctx context.Context, ipt string) error {
	if l.acceptMark == 0 {
		return nil
	}
	m := fmt.Sprintf("0x%x/0x%x", l.acceptMark, l.acceptMark)
	_, err := l.Exec(ctx, l.GW, ipt, "-w", "5", "-I", "FORWARD", "-m", "connmark", "--mark", m, "-j", "ACCEPT")
	return err
}

// Exec runs name with args inside the namespace ns and returns its standard
// output. A non-zero exit is an error that carries the standard error. The
// command is killed when ctx ends, and after two minutes in any case.
func (l *Lab) Exec(ctx context.Context, ns, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("in %s: %s %s: %w: %s", ns, name, strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return stdout.String(), nil
}

// Proc is a long-running process started by Lab.Start.
type Proc struct {
	// Name is the program's name, for messages.
	Name string

	cmd    *exec.Cmd
	out    lockedBuffer
	done   chan struct{}
	err    error // set before done closes
	stopMu sync.Mutex
}

// Start runs name with args inside namespace ns in the background. The lab
// stops it (SIGTERM, then SIGKILL) at Close; Stop does so earlier. Standard
// output and standard error are collected together for Output.
func (l *Lab) Start(ns, name string, args ...string) (*Proc, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab: start after close")
	}
	// ip netns exec execs the program in place after setns, so the pid we
	// get is the program's own: Stop signals the server, not a wrapper.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	p := &Proc{Name: filepath.Base(name), cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	// Pdeathsig is a safety net: if the test binary dies without running
	// its clean-ups, the kernel kills the server with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: starting %s in %s: %w", name, ns, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Output is what the process printed so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// WaitSessions waits, up to timeout, until a pasvgate's log shows at
// least n sessions started and as many ended, and returns the output then
// (or at the timeout, for the caller's checks to report). pasvgate holds
// info lines for up to 50 ms before it writes them
// (cmd/pasvgate/logwriter.go), so a test that reads the log once its
// client is done must wait for them; and taking a test step's "before"
// here keeps the previous step's late lines out of this one's.
func (p *Proc) WaitSessions(n int, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		out := p.Output()
		started, ended := countSessions(out)
		if (started >= n && started == ended) || time.Now().After(deadline) {
			return out
		}
		if done, _ := p.Exited(); done {
			return p.Output()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Settled returns the output once every line logged before the call is
// written: it waits past pasvgate's longest hold of an info line. For a
// check that a line did not come.
func (p *Proc) Settled() string {
	time.Sleep(2 * pasvgateLogHold)
	return p.Output()
}

// pasvgateLogHold is the longest pasvgate holds an info line
// (cmd/pasvgate/logwriter.go, logFlushInterval).
const pasvgateLogHold = 50 * time.Millisecond

// Sessions counts the sessions a pasvgate's log shows started so far.
func (p *Proc) Sessions() int {
	started, _ := countSessions(p.Output())
	return started
}

// countSessions counts the session start and end lines of a log in
// either --log-format.
func countSessions(out string) (started, ended int) {
	for _, f := range []string{`"msg":"%s"`, `msg="%s"`} {
		started += strings.Count(out, fmt.Sprintf(f, "session started"))
		ended += strings.Count(out, fmt.Sprintf(f, "session ended"))
	}
	return started, ended
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to two seconds, then sends SIGKILL and waits
// for the process to be reaped. It is safe to call more than once.
func (p *Proc) Stop() {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(2 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// Do runs fn on an OS thread that has entered namespace ns. Sockets that fn
// creates stay in ns for their whole life, so fn may return them (this is
// how Dial and Capture work). The thread is returned to the Go scheduler
// only if switching back succeeded; otherwise it dies with its goroutine.
func (l *Lab) Do(ns string, fn func() error) error {
	return doInNS(ns, fn)
}

func doInNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: netns %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: entering netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the goroutine exits, and the
			// runtime terminates a thread whose goroutine ends locked, so
			// no other goroutine ever runs inside ns by accident.
			errc <- errors.Join(ferr, fmt.Errorf("lab: leaving netns %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dial opens a TCP connection from inside namespace ns, from local (an IP
// address, "ip:port", or "" for the kernel's choice) to remote
// ("ip:port"). Binding local is how a test speaks as the intruder
// address; binding a port, how it tells its sessions apart in a log.
func (l *Lab) Dial(ctx context.Context, ns, local, remote string) (net.Conn, error) {
	d := net.Dialer{}
	if local != "" {
		ap, err := netip.ParseAddrPort(local)
		if err != nil {
			ip, perr := netip.ParseAddr(local)
			if perr != nil {
				return nil, fmt.Errorf("lab: bad local address %q", local)
			}
			ap = netip.AddrPortFrom(ip, 0)
		}
		d.LocalAddr = net.TCPAddrFromAddrPort(ap)
	}
	var c net.Conn
	err := l.Do(ns, func() error {
		var err error
		// The socket is created on this thread, so it belongs to ns; the
		// connect itself may complete on any thread.
		c, err = d.DialContext(ctx, "tcp", remote)
		return err
	})
	return c, err
}

// Close stops every process and capture the lab started, kills whatever
// else still runs inside its namespaces (session children of servers), and
// deletes the namespaces and the scratch directory. It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, caps := l.procs, l.captures
	l.mu.Unlock()

	var errs []error
	for _, c := range caps {
		c.Stop()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(p.Stop)
	}
	wg.Wait()
	for _, ns := range l.namespaces() {
		if err := removeNS(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNS kills, by pid, every process still inside ns (a namespace the
// lab made, so they are the lab's), then deletes ns. A missing ns is fine.
func removeNS(ns string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for range 20 {
		pids := nsPids(ns)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: deleting netns %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

func nsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// labNSName matches the names of both kinds of lab (nsPrefix and
// routerNSPrefix) and of no one else's.
var labNSName = regexp.MustCompile(`^(?:pglab|pgsc)-(\d+)-\d+-[cgslr]$`)

// Sweep deletes lab namespaces whose creating process no longer exists:
// leftovers of a run that was killed before its clean-up ran. Namespaces of
// live test processes (a concurrent run) and any name not in the lab's own
// format are left alone.
func Sweep() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("lab: listing namespaces: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := labNSName.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if err := removeNS(f[0]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SweepPrefix deletes the namespaces of labs made with prefix as their
// Options.NSPrefix or RouterOptions.NSPrefix (<prefix><pid>-<n>-<role>)
// whose creating process no longer exists, as Sweep does for the usual
// prefixes. Other names, and a live process's labs, are left alone.
func SweepPrefix(prefix string) error {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lab: listing namespaces: %w", err)
	}
	var errs []error
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), prefix)
		f := strings.Split(rest, "-")
		if !ok || len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil || pid <= 1 || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if err := removeNS(ent.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// track registers a capture for Close.
func (l *Lab) track(c *Capture) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab: capture after close")
	}
	l.captures = append(l.captures, c)
	return nil
}

// lockedBuffer is a bytes.Buffer safe for a process's writes and a test's
// reads at the same time.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tail keeps the last n bytes of s, so error messages stay readable.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// AddServerAddr adds addr (an IPv4 or IPv6 address, without a prefix
// length) to the server namespace's interface, in the server's own network
// (/24, or /64 for IPv6), so that a server started with ServerOptions.Addr
// can bind it and the gw reaches it on the link. Like the neighbour's, the
// address is secondary: the namespace's own connections keep the server
// address as their source. An IPv6 address skips duplicate address
// detection, as the lab's own do, so that it is usable at once.
func (l *Lab) AddServerAddr(ctx context.Context, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("lab: server address %q: %w", addr, err)
	}
	args := []string{"-n", l.Server, "addr", "add", a.String() + "/24", "dev", ServerIface}
	if a.Is6() {
		args = []string{"-n", l.Server, "addr", "add", a.String() + "/64", "dev", ServerIface, "nodad", "preferred_lft", "0"}
	}
	if err := ipCmd(ctx, args...); err != nil {
		return fmt.Errorf("lab: adding %s to %s: %w", addr, l.Server, err)
	}
	return nil
}
