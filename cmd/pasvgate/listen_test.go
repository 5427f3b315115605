package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

func TestParseListen(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // sockets as network/addr, or "error"
	}{
		{":21", "tcp4/0.0.0.0:21 tcp6/[::]:21"},
		{"0.0.0.0:2121", "tcp4/0.0.0.0:2121"},
		{"[::]:2121", "tcp6/[::]:2121"},
		{"203.0.113.1:21", "tcp4/203.0.113.1:21"},
		{"[2001:db8::1]:21", "tcp6/[2001:db8::1]:21"},
		{"[::ffff:203.0.113.1]:21", "tcp4/203.0.113.1:21"},
		{"[fe80::1%lan0]:21", "tcp6/[fe80::1%lan0]:21"},
		{"[2001:db8::1%lan0]:21", "error"},
		{"localhost:21", "error"},
		{"203.0.113.1", "error"},
		{"203.0.113.1:65536", "error"},
		{"203.0.113.1:ftp", "error"},
	} {
		sp, err := parseListen(tc.in)
		got := "error"
		if err == nil {
			var parts []string
			for _, s := range sp.sockets {
				parts = append(parts, s.network+"/"+s.addr.String())
			}
			got = strings.Join(parts, " ")
		}
		if got != tc.want {
			t.Errorf("parseListen(%q) = %s (err %v), want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestListenOverlap(t *testing.T) {
	for _, tc := range []struct {
		in []string
		ok bool
	}{
		{[]string{"0.0.0.0:2121", "[::]:2121"}, true},
		{[]string{"[::]:2121", "0.0.0.0:2121"}, true},
		{[]string{":21", "[::]:2121"}, true},
		{[]string{":0", ":0"}, true}, // the kernel picks each port
		{[]string{":21", "0.0.0.0:21"}, false},
		{[]string{"[::]:21", ":21"}, false},
		{[]string{"0.0.0.0:21", "0.0.0.0:21"}, false},
	} {
		var specs []listenSpec
		for _, s := range tc.in {
			sp, err := parseListen(s)
			if err != nil {
				t.Fatal(err)
			}
			specs = append(specs, sp)
		}
		if err := checkListenOverlap(specs); (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
	// The same check runs in validate, naming the flag.
	err := validate(t, "--upstream", "192.0.2.10:21", "--listen", ":21", "--listen", "0.0.0.0:21")
	if err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Errorf("overlapping --listen: err %v, want a --listen error", err)
	}
	err = validate(t, "--intercept", "lan0", "--listen", "0.0.0.0:2121", "--listen", "[::]:2122")
	if err == nil || !strings.Contains(err.Error(), "same port") {
		t.Errorf("--intercept with two listen ports: err %v, want a same-port error", err)
	}
	if err := validate(t, "--intercept", "lan0", "--listen", "0.0.0.0:2121", "--listen", "[::]:2121"); err != nil {
		t.Errorf("the README's sidecar listeners: %v", err)
	}
}

func validate(t *testing.T, args ...string) error {
	t.Helper()
	_, err := loadConfig(args)
	return err
}

// TestListenFamilies opens each form of listen address, alone and in both
// orders, in a namespace with IPv6 on and one with IPv6 off, and checks by
// connecting which socket gets each family's clients: 0.0.0.0:P takes IPv4
// only, [::]:P IPv6 only, so the two coexist; :P takes both.
func TestListenFamilies(t *testing.T) {
	netns.RequireRoot(t)
	for _, ipv6 := range []bool{true, false} {
		t.Run(fmt.Sprintf("ipv6=%v", ipv6), func(t *testing.T) {
			ns := netns.New(t, "pgls")
			ns.MustRun(t, "ip", "link", "set", "lo", "up")
			if !ipv6 {
				for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.lo.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
					if err := ns.Sysctl(k, "1"); err != nil {
						t.Fatal(err)
					}
				}
			}
			const p = "2121"
			for _, tc := range []struct {
				listen []string
				// which listen address (index) each family reaches; -1:
				// refused
				v4, v6 int
			}{
				{[]string{"0.0.0.0:" + p, "[::]:" + p}, 0, 1},
				{[]string{"[::]:" + p, "0.0.0.0:" + p}, 1, 0},
				{[]string{":" + p}, 0, 0},
				{[]string{"0.0.0.0:" + p}, 0, -1},
				{[]string{"[::]:" + p}, -1, 0},
				{[]string{"127.0.0.1:" + p, "[::1]:" + p}, 0, 1},
			} {
				if !ipv6 {
					if strings.Contains(tc.listen[len(tc.listen)-1], "::1") {
						continue // [::1] is no address of this host
					}
					tc.v6 = -1 // no client can reach [::1]
				}
				name := strings.Join(tc.listen, ",")
				var opened [][]net.Listener
				err := ns.Do(func() error {
					for _, l := range tc.listen {
						sp, err := parseListen(l)
						if err != nil {
							return err
						}
						lns, err := openListeners(context.Background(), sp, nil, slog.New(slog.DiscardHandler))
						if err != nil {
							return fmt.Errorf("%s: %w", l, err)
						}
						opened = append(opened, lns)
					}
					return nil
				})
				closeAll := func() {
					for _, lns := range opened {
						for _, ln := range lns {
							ln.Close()
						}
					}
				}
				if err != nil {
					closeAll()
					t.Errorf("%s: %v", name, err)
					continue
				}
				for _, fam := range []struct {
					network, addr string
					want          int
				}{{"tcp4", "127.0.0.1:" + p, tc.v4}, {"tcp6", "[::1]:" + p, tc.v6}} {
					got := whichAccepts(t, ns, opened, fam.network, fam.addr)
					if got != fam.want {
						t.Errorf("%s: a client to %s reached listen address #%d, want #%d (-1: refused)", name, fam.addr, got, fam.want)
					}
				}
				closeAll()
			}
		})
	}
}

// whichAccepts dials addr from inside ns and returns the index of the
// listen address whose socket accepted it, or -1 if the dial failed.
func whichAccepts(t *testing.T, ns *netns.NS, opened [][]net.Listener, network, addr string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, network, "", addr)
	if err != nil {
		return -1
	}
	defer c.Close()
	got := make(chan int, 8)
	for i, lns := range opened {
		for _, ln := range lns {
			tl := ln.(*net.TCPListener)
			tl.SetDeadline(time.Now().Add(200 * time.Millisecond))
			if a, err := tl.Accept(); err == nil {
				a.Close()
				got <- i
			}
			tl.SetDeadline(time.Time{})
		}
	}
	close(got)
	idx, n := -1, 0
	for i := range got {
		idx, n = i, n+1
	}
	if n != 1 {
		t.Errorf("dial %s: %d sockets accepted it, want exactly 1", addr, n)
	}
	return idx
}

// TestMetricsListenBothFamilies serves /healthz on a bare :P and reads it
// over IPv4 and IPv6.
func TestMetricsListenBothFamilies(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "pgls")
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	var stop func()
	err := ns.Do(func() error {
		var err error
		stop, err = serveMetrics(":9121", nil, func() error { return nil }, nil, false, slog.New(slog.DiscardHandler))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, a := range []string{"127.0.0.1", "::1"} {
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, "", addr)
		}}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + net.JoinHostPort(a, strconv.Itoa(9121)) + "/healthz")
		if err != nil {
			t.Errorf("/healthz over %s: %v", a, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(b)) != "ok" {
			t.Errorf("/healthz over %s: %q", a, b)
		}
		tr.CloseIdleConnections()
	}
}

