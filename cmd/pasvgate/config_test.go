package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/nat"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pasvgate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlagsOverrideFile(t *testing.T) {
	p := writeConfig(t, `
listen: ["203.0.113.1:21", "203.0.113.1:2121"]
upstream: 192.0.2.10:21
public-addr: 203.0.113.2
data-ports: 50000-50099
data-connect-timeout: 15s
snat: false
log-format: json
host-firewall: leave
`)
	c, err := loadConfig([]string{"--config", p, "--data-ports", "41000-41999", "--listen", "203.0.113.1:2100"})
	if err != nil {
		t.Fatal(err)
	}
	if c.lim.dataPorts != (nat.PortRange{Low: 41000, High: 41999}) {
		t.Errorf("data-ports = %v: the flag must win over the file", c.lim.dataPorts)
	}
	if !reflect.DeepEqual(c.listenAddrs(), []string{" 203.0.113.1:2100"}) {
		t.Errorf("listen = %v: a --listen flag replaces the file's list", c.listenAddrs())
	}
	if !reflect.DeepEqual(c.members(), []string{"192.0.2.10:21"}) || c.routes[0].publicAddr != netip.MustParseAddr("203.0.113.2") ||
		c.be.mappingTimeout != 15*time.Second || c.snat || !c.log.json || c.be.manageHostFW {
		t.Errorf("file values lost: %+v", c)
	}
	if c.freebind {
		t.Errorf("freebind is on by default")
	}
	if c.lim.idle != 10*time.Minute || c.lim.maxLine != 4096 {
		t.Errorf("defaults lost: %+v", c)
	}
}

func TestEmptyConfigFile(t *testing.T) {
	p := writeConfig(t, "")
	if _, err := loadConfig([]string{"--config", p, "--upstream", "192.0.2.10:21"}); err != nil {
		t.Fatalf("an empty config file: %v", err)
	}
}

func TestBadConfigNamesTheFlag(t *testing.T) {
	up := []string{"--upstream", "192.0.2.10:21"}
	cases := []struct {
		args []string
		flag string
	}{
		{[]string{"--intercept", "bad/name"}, "--intercept"},
		{[]string{"--intercept-method", "magic"}, "--intercept-method"},
		{append([]string{"--intercept", "eth1"}, up...), "--intercept"},
		{[]string{"--upstream", "192.0.2.10:21", "--balance", "random"}, "--balance"},
		{[]string{"--upstream", "192.0.2.10:21", "--proxy-protocol", "v3"}, "--proxy-protocol"},
		{[]string{"--upstream", "192.0.2.10:21", "--health-timeout", "0s"}, "--health-timeout"},
		{[]string{"--upstream", "192.0.2.10:21", "--health-fall", "0"}, "--health-fall"},
		{[]string{"--upstream", "192.0.2.10:21", "--announce", "198.51.100.0/24=2001:db8::1"}, "--announce"},
		{[]string{"--upstream", "192.0.2.10:21", "--announce", "198.51.100.0/33=198.51.100.1"}, "--announce"},
		{[]string{"--upstream", "192.0.2.10:21", "--announce", "198.51.100.1"}, "announce"},
		{[]string{"--announce", "198.51.100.0/24=198.51.100.1"}, "--announce"},
		{[]string{"--balance", "user"}, "--balance"},
		{[]string{"--upstream", "ftp.example:21", "--upstream", "[2001:db8::10]:21"}, "--upstream"},
		{append([]string{"--data-ports", "5000-4000"}, up...), "--data-ports"},
		{append([]string{"--data-ports", "0-100"}, up...), "--data-ports"},
		{append([]string{"--data-ports", "100-2000"}, up...), "--data-ports"},
		{append([]string{"--data-ports", "40000-70000"}, up...), "--data-ports"},
		{append([]string{"--public-addr", "2001:db8::1"}, up...), "--public-addr"},
		{append([]string{"--public-addr", "gateway"}, up...), "--public-addr"},
		{append([]string{"--listen", "[2001:db8::1]:21", "--public-addr", "203.0.113.2"}, up...), "--public-addr"},
		{append([]string{"--listen", "localhost:21"}, up...), "--listen"},
		{append([]string{"--listen", "203.0.113.1"}, up...), "--listen"},
		{append([]string{"--max-line", "10"}, up...), "--max-line"},
		{append([]string{"--max-mappings-per-ip", "-1"}, up...), "--max-mappings-per-ip"},
		{append([]string{"--log-format", "xml"}, up...), "--log-format"},
		{append([]string{"--log-level", "loud"}, up...), "--log-level"},
		{append([]string{"--idle-timeout", "0s"}, up...), "--idle-timeout"},
		{append([]string{"--backend", "pf"}, up...), "--backend"},
		{append([]string{"--host-firewall", "off"}, up...), "--host-firewall"},
		{[]string{"--upstream", "192.0.2.10"}, "--upstream"},
	}
	for _, tc := range cases {
		_, err := loadConfig(tc.args)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("loadConfig(%v) = %v, want a usage error naming %s", tc.args, err, tc.flag)
		}
	}
}

