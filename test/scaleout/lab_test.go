package scaleout

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

// The lab's addresses (documentation ranges only).
//
// The client side is 203.0.113.0/26, so that the service address
// 203.0.113.100 is not on the client's link: the client reaches it
// through the router, as it would reach an anycast address. Each node
// holds the service address on a dummy interface, with its own announced
// address beside it, 198.51.100.101 for node 0, .102 for node 1 and so
// on: a host route on the router sends each announced address to its node
// only, so a data connection to it cannot reach another node whatever the
// router does with the service address. They are outside the router-node
// links (198.51.100.0/30, .4/30, .8/30) so that they are routed, not
// on-link, as in a deployment where they are the nodes' loopbacks.
const (
	nsPrefix     = "pgaa"
	serviceAddr  = "203.0.113.100" // the anycast FTP service, port 21
	routerAddr   = "203.0.113.1"   // the router on the client link
	clientPrefix = 26
	firstClient  = 10 // client addresses 203.0.113.10 ...
	numClients   = 32 // ... to 203.0.113.41
	serverAddr   = "192.0.2.10"
	metricsAddr  = "127.0.0.1:9464" // inside each node's namespace
	fileName     = "blob.bin"
	// buckets is how many hash buckets the source-hash balancer maps to
	// nodes: several per node, so that taking a node out moves only its
	// own buckets, and divisible by two and three.
	buckets = 12
)

// clientAddr is the i-th client address.
func clientAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(firstClient + i)})
}

// routerSide and nodeSide are the two ends of the router's /30 link to
// node i.
func routerSide(i int) string { return fmt.Sprintf("198.51.100.%d", 4*i+1) }
func nodeSide(i int) string   { return fmt.Sprintf("198.51.100.%d", 4*i+2) }

// nodePublic is the address node i announces in its 227 replies.
func nodePublic(i int) string { return fmt.Sprintf("198.51.100.%d", 101+i) }

// nodeDown is node i's address on the server's network: what the server
// sees as the source of the node's control and (SNATed) data connections.
func nodeDown(i int) string { return fmt.Sprintf("192.0.2.%d", 1+i) }

// routing is how the router spreads connections to the service address.
type routing int

const (
	// ecmpL4 is an ECMP route over the nodes with
	// fib_multipath_hash_policy=1: the hash covers addresses and ports, so
	// every connection of a client is placed on its own.
	ecmpL4 routing = iota
	// ecmpL3 is the same route with fib_multipath_hash_policy=0: the hash
	// covers source and destination address only, so every connection of
	// one client to the service address reaches the same node.
	ecmpL3
	// sourceLB is an nftables balancer on the router, no NAT: a new
	// connection to the service address gets a conntrack mark from a map
	// of jhash(source address) buckets to nodes, every packet of it is
	// routed by that mark (ip rule fwmark), so a connection stays on its
	// node when the map changes; only new connections follow the map.
	sourceLB
)

func (r routing) String() string {
	return [...]string{"ECMP L4 hash", "ECMP L3 hash", "nftables source-hash balancer"}[r]
}

// options select a lab's variant.
type options struct {
	nodes   int
	routing routing
	// public gives node i's --public-addr; nil means nodePublic.
	public func(i int) string
	// fileSize is the size of the served file; 0 means 64 KiB.
	fileSize int
	// slow caps the server's socket send buffers and lets the client
	// keep its receive buffer small, so that a transfer the client stops
	// reading stays in progress at the server (and so at pasvgate) for as
	// long as the client wants.
	slow bool
}

// lab is the topology: a client namespace, a router, the pasvgate nodes,
// and the test FTP server on a bridge that all nodes reach.
type lab struct {
	opt            options
	client, router *netns.NS
	server         *netns.NS
	nodes          []*node
	file           []byte
	ftpd           *netns.Proc
}

// node is one pasvgate node.
type node struct {
	i      int
	ns     *netns.NS
	pg     *netns.Proc
	public string
	http   *http.Client
}

func (n *node) String() string { return fmt.Sprintf("node%d", n.i) }

