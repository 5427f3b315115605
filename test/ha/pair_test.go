package ha

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Addresses and names of the pair's lab. They are deploy/ha's example
// values, so the examples run unchanged (keepalived.conf verbatim).
const (
	nsPrefix    = "pgha-"
	clientAddr  = "203.0.113.10"
	publicVIP   = "203.0.113.100"
	privateVIP  = "192.0.2.100"
	serverAddr  = "192.0.2.10"
	metricsAddr = "127.0.0.1:9100"
	iptablesNFT = "/usr/sbin/iptables-nft"
)

// A node is one gateway of the pair.
type node struct {
	id     string // keepalived's --config-id: pgw-a, pgw-b
	ns     string
	dir    string // pid files, configs, logs
	mu     sync.Mutex
	ka, pg *lab.Proc
	ct     *lab.Proc
}

// pair is the lab: a client, two gateways, a server.
type pair struct {
	t      *testing.T
	l      *lab.Lab
	nodes  [2]*node
	srv    *lab.Server
	bin    string // pasvgate
	module string // module root, for deploy/ha
}

var sweepOnce sync.Once

// requireTools skips t unless root, keepalived, conntrackd, nft support
// and vsftpd are there (test/install-deps.sh installs them).
func requireTools(t *testing.T) {
	t.Helper()
	lab.RequireRoot(t)
	for _, p := range []string{"keepalived", "conntrackd", "curl", "lftp", "tc"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("ha: %s not installed (run test/install-deps.sh): %v", p, err)
		}
	}
	if _, err := os.Stat(iptablesNFT); err != nil {
		t.Skipf("ha: %s: %v", iptablesNFT, err)
	}
}