func TestUpstreamIsListener(t *testing.T) {
	local := func(a netip.Addr) bool { return a == netip.MustParseAddr("203.0.113.1") }
	for _, tc := range []struct {
		listen []string
		up     string
		loop   bool
	}{
		{[]string{"203.0.113.1:21"}, "203.0.113.1:21", true},
		{[]string{":21"}, "127.0.0.1:21", true},
		{[]string{":21"}, "[::1]:21", true},
		{[]string{"0.0.0.0:21"}, "203.0.113.1:21", true}, // a local address
		{[]string{"0.0.0.0:21"}, "[::1]:21", false},      // IPv6: not that socket
		{[]string{"0.0.0.0:21"}, "192.0.2.10:21", false},
		{[]string{"0.0.0.0:21"}, "127.0.0.1:2121", false},
		{[]string{"203.0.113.1:21"}, "127.0.0.1:21", false},
	} {
		var specs []listenSpec
		for _, l := range tc.listen {
			sp, _ := parseListen(l)
			specs = append(specs, sp)
		}
		if _, got := upstreamIsListener(specs, netip.MustParseAddrPort(tc.up), local); got != tc.loop {
			t.Errorf("listen %v, upstream %s: loop %v, want %v", tc.listen, tc.up, got, tc.loop)
		}
	}
	// validate catches the cases it can tell without the host's addresses.
	if err := validate(t, "--listen", "203.0.113.1:21", "--upstream", "203.0.113.1:21"); err == nil || !strings.Contains(err.Error(), "--upstream") {
		t.Errorf("upstream = listener: %v, want an --upstream error", err)
	}
	if err := validate(t, "--upstream", "127.0.0.1:21"); err == nil {
		t.Error("upstream 127.0.0.1:21 with the default --listen :21 was accepted")
	}
}