// newLab builds the namespaces, routes and firewall, and starts the
// server and one pasvgate per node; everything is stopped and deleted
// when the test ends.
func newLab(t *testing.T, opt options) *lab {
	t.Helper()
	netns.RequireRoot(t)
	for _, tool := range []string{"nft", "iptables-nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	if opt.fileSize == 0 {
		opt.fileSize = 64 << 10
	}
	pgBin, ftpdBin := bins.Build(t)
	l := &lab{opt: opt, client: netns.New(t, nsPrefix), router: netns.New(t, nsPrefix), server: netns.New(t, nsPrefix)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	run := func(ns *netns.NS, args ...string) {
		t.Helper()
		ns.MustRun(t, args[0], args[1:]...)
	}

	// Client: many addresses, everything through the router.
	must(netns.Veth(l.client, "c0", l.router, "r0"))
	for i := range numClients {
		must(l.client.AddAddr("c0", netip.PrefixFrom(clientAddr(i), clientPrefix)))
	}
	must(l.client.AddDefaultRoute(netip.MustParseAddr(routerAddr)))
	must(l.router.AddAddr("r0", netip.MustParsePrefix(fmt.Sprintf("%s/%d", routerAddr, clientPrefix))))

	// Server: one address on a bridge, which every node's link joins.
	run(l.server, "ip", "link", "add", "br0", "type", "bridge")
	must(l.server.LinkUp("br0"))
	must(l.server.AddAddr("br0", netip.MustParsePrefix(serverAddr+"/24")))

	// Router: forwards, no firewall, no reverse-path filter (replies from
	// the service address come back over whichever node link).
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		kv := strings.SplitN(k, "=", 2)
		must(l.router.Sysctl(kv[0], kv[1]))
	}
	ecmp := []string{"route", "add", serviceAddr + "/32"}
	for i := range opt.nodes {
		n := &node{i: i, ns: netns.New(t, nsPrefix), public: nodePublic(i)}
		if opt.public != nil {
			n.public = opt.public(i)
		}
		l.nodes = append(l.nodes, n)
		rdev := fmt.Sprintf("n%d", i)
		must(netns.Veth(l.router, rdev, n.ns, "up0"))
		must(l.router.AddAddr(rdev, netip.MustParsePrefix(routerSide(i)+"/30")))
		must(n.ns.AddAddr("up0", netip.MustParsePrefix(nodeSide(i)+"/30")))
		must(n.ns.AddDefaultRoute(netip.MustParseAddr(routerSide(i))))
		// The service address and the node's own announced address,
		// both held locally (on lo, as anycast nodes hold a service
		// address; the kernel may lack the dummy link type) so the node
		// accepts connections to them.
		must(n.ns.AddAddr("lo", netip.MustParsePrefix(serviceAddr+"/32")))
		must(n.ns.AddAddr("lo", netip.MustParsePrefix(nodePublic(i)+"/32")))
		run(l.router, "ip", "route", "add", nodePublic(i)+"/32", "via", nodeSide(i))
		ecmp = append(ecmp, "nexthop", "via", nodeSide(i))

		sdev := fmt.Sprintf("s%d", i)
		must(netns.Veth(n.ns, "dn0", l.server, sdev))
		run(l.server, "ip", "link", "set", sdev, "master", "br0")
		must(n.ns.AddAddr("dn0", netip.MustParsePrefix(nodeDown(i)+"/24")))

		// A gateway's usual firewall: forward nothing unless admitted,
		// as test/lab's gateway does.
		must(n.ns.Sysctl("net.ipv4.ip_forward", "1"))
		run(n.ns, "iptables-nft", "-P", "FORWARD", "DROP")
	}
	run(l.router, append([]string{"ip"}, ecmp...)...)
	policy := "1"
	if opt.routing == ecmpL3 {
		policy = "0"
	}
	must(l.router.Sysctl("net.ipv4.fib_multipath_hash_policy", policy))
	if opt.routing == sourceLB {
		l.installBalancer(t)
	}

	if opt.slow {
		// 64 KiB at most in the server's send buffer: the server's last
		// write (and so its 226) waits for the client to read.
		must(l.server.Sysctl("net.ipv4.tcp_wmem", "4096 16384 65536"))
		must(l.client.Sysctl("net.ipv4.tcp_rmem", "4096 16384 65536"))
	}

	l.file = make([]byte, opt.fileSize)
	_, _ = rand.Read(l.file)
	root := t.TempDir()
	must(os.Chmod(root, 0o755))
	must(os.WriteFile(filepath.Join(root, fileName), l.file, 0o644))
	// --pasv-same-ip: the server refuses a data connection from another
	// address than its control connection's, so every transfer proves
	// the node's SNAT made the server see that node.
	l.ftpd = netns.StartProc(t, l.server, 0, "listening on", ftpdBin,
		"--listen", serverAddr+":21", "--passive-ports", "30000-31999", "--root", root, "--pasv-same-ip")

	for _, n := range l.nodes {
		n.http = &http.Client{
			Timeout: 5 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					return n.ns.Dial(ctx, network, "", addr)
				},
				DisableKeepAlives: true,
			},
		}
		n.pg = netns.StartProc(t, n.ns, 0, "", pgBin, "run",
			"--listen", serviceAddr+":21",
			"--upstream", serverAddr+":21",
			"--public-addr", n.public,
			"--backend", "nftables",
			"--data-ports", "40000-40999",
			"--max-sessions-per-ip", "0", "--max-mappings-per-ip", "0",
			"--metrics", metricsAddr,
			"--drain-timeout", "30s",
			"--log-level", "info")
	}
	for _, n := range l.nodes {
		n.waitHealthy(t)
	}
	return l
}