// newPair builds the topology, starts vsftpd, and brings both nodes up
// with pgw-a as the master. rate, if not zero, shapes both gateways'
// public links to rate bytes per second (towards the client), as
// lab.Options.ClientLinkRate does, so that a download lasts.
//
//	client ns (c)                 gateway a (g)               server ns (s)
//	br0 203.0.113.10/24 --pa--- pub0 203.0.113.1    priv0 192.0.2.1 ---qa-- br1 192.0.2.10/24
//	                     --pb--- pub0 203.0.113.2    priv0 192.0.2.2 ---qb--
//	                              gateway b (b)
//	                    sync0 198.51.100.1/24 (a) ---- sync0 198.51.100.2/24 (b)
//
// The public and private segments are bridges inside the client's and
// the server's namespaces; keepalived moves 203.0.113.100 and 192.0.2.100
// between the gateways. Both forward with FORWARD policy DROP.
func newPair(t *testing.T, rate int) *pair {
	t.Helper()
	requireTools(t)
	sweepOnce.Do(func() {
		if err := lab.SweepPrefix(nsPrefix); err != nil {
			t.Logf("ha: sweeping stale namespaces: %v", err)
		}
	})
	module, err := lab.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{t: t, module: module}
	p.l = lab.NewCustom(t, lab.CustomOptions{
		NSPrefix:   nsPrefix,
		Extra:      []string{"b"},
		ServerAddr: serverAddr,
		IPTables:   iptablesNFT,
		Build:      func(ctx context.Context, l *lab.Lab) error { return build(ctx, l, rate) },
	})
	// Their addresses are build's: pgw-a has .1 on each link, pgw-b .2.
	p.nodes[0] = &node{id: "pgw-a", ns: p.l.GW}
	p.nodes[1] = &node{id: "pgw-b", ns: p.l.Extra["b"]}
	for _, n := range p.nodes {
		n.dir = filepath.Join(p.l.Dir, n.id)
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.bin, err = lab.BuildGo(ctx, p.l.Dir, "./cmd/pasvgate")
	if err != nil {
		t.Fatal(err)
	}
	p.srv, err = p.l.StartServer(ctx, lab.Vsftpd, lab.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range p.nodes {
				n.mu.Lock()
				for _, pr := range []*lab.Proc{n.ka, n.pg, n.ct} {
					if pr != nil {
						t.Logf("%s %s:\n%s", n.id, pr.Name, tail(pr.Output(), 3000))
					}
				}
				n.mu.Unlock()
			}
		}
	})
	for _, n := range p.nodes {
		p.startConntrackd(n)
		p.startPasvgate(n)
	}
	// a first, alone, so that it is the master whatever the timing.
	p.startKeepalived(p.nodes[0])
	if err := p.waitMaster(0, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	p.startKeepalived(p.nodes[1])
	if err := p.waitBackup(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}

// build makes the links, addresses, routes and firewalls of the pair's
// lab; see newPair.
func build(ctx context.Context, l *lab.Lab, rate int) error {
	c, a, b, s := l.Client, l.GW, l.Extra["b"], l.Server
	steps := [][]string{
		{"-n", c, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
		{"-n", s, "link", "add", "br1", "type", "bridge", "mcast_snooping", "0"},
		{"-n", a, "link", "add", "pub0", "type", "veth", "peer", "name", "pa", "netns", c},
		{"-n", b, "link", "add", "pub0", "type", "veth", "peer", "name", "pb", "netns", c},
		{"-n", a, "link", "add", "priv0", "type", "veth", "peer", "name", "qa", "netns", s},
		{"-n", b, "link", "add", "priv0", "type", "veth", "peer", "name", "qb", "netns", s},
		{"-n", a, "link", "add", "sync0", "type", "veth", "peer", "name", "sync0", "netns", b},
		{"-n", c, "link", "set", "pa", "master", "br0"},
		{"-n", c, "link", "set", "pb", "master", "br0"},
		{"-n", s, "link", "set", "qa", "master", "br1"},
		{"-n", s, "link", "set", "qb", "master", "br1"},
		{"-n", c, "addr", "add", clientAddr + "/24", "dev", "br0"},
		{"-n", s, "addr", "add", serverAddr + "/24", "dev", "br1"},
	}
	for _, ns := range []string{c, s} {
		for _, dev := range []string{"lo", "br0", "br1", "pa", "pb", "qa", "qb"} {
			if (ns == c) == (dev == "br0" || dev == "pa" || dev == "pb") || dev == "lo" {
				steps = append(steps, []string{"-n", ns, "link", "set", dev, "up"})
			}
		}
	}
	steps = append(steps, []string{"-n", s, "route", "add", "default", "via", privateVIP})
	for i, g := range []string{a, b} {
		own := strconv.Itoa(i + 1)
		steps = append(steps,
			[]string{"-n", g, "addr", "add", "203.0.113." + own + "/24", "dev", "pub0"},
			// noprefixroute: the route to 192.0.2.0/24 is keepalived's
			// virtual route (src 192.0.2.100, metric 50) on the master,
			// and the fallback below (metric 100) on the backup; see
			// deploy/ha/keepalived.conf.
			[]string{"-n", g, "addr", "add", "192.0.2." + own + "/24", "dev", "priv0", "noprefixroute"},
			[]string{"-n", g, "addr", "add", "198.51.100." + own + "/24", "dev", "sync0"},
			[]string{"-n", g, "link", "set", "lo", "up"},
			[]string{"-n", g, "link", "set", "pub0", "up"},
			[]string{"-n", g, "link", "set", "priv0", "up"},
			[]string{"-n", g, "link", "set", "sync0", "up"},
			[]string{"-n", g, "route", "add", "192.0.2.0/24", "dev", "priv0", "src", "192.0.2." + own, "metric", "100"},
		)
	}
	for _, st := range steps {
		if out, err := exec.CommandContext(ctx, "ip", st...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(st, " "), err, out)
		}
	}
	for _, g := range []string{a, b} {
		// The policy first: nothing is forwarded unless accepted.
		if _, err := l.Exec(ctx, g, iptablesNFT, "-w", "5", "-P", "FORWARD", "DROP"); err != nil {
			return err
		}
		// No nf_conntrack_tcp_be_liberal: the new master accepts the
		// synced flows without it (see deploy/ha/conntrackd.conf).
		if _, err := l.Exec(ctx, g, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
	}
	if rate > 0 {
		for _, ns := range []string{c, s} {
			for _, key := range []string{"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"} {
				if _, err := l.Exec(ctx, ns, "sysctl", "-qw", key+"=4096 16384 65536"); err != nil {
					return err
				}
			}
		}
		for _, g := range []string{a, b} {
			out, err := exec.CommandContext(ctx, "tc", "-n", g, "qdisc", "add", "dev", "pub0", "root",
				"tbf", "rate", strconv.Itoa(rate*8)+"bit", "burst", "32kb", "latency", "100ms").CombinedOutput()
			if err != nil {
				return fmt.Errorf("tc in %s: %w: %s", g, err, out)
			}
		}
	}
	return nil
}

// startConntrackd runs conntrackd on n with deploy/ha/conntrackd.conf.
func (p *pair) startConntrackd(n *node) {
	p.t.Helper()
	conf, err := conntrackdConfig(p.module, n.id == "pgw-b", n.dir)
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(n.dir, "conntrackd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		p.t.Fatal(err)
	}
	pr, err := p.l.Start(n.ns, "conntrackd", "-C", path)
	if err != nil {
		p.t.Fatal(err)
	}
	n.mu.Lock()
	n.ct = pr
	n.mu.Unlock()
	// Its UNIX socket appears once it has started.
	sock := filepath.Join(n.dir, "conntrackd.ctl")
	if !lab.WaitFor(5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }) {
		p.t.Fatalf("%s: conntrackd did not start:\n%s", n.id, pr.Output())
	}
}

// startPasvgate runs pasvgate on n as deploy/ha/keepalived.conf's
// comment says, and waits for its /healthz.
func (p *pair) startPasvgate(n *node) {
	p.t.Helper()
	pr, err := p.l.Start(n.ns, p.bin, "run",
		// nftables: a pending mapping expires in the kernel by itself,
		// even on a node whose pasvgate was killed; see the README.
		"--backend", "nftables",
		"--iptables-path", iptablesNFT,
		"--freebind",
		"--listen", publicVIP+":21",
		"--public-addr", publicVIP,
		"--upstream", serverAddr+":21",
		"--metrics", metricsAddr,
		"--data-connect-timeout", pendingTimeout.String(),
	)
	if err != nil {
		p.t.Fatal(err)
	}
	n.mu.Lock()
	n.pg = pr
	n.mu.Unlock()
	if !lab.WaitFor(10*time.Second, func() bool {
		_, err := p.l.Exec(context.Background(), n.ns, "curl", "-fsS", "-o", "/dev/null", "-m", "1", "http://"+metricsAddr+"/healthz")
		return err == nil
	}) {
		p.t.Fatalf("%s: pasvgate not healthy:\n%s", n.id, pr.Output())
	}
}

// pendingTimeout is pasvgate's --data-connect-timeout here: the life of a
// mapping never used, which the stale-state test waits out.
const pendingTimeout = 4 * time.Second

// startKeepalived runs keepalived (VRRP only, in the foreground) on n
// with deploy/ha/keepalived.conf, selected by --config-id.
func (p *pair) startKeepalived(n *node) {
	p.t.Helper()
	conf := filepath.Join(p.module, "deploy", "ha", "keepalived.conf")
	n.mu.Lock()
	defer n.mu.Unlock()
	// A killed keepalived leaves its pid files, and its VRRP child may
	// linger as a zombie that keepalived takes for a running instance
	// ("daemon is already running"): they are this node's, remove them.
	for _, f := range []string{"keepalived.pid", "vrrp.pid", "checkers.pid"} {
		_ = os.Remove(filepath.Join(n.dir, f))
	}
	pr, err := p.l.Start(n.ns, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
		"--vrrp", "--config-id", n.id, "--use-file", conf,
		"--pid", filepath.Join(n.dir, "keepalived.pid"),
		"--vrrp_pid", filepath.Join(n.dir, "vrrp.pid"),
		"--checkers_pid", filepath.Join(n.dir, "checkers.pid"))
	if err != nil {
		p.t.Fatal(err)
	}
	n.ka = pr
}

// holds reports whether node i has the public virtual address.
func (p *pair) holds(i int) bool {
	out, err := exec.Command("ip", "-n", p.nodes[i].ns, "-o", "addr", "show", "dev", "pub0").Output()
	return err == nil && strings.Contains(string(out), " "+publicVIP+"/")
}

// master returns the index of the node that holds the address, or -1.
func (p *pair) master() int {
	for i := range p.nodes {
		if p.holds(i) {
			return i
		}
	}
	return -1
}

func (p *pair) waitMaster(i int, d time.Duration) error {
	if !lab.WaitFor(d, func() bool { return p.holds(i) }) {
		return fmt.Errorf("%s did not become master in %v:\n%s", p.nodes[i].id, d, tail(p.nodes[i].ka.Output(), 2000))
	}
	return nil
}

// waitBackup waits until node i's current keepalived entered BACKUP
// state (once its peer's adverts are heard) and holds no address.
func (p *pair) waitBackup(i int, d time.Duration) error {
	n := p.nodes[i]
	if !lab.WaitFor(d, func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return strings.Contains(n.ka.Output(), "Entering BACKUP STATE") && !p.holds(i)
	}) {
		return fmt.Errorf("%s did not become backup in %v:\n%s", n.id, d, tail(n.ka.Output(), 2000))
	}
	return nil
}