func TestUpstreamsPerFamily(t *testing.T) {
	c, err := loadConfig([]string{"--upstream", "[2001:db8:2::10]:21", "--upstream", "192.0.2.10:21"})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.routes[0]; r.pool == nil || r.pool6 == nil || r.pool.Members[0].Addr != "192.0.2.10:21" || r.pool6.Members[0].Addr != "[2001:db8:2::10]:21" ||
		r.pool.Name != "default" || r.pool6.Name != "default6" {
		t.Fatalf("pools per family: %+v %+v", r.pool, r.pool6)
	}
	p := writeConfig(t, "upstream: 192.0.2.10:21\n")
	if c, err := loadConfig([]string{"--config", p}); err != nil || len(c.members()) != 1 {
		t.Fatalf("a scalar upstream in YAML: %v, %v", c, err)
	}
	// No upstream is transparent mode.
	if c, err := loadConfig([]string{"--intercept", "eth1", "--intercept-method", "tproxy"}); err != nil || c.intercept != "eth1" || c.reverse {
		t.Fatalf("transparent mode: %+v, %v", c, err)
	}
	// Both backends intercept.
	for _, backend := range []string{"iptables", "nftables"} {
		if c, err := loadConfig([]string{"--backend", backend, "--intercept", "eth1", "--intercept-method", "tproxy"}); err != nil || c.be.name != backend {
			t.Fatalf("transparent mode with --backend %s: %+v, %v", backend, c, err)
		}
	}
}

func TestUnknownConfigKeyRefused(t *testing.T) {
	p := writeConfig(t, "upstream: 192.0.2.10:21\npublic-adress: 203.0.113.2\n")
	_, err := loadConfig([]string{"--config", p})
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "public-adress") {
		t.Fatalf("a misspelt key = %v, want a usage error naming it", err)
	}
}

func TestExitCodes(t *testing.T) {
	if got := realMain([]string{"run", "--data-ports", "x"}); got != 2 {
		t.Errorf("bad config exit = %d, want 2", got)
	}
	if got := realMain([]string{"nonsense"}); got != 2 {
		t.Errorf("unknown command exit = %d, want 2", got)
	}
	if got := realMain([]string{"run", "-h"}); got != 0 {
		t.Errorf("run -h exit = %d, want 0", got)
	}
	if got := realMain([]string{"version"}); got != 0 {
		t.Errorf("version exit = %d, want 0", got)
	}
}

// TestLimitDefaults: the limits a gateway ships with are on (issue 12), and
// each is set by its key and overridden by its flag; 0 turns one off.
func TestLimitDefaults(t *testing.T) {
	c, err := loadConfig([]string{"--upstream", "192.0.2.10:21"})
	if err != nil {
		t.Fatal(err)
	}
	if c.lim.maxSessions != 1000 || c.lim.maxSessionsPerIP != 20 || c.lim.maxMappingsPerIP != 50 {
		t.Fatalf("limits by default: max-sessions %d, max-sessions-per-ip %d, max-mappings-per-ip %d; want 1000, 20, 50",
			c.lim.maxSessions, c.lim.maxSessionsPerIP, c.lim.maxMappingsPerIP)
	}
	p := writeConfig(t, "upstream: 192.0.2.10:21\nmax-mappings-per-ip: 7\nmax-sessions: 0\n")
	if c, err = loadConfig([]string{"--config", p}); err != nil {
		t.Fatal(err)
	}
	if c.lim.maxMappingsPerIP != 7 || c.lim.maxSessions != 0 {
		t.Fatalf("from the file: max-mappings-per-ip %d, max-sessions %d; want 7, 0", c.lim.maxMappingsPerIP, c.lim.maxSessions)
	}
	if c, err = loadConfig([]string{"--config", p, "--max-mappings-per-ip", "0"}); err != nil || c.lim.maxMappingsPerIP != 0 {
		t.Fatalf("the flag over the file: %d, %v; want 0", c.lim.maxMappingsPerIP, err)
	}
}