// installBalancer loads the source-hash balancer into the router: a map
// of hash buckets to nodes (mark i+1 is node i), a rule that marks a new
// connection to the service address by its bucket and keeps the mark in
// conntrack, and one routing table per node selected by the mark.
func (l *lab) installBalancer(t *testing.T) {
	t.Helper()
	owner := make([]int, buckets)
	for b := range owner {
		owner[b] = b % len(l.nodes)
	}
	// The map's key is declared with "typeof numgen": a 32-bit integer as
	// jhash gives, which "type mark" is not; nft 1.0.6 crashes listing a
	// map declared "typeof jhash".
	rules := fmt.Sprintf(`table ip pgaa_lb {
	map bucket {
		typeof numgen inc mod %[1]d : meta mark
		elements = { %[2]s }
	}
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		ip daddr %[3]s ct state new ct mark set jhash ip saddr mod %[1]d map @bucket
		ip daddr %[3]s meta mark set ct mark
	}
}
`, buckets, elements(owner), serviceAddr)
	if out, err := l.nft(rules); err != nil {
		t.Fatalf("loading the balancer: %v\n%s", err, out)
	}
	for i := range l.nodes {
		table := strconv.Itoa(100 + i)
		l.router.MustRun(t, "ip", "rule", "add", "fwmark", strconv.Itoa(i+1), "table", table)
		l.router.MustRun(t, "ip", "route", "add", serviceAddr+"/32", "via", nodeSide(i), "table", table)
	}
}

// elements writes the balancer map's elements: bucket b to node owner[b].
func elements(owner []int) string {
	var s []string
	for b, o := range owner {
		s = append(s, fmt.Sprintf("%d : %d", b, o+1))
	}
	return strings.Join(s, ", ")
}

// setOwners replaces the balancer's map in one transaction, so that no
// new connection sees it half changed.
func (l *lab) setOwners(owner []int) error {
	out, err := l.nft(fmt.Sprintf("flush map ip pgaa_lb bucket\nadd element ip pgaa_lb bucket { %s }\n", elements(owner)))
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// nft runs an nft script in the router.
func (l *lab) nft(script string) (string, error) {
	cmd := l.router.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitHealthy waits (bounded) for the node's /healthz, served once its
// listeners are open.
func (n *node) waitHealthy(t *testing.T) {
	t.Helper()
	var err error
	for range 150 {
		var code int
		if code, err = n.healthz(); err == nil && code == http.StatusOK {
			return
		} else if err == nil {
			err = fmt.Errorf("/healthz: %d", code)
		}
		select {
		case <-n.pg.Done():
			t.Fatalf("%s: pasvgate exited: %v\n%s", n, n.pg.Err(), n.pg.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s: pasvgate not healthy after 15s: %v\n%s", n, err, n.pg.Output())
}

// healthz returns the status code of the node's /healthz.
func (n *node) healthz() (int, error) {
	resp, err := n.http.Get("http://" + metricsAddr + "/healthz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// metric reads one series (name with labels, as printed) of the node's
// /metrics.
func (n *node) metric(series string) (float64, error) {
	resp, err := n.http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no series %s in /metrics", series)
}

// startedRE finds the client of each "session started" log line.
var startedRE = regexp.MustCompile(`msg="session started".* client=(\S+)`)

// sessionsByClient maps the client address:port of every session the
// node's log says it started to the node: which node served a control
// connection, read from pasvgate itself.
func (l *lab) sessionsByClient() map[netip.AddrPort]*node {
	m := map[netip.AddrPort]*node{}
	for _, n := range l.nodes {
		for _, line := range strings.Split(n.pg.Output(), "\n") {
			if sm := startedRE.FindStringSubmatch(line); sm != nil {
				if ap, err := netip.ParseAddrPort(sm[1]); err == nil {
					m[ap] = n
				}
			}
		}
	}
	return m
}

// nodeOf waits (bounded: info lines are written in batches every 50 ms)
// for a node's log to name the client's session and returns that node.
func (l *lab) nodeOf(client netip.AddrPort) *node {
	for range 100 {
		if n := l.sessionsByClient()[client]; n != nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