// killLinks takes node i's public link down, as a cable pulled or a
// switch port failed: keepalived sees it (FAULT) and gives up the
// addresses; the peer misses the adverts and takes over.
func (p *pair) killLinks(i int) {
	if out, err := exec.Command("ip", "-n", p.nodes[i].ns, "link", "set", "pub0", "down").CombinedOutput(); err != nil {
		p.t.Fatalf("%s: %v", out, err)
	}
}

// restoreLinks brings the link back; with nopreempt the node stays backup.
func (p *pair) restoreLinks(i int) {
	n := p.nodes[i]
	n.mu.Lock()
	before := strings.Count(n.ka.Output(), "Entering BACKUP STATE")
	n.mu.Unlock()
	if out, err := exec.Command("ip", "-n", n.ns, "link", "set", "pub0", "up").CombinedOutput(); err != nil {
		p.t.Fatalf("%s: %v", out, err)
	}
	if !lab.WaitFor(10*time.Second, func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return strings.Count(n.ka.Output(), "Entering BACKUP STATE") > before
	}) {
		p.t.Fatalf("%s: not backup again after its link came back:\n%s", n.id, tail(n.ka.Output(), 2000))
	}
}

// killProcs kills node i's keepalived (its parent and its VRRP child,
// by the pids in their pid files) and pasvgate with SIGKILL, as a crash
// would: nothing gets to release an address or send a last advert.
func (p *pair) killProcs(i int) {
	n := p.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	pids := []int{n.pg.Pid(), n.ka.Pid()}
	if b, err := os.ReadFile(filepath.Join(n.dir, "vrrp.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pr := range []*lab.Proc{n.pg, n.ka} {
		select {
		case <-pr.Done():
		case <-time.After(5 * time.Second):
			p.t.Fatalf("%s: %s did not die", n.id, pr.Name)
		}
	}
}

// restoreProcs starts pasvgate (its start-up sweep runs) and keepalived
// on node i again and waits until the node is a backup.
func (p *pair) restoreProcs(i int) {
	p.startPasvgate(p.nodes[i])
	p.startKeepalived(p.nodes[i])
	if err := p.waitBackup(i, 10*time.Second); err != nil {
		p.t.Fatal(err)
	}
}

// greeting dials the public virtual address from the client and reads
// the first line, within d.
func (p *pair) greeting(d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := p.l.Dial(ctx, p.l.Client, "", net.JoinHostPort(publicVIP, "21"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		_, _ = c.Write([]byte("QUIT\r\n"))
	}
	return strings.TrimSpace(line), err
}

// download fetches the server's DataFile through the virtual address with
// curl and checks it byte for byte.
func (p *pair) download(timeout time.Duration, name string) error {
	local := filepath.Join(p.l.Dir, name)
	_ = os.Remove(local)
	_, err := lab.Curl{}.Run(context.Background(), p.l, lab.Transfer{
		NS: p.l.Client, Host: publicVIP, User: p.srv.User, Password: p.srv.Password,
		Op: lab.Get, Remote: lab.DataFile, Local: local, Timeout: timeout,
	})
	if err != nil {
		return err
	}
	sum, err := lab.FileSHA256(local)
	if err != nil {
		return err
	}
	if sum != p.srv.DataSHA256 {
		return fmt.Errorf("%s: checksum differs", name)
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
