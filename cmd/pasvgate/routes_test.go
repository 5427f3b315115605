package main

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
	"github.com/pasvgate/pasvgate/proxy/pool"
)

// appliance is README's example: two services on one gateway.
const appliance = `
metrics: 127.0.0.1:9121
data-ports: 40000-40999
balance: least-conn
health-interval: 2s
routes:
  - name: files
    listen: [203.0.113.1:21]
    upstream:
      - 192.0.2.10:21
      - {addr: 192.0.2.12:21, weight: 2}
      - {addr: 192.0.2.13:21, weight: 0}
    proxy-protocol: v2
    public-addr: 203.0.113.1
    data-ports: 41000-41999
    announce:
      - {network: 198.51.100.0/24, addr: 198.51.100.1}
  - name: partners
    listen: [203.0.113.2:21]
    listen-tls: [203.0.113.2:990]
    upstream: [192.0.2.20:21]
    balance: user
    public-addr: 203.0.113.2
`

// TestRoutesParsed: the routes of a YAML file become typed routes, with
// their pools, weights, policies, addresses and ranges, and the top-level
// balance as the default of a route that sets none.
func TestRoutesParsed(t *testing.T) {
	p := writeConfig(t, appliance)
	cert, key := writeCert(t, "gw", time.Now().Add(24*time.Hour))
	c, err := loadConfig([]string{"--config", p, "--tls-cert", cert, "--tls-key", key})
	if err != nil {
		t.Fatal(err)
	}
	if !c.reverse || len(c.routes) != 2 {
		t.Fatalf("want reverse mode with two routes: %+v", c)
	}
	files, partners := c.routes[0], c.routes[1]
	want := []pool.Member{{Addr: "192.0.2.10:21", Weight: 1}, {Addr: "192.0.2.12:21", Weight: 2}, {Addr: "192.0.2.13:21", Weight: 0}}
	if files.name != "files" || files.pool == nil || files.pool6 != nil || len(files.pool.Members) != 3 {
		t.Fatalf("files: %+v", files)
	}
	for i, m := range want {
		if files.pool.Members[i] != m {
			t.Errorf("files member %d = %+v, want %+v", i, files.pool.Members[i], m)
		}
	}
	if files.pool.Policy != pool.LeastConn || files.pool.ProxyProtocol != pool.ProxyV2 || files.pool.Name != "files" {
		t.Errorf("files pool: %+v, want least-conn (the top-level default), PROXY v2", files.pool)
	}
	if files.ports != (nat.PortRange{Low: 41000, High: 41999}) || files.publicAddr != netip.MustParseAddr("203.0.113.1") {
		t.Errorf("files: ports %v, public %v", files.ports, files.publicAddr)
	}
	if len(files.announce) != 1 || files.announce[0] != (proxy.Announce{Network: netip.MustParsePrefix("198.51.100.0/24"), Addr: netip.MustParseAddr("198.51.100.1")}) {
		t.Errorf("files announce: %+v", files.announce)
	}
	if partners.pool.Policy != pool.User || partners.pool.ProxyProtocol != pool.ProxyOff || partners.ports != (nat.PortRange{}) {
		t.Errorf("partners: %+v %+v", partners, partners.pool)
	}
	var keys []string
	for _, l := range c.listeners {
		keys = append(keys, l.key())
	}
	if strings.Join(keys, ",") != "files 203.0.113.1:21,partners 203.0.113.2:21,tls partners 203.0.113.2:990" {
		t.Errorf("listeners: %v", keys)
	}
	if c.health.Interval.Seconds() != 2 || c.health.Fall != 2 || c.health.Rise != 2 {
		t.Errorf("health: %+v", c.health)
	}
}

// TestRoutesRefused: what a route may not say, each named.
func TestRoutesRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"routes:\n  - {listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n", "routes[0].name"},
		{"routes:\n  - {name: a, upstream: [192.0.2.10:21]}\n", "routes[0].listen"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21]}\n", "routes[0].upstream"},
		{"routes:\n  - {name: default, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n", "reserved"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n  - {name: a, listen: [203.0.113.2:21], upstream: [192.0.2.10:21]}\n", "twice"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n  - {name: b, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n", "--listen"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21], data-ports: 40500-41500}\n", "overlaps"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21], data-ports: 41000-41999}\n  - {name: b, listen: [203.0.113.2:21], upstream: [192.0.2.10:21], data-ports: 41500-42999}\n", "overlap"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [{addr: 192.0.2.10:21, weight: -1}]}\n", "weight"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [{addr: 192.0.2.10:21, wieght: 1}]}\n", "wieght"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21], balance: fastest}\n", "routes[0].balance"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21], public-addr: 2001:db8::1}\n", "routes[0].public-addr"},
		{"listen: [203.0.113.5:21]\nroutes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n", "--listen"},
		{"routes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [203.0.113.1:21]}\n", "--upstream"},
		{"intercept: eth1\nroutes:\n  - {name: a, listen: [203.0.113.1:21], upstream: [192.0.2.10:21]}\n", "--intercept"},
		{"routes:\n  - {name: a, listen-tls: [203.0.113.1:990], upstream: [192.0.2.10:21]}\n", "--listen-tls"},
	} {
		_, err := loadConfig([]string{"--config", writeConfig(t, tc.yaml)})
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a usage error naming %s", tc.yaml, err, tc.want)
		}
	}
}