func TestPublicAddrUnicast(t *testing.T) {
	for _, a := range []string{"0.0.0.0", "255.255.255.255", "224.0.0.1", "169.254.1.1"} {
		if err := validate(t, "--upstream", "192.0.2.10:21", "--public-addr", a); err == nil || !strings.Contains(err.Error(), "--public-addr") {
			t.Errorf("--public-addr %s: %v, want a --public-addr error", a, err)
		}
	}
	for _, a := range []string{"203.0.113.2", "192.0.2.1", "127.0.0.2"} {
		if err := validate(t, "--upstream", "192.0.2.10:21", "--public-addr", a); err != nil {
			t.Errorf("--public-addr %s: %v", a, err)
		}
	}
}

func TestMetricsExposure(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		pprof bool
		warn  string // a word the warning holds, or ""
	}{
		{"127.0.0.1:9121", true, ""},
		{"[::1]:9121", false, ""},
		{":9121", false, "beyond loopback"},
		{"203.0.113.1:9121", false, "beyond loopback"},
		{"0.0.0.0:9121", true, "profiles"},
	} {
		sp, err := parseListen(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		got := metricsExposure(sp, tc.pprof)
		if (tc.warn == "") != (got == "") || !strings.Contains(got, tc.warn) {
			t.Errorf("%s pprof=%v: %q, want a warning with %q", tc.addr, tc.pprof, got, tc.warn)
		}
	}
}

// TestFreebind: without --freebind a listen address the host does not hold
// fails (a typo shows at start); with it the listener opens, and accepts
// once the address arrives, as a VRRP address does on the node that
// becomes master. Both families.
func TestFreebind(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "pgfb")
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	for _, tc := range []struct{ network, listen, prefix string }{
		{"tcp4", "203.0.113.99:2121", "203.0.113.99/32"},
		{"tcp6", "[2001:db8:1::99]:2121", "2001:db8:1::99/128"},
	} {
		sp, err := parseListen(tc.listen)
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.DiscardHandler)
		var plain, free []net.Listener
		err = ns.Do(func() (err error) {
			plain, err = openListeners(context.Background(), sp, nil, log)
			return err
		})
		if err == nil {
			for _, ln := range plain {
				ln.Close()
			}
			t.Fatalf("%s: opened without --freebind on an address the host does not hold", tc.listen)
		}
		if err := ns.Do(func() (err error) {
			free, err = openListeners(context.Background(), sp, freebindControl, log)
			return err
		}); err != nil {
			t.Fatalf("%s with --freebind: %v", tc.listen, err)
		}
		opened := [][]net.Listener{free}
		if got := whichAccepts(t, ns, opened, tc.network, tc.listen); got != -1 {
			t.Fatalf("%s: a connection reached an address the host does not hold", tc.listen)
		}
		if err := ns.AddAddr("lo", netip.MustParsePrefix(tc.prefix)); err != nil {
			t.Fatal(err)
		}
		// The kernel may take up to a second to route to an IPv6 address
		// it found unreachable just before (measured: "network is
		// unreachable" once, 1 s after the address was added, under the
		// race detector): a client retries, so does the test, bounded.
		got := -1
		for try := 0; try < 6 && got == -1; try++ {
			if try > 0 {
				time.Sleep(500 * time.Millisecond)
			}
			got = whichAccepts(t, ns, opened, tc.network, tc.listen)
		}
		if got != 0 {
			t.Fatalf("%s: once the address arrived, the freebind listener did not accept (%d)", tc.listen, got)
		}
		for _, ln := range free {
			ln.Close()
		}
	}
}