// TestPoolsFromFlags: --upstream given several times makes one pool, of
// the --balance policy; weight is a YAML-only key, 1 from a flag.
func TestPoolsFromFlags(t *testing.T) {
	c, err := loadConfig([]string{"--upstream", "192.0.2.10:21", "--upstream", "192.0.2.12:21", "--upstream", "ftp.example:21",
		"--balance", "source", "--proxy-protocol", "v1", "--announce", "198.51.100.0/24=198.51.100.1"})
	if err != nil {
		t.Fatal(err)
	}
	r := c.routes[0]
	if r.name != "" || r.pool6 != nil || len(r.pool.Members) != 3 || r.pool.Policy != pool.Source || r.pool.ProxyProtocol != pool.ProxyV1 {
		t.Fatalf("default route: %+v pool %+v", r, r.pool)
	}
	for _, m := range r.pool.Members {
		if m.Weight != 1 {
			t.Errorf("%s: weight %d, want 1", m.Addr, m.Weight)
		}
	}
	if len(r.announce) != 1 || r.announce[0].Addr != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("announce: %+v", r.announce)
	}
}

// TestMappingTimeoutOneField: nat's connect timeout and the nftables
// element's timeout are the one parsed field.
func TestMappingTimeoutOneField(t *testing.T) {
	c, err := loadConfig([]string{"--upstream", "192.0.2.10:21", "--data-connect-timeout", "17s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.be.mappingTimeout.Seconds() != 17 {
		t.Fatalf("mapping timeout %v, want 17s", c.be.mappingTimeout)
	}
}

// TestREADMEApplianceExample: README's complete configuration for an
// appliance with two services is one that pasvgate takes, as it says.
func TestREADMEApplianceExample(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "```text\n# /etc/pasvgate/pasvgate.yaml\n")
	if !ok {
		t.Fatal("README has no block starting # /etc/pasvgate/pasvgate.yaml")
	}
	body, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the README's example block does not end")
	}
	cert, key := writeCert(t, "gw", time.Now().Add(24*time.Hour))
	body = strings.NewReplacer("/etc/pasvgate/tls/fullchain.pem", cert, "/etc/pasvgate/tls/key.pem", key).Replace(body)
	c, err := loadConfig([]string{"--config", writeConfig(t, body)})
	if err != nil {
		t.Fatalf("README's example: %v", err)
	}
	if len(c.routes) != 2 || c.routes[0].name != "files" || c.routes[1].name != "partners" ||
		c.routes[0].pool.Members[2].Weight != 0 || c.routes[1].pool.Policy != pool.User || len(c.routes[0].announce) != 1 {
		t.Fatalf("README's example parsed as %+v", c.routes)
	}
}

// TestPoolOfOneUnchecked: a pool of one server gets no health checks
// unless health-interval is given; pools of more get the default.
func TestPoolOfOneUnchecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{[]string{"--upstream", "192.0.2.10:21"}, 0},
		{[]string{"--upstream", "192.0.2.10:21", "--health-interval", "2s"}, 2 * time.Second},
		{[]string{"--upstream", "192.0.2.10:21", "--config", writeConfig(t, "health-interval: 3s\n")}, 3 * time.Second},
		{[]string{"--upstream", "192.0.2.10:21", "--upstream", "192.0.2.12:21"}, 2 * time.Second},
	} {
		c, err := loadConfig(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.routes[0].pool.Health.Interval; got != tc.want {
			t.Errorf("%v: health interval %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestFreebindKey: --freebind and the freebind key reach the parsed
// config.
func TestFreebindKey(t *testing.T) {
	for _, args := range [][]string{
		{"--upstream", "192.0.2.10:21", "--freebind"},
		{"--upstream", "192.0.2.10:21", "--config", writeConfig(t, "freebind: true\n")},
	} {
		c, err := loadConfig(args)
		if err != nil || !c.freebind {
			t.Fatalf("%v: freebind %v (%v), want on", args, c != nil && c.freebind, err)
		}
	}
}

// TestUpstreamSourceParsed: --upstream-source takes one address per
// family, in reverse mode only.
func TestUpstreamSourceParsed(t *testing.T) {
	c, err := loadConfig([]string{"--upstream", "192.0.2.10:21", "--upstream-source", "192.0.2.254", "--upstream-source", "2001:db8:2::fe"})
	if err != nil || len(c.upstreamSource) != 2 || c.upstreamSource[0] != netip.MustParseAddr("192.0.2.254") {
		t.Fatalf("parsed %v (%v)", c, err)
	}
	for _, args := range [][]string{
		{"--upstream", "192.0.2.10:21", "--upstream-source", "192.0.2.254", "--upstream-source", "192.0.2.253"},
		{"--upstream", "192.0.2.10:21", "--upstream-source", "0.0.0.0"},
		{"--upstream", "192.0.2.10:21", "--upstream-source", "gw"},
		{"--upstream-source", "192.0.2.254"},
	} {
		if _, err := loadConfig(args); err == nil || !strings.Contains(err.Error(), "--upstream-source") {
			t.Errorf("%v: %v, want a usage error naming --upstream-source", args, err)
		}
	}
}
