package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/iptables"
	yaml "go.yaml.in/yaml/v3"
)

// Config is everything `pasvgate run` can be told. Each field has one YAML
// key and one flag of the same name; a flag given on the command line
// overrides the file. README.md documents every key.
type Config struct {
	Config             string        `yaml:"-"`
	Listen             []string      `yaml:"listen"`
	Freebind           bool          `yaml:"freebind"`
	Upstream           upstreamList  `yaml:"upstream"`
	UpstreamSource     []string      `yaml:"upstream-source"`
	Balance            string        `yaml:"balance"`
	ProxyProtocol      string        `yaml:"proxy-protocol"`
	HealthInterval     time.Duration `yaml:"health-interval"`
	HealthTimeout      time.Duration `yaml:"health-timeout"`
	HealthFall         int           `yaml:"health-fall"`
	HealthRise         int           `yaml:"health-rise"`
	Announce           announceList  `yaml:"announce"`
	Routes             []routeConfig `yaml:"routes"`
	Intercept          string        `yaml:"intercept"`
	InterceptMethod    string        `yaml:"intercept-method"`
	AllowDest          stringList    `yaml:"allow-dest"`
	PublicAddr         string        `yaml:"public-addr"`
	PublicIface        string        `yaml:"public-iface"`
	DataPorts          string        `yaml:"data-ports"`
	DataConnectTimeout time.Duration `yaml:"data-connect-timeout"`
	IdleTimeout        time.Duration `yaml:"idle-timeout"`
	LoginTimeout       time.Duration `yaml:"login-timeout"`
	MaxSessions        int           `yaml:"max-sessions"`
	MaxSessionsPerIP   int           `yaml:"max-sessions-per-ip"`
	MaxMappingsPerIP   int           `yaml:"max-mappings-per-ip"`
	Keepalive          time.Duration `yaml:"keepalive"`
	Metrics            string        `yaml:"metrics"`
	DebugPprof         bool          `yaml:"debug-pprof"`
	DrainTimeout       time.Duration `yaml:"drain-timeout"`
	DialTimeout        time.Duration `yaml:"dial-timeout"`
	MaxLine            int           `yaml:"max-line"`
	LogFormat          string        `yaml:"log-format"`
	LogLevel           string        `yaml:"log-level"`
	Backend            string        `yaml:"backend"`
	IptablesPath       string        `yaml:"iptables-path"`
	RuleTimeout        time.Duration `yaml:"rule-timeout"`
	SNAT               bool          `yaml:"snat"`
	ConnMark           uint32        `yaml:"connmark"`
	JumpCheckInterval  time.Duration `yaml:"jump-check-interval"`
	HostFirewall       string        `yaml:"host-firewall"`
	TLS                string        `yaml:"tls"`
	TLSCert            string        `yaml:"tls-cert"`
	TLSKey             string        `yaml:"tls-key"`
	ListenTLS          []string      `yaml:"listen-tls"`
	UpstreamTLS        string        `yaml:"upstream-tls"`
	UpstreamCA         string        `yaml:"upstream-ca"`
	UpstreamServerName string        `yaml:"upstream-server-name"`
	UpstreamInsecure   bool          `yaml:"upstream-insecure"`
	TLSRequireReuse    bool          `yaml:"tls-require-reuse"`

	// healthSet says health-interval was given, as a flag or a key: a
	// pool of one server is checked only then (parseRoute).
	healthSet bool
}

// routeConfig is one entry of the `routes` key: a public FTP service of
// its own (see README, "Routes"). Unset keys take the top-level value,
// but for listen, listen-tls and upstream, which every route names.
type routeConfig struct {
	Name          string       `yaml:"name"`
	Listen        []string     `yaml:"listen"`
	ListenTLS     []string     `yaml:"listen-tls"`
	Upstream      upstreamList `yaml:"upstream"`
	Balance       string       `yaml:"balance"`
	ProxyProtocol string       `yaml:"proxy-protocol"`
	PublicAddr    string       `yaml:"public-addr"`
	DataPorts     string       `yaml:"data-ports"`
	Announce      announceList `yaml:"announce"`
}

// upstreamEntry is one server of an upstream list: `ADDR:PORT`, or in
// YAML `{addr: ADDR:PORT, weight: N}`.
type upstreamEntry struct {
	Addr   string `yaml:"addr"`
	Weight *int   `yaml:"weight"` // nil: 1
}

// upstreamList is the `upstream` key: one entry or a list of them.
type upstreamList []upstreamEntry

// UnmarshalYAML accepts `upstream: ADDR`, `upstream: [ADDR, ...]` and
// lists whose items are maps with addr and weight.
func (l *upstreamList) UnmarshalYAML(n *yaml.Node) error {
	one := func(n *yaml.Node) (upstreamEntry, error) {
		if n.Kind == yaml.ScalarNode {
			return upstreamEntry{Addr: n.Value}, nil
		}
		var e upstreamEntry
		dec := *n
		if err := decodeKnown(&dec, &e); err != nil {
			return e, err
		}
		return e, nil
	}
	if n.Kind != yaml.SequenceNode {
		e, err := one(n)
		*l = upstreamList{e}
		return err
	}
	*l = nil
	for _, item := range n.Content {
		e, err := one(item)
		if err != nil {
			return err
		}
		*l = append(*l, e)
	}
	return nil
}

// decodeKnown decodes a mapping node into v, refusing keys v does not
// have, as the file's decoder does (yaml.Node.Decode would not).
func decodeKnown(n *yaml.Node, v any) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: want an address or a map", n.Line)
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// announceEntry is one `announce` item: clients from network are told
// addr. The flag form is NETWORK=ADDR.
type announceEntry struct {
	Network string `yaml:"network"`
	Addr    string `yaml:"addr"`
}

// announceList is the `announce` key.
type announceList []announceEntry

// parseUpstreamFlag is one --upstream: a server of weight 1.
func parseUpstreamFlag(v string) (upstreamEntry, error) { return upstreamEntry{Addr: v}, nil }

// parseAnnounceFlag is one --announce NETWORK=ADDR; parseRoutes checks
// both halves.
func parseAnnounceFlag(v string) (announceEntry, error) {
	network, addr, ok := strings.Cut(v, "=")
	if !ok {
		return announceEntry{}, errors.New("want NETWORK=ADDR, such as 198.51.100.0/24=198.51.100.1")
	}
	return announceEntry{Network: network, Addr: addr}, nil
}

// defaults are the values README.md promises.
func defaults() Config {
	return Config{
		InterceptMethod:    rules.Redirect,
		DataPorts:          "40000-40999",
		DataConnectTimeout: 30 * time.Second,
		IdleTimeout:        10 * time.Minute,
		LoginTimeout:       time.Minute,
		// Limits safe on the internet, each in its own terms:
		//  - max-sessions: 2 descriptors a session, so 1,000 sessions fit
		//    in 4,096 descriptors (a common hard limit, which Go raises
		//    the soft one to at start) with room for the rest, and in the
		//    unit's LimitNOFILE=65536 many times; and no more sessions than
		//    the default data range has ports, so that, each session
		//    holding at most one data port, every session can have one.
		//  - max-sessions-per-ip: clients open 1 to 10 sessions from one
		//    address (FileZilla 2 to 3, lftp's parallel mirror up to 10);
		//    20 leaves room for a small office behind one NAT, and one
		//    address takes at most 2% of max-sessions.
		//  - max-mappings-per-ip: one address holds at most 5% of the
		//    default 1,000-port range, so 20 addresses are needed to fill
		//    it; above max-sessions-per-ip, so a client with all its
		//    sessions transferring has room left for ports whose removal
		//    is still under way (they count until their rules are gone).
		// A gateway in front of a big NAT'd site raises the per-IP pair.
		MaxSessions:      1000,
		MaxSessionsPerIP: 20,
		MaxMappingsPerIP: 50,
		Keepalive:        30 * time.Second,
		DrainTimeout:     time.Minute,
		DialTimeout:      10 * time.Second,
		MaxLine:          ftp.DefaultMaxLine,
		LogFormat:        "text",
		LogLevel:         "info",
		Backend:          backendAuto,
		IptablesPath:     "iptables",
		RuleTimeout:      5 * time.Second,
		SNAT:             true,
		ConnMark:         iptables.DefaultConnMark,
		HostFirewall:     hostFirewallAuto,
		UpstreamTLS:      "auto",
		Balance:          "round-robin",
		ProxyProtocol:    "off",
		// Down after two missed checks 2 s apart, each given 2 s: a
		// server that stops answering is out within about 6 s, and one
		// that recovers back within about 4 s, both inside the 10 s an
		// operator can expect, without a flap on one lost check.
		HealthInterval: 2 * time.Second,
		HealthTimeout:  2 * time.Second,
		HealthFall:     2,
		HealthRise:     2,
	}
}

// defaultListen is where the default route listens when --listen is not
// given.
var defaultListen = []string{":21"}

// stringList is a YAML value that may be one string or a list of them.
type stringList []string

// UnmarshalYAML accepts `key: value` as well as `key: [a, b]`.
func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = stringList{n.Value}
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

// listFlag is a repeatable flag whose every use parses into one more
// item. The first use on the command line replaces the list from the
// config file instead of adding to it.
type listFlag[T any] struct {
	list  *[]T
	set   bool
	parse func(string) (T, error)
	show  func(T) string
}

// stringsFlag is a repeatable flag of plain strings.
func stringsFlag(list *[]string) *listFlag[string] {
	return &listFlag[string]{list: list, parse: func(v string) (string, error) { return v, nil }, show: func(v string) string { return v }}
}

// String implements flag.Value.
func (l *listFlag[T]) String() string {
	if l.list == nil {
		return ""
	}
	var a []string
	for _, v := range *l.list {
		a = append(a, l.show(v))
	}
	return strings.Join(a, ",")
}

// Set implements flag.Value.
func (l *listFlag[T]) Set(v string) error {
	item, err := l.parse(v)
	if err != nil {
		return err
	}
	if !l.set {
		*l.list = nil
		l.set = true
	}
	*l.list = append(*l.list, item)
	return nil
}

// runFlags binds the flags of `pasvgate run` to c.
func runFlags(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&c.Config, "config", c.Config, "YAML config `file`; flags override its keys")
	fs.Var(stringsFlag(&c.Listen), "listen", "`ADDR:PORT` to accept FTP control connections on (repeatable)")
	fs.BoolVar(&c.Freebind, "freebind", c.Freebind, "listen on addresses this host does not hold yet (IP_FREEBIND), such as a VRRP address on the backup node")
	fs.Var(&listFlag[upstreamEntry]{list: (*[]upstreamEntry)(&c.Upstream), parse: parseUpstreamFlag,
		show: func(e upstreamEntry) string { return e.Addr }}, "upstream", "an FTP server's control `ADDR:PORT` (reverse mode; repeatable: servers of one family make a pool, and IPv6 clients go to the IPv6 servers if any)")
	fs.Var(stringsFlag(&c.UpstreamSource), "upstream-source", "`ADDR` sessions dial their server from, one per family (repeatable): a gateway pair's VRRP address on the servers' side")
	fs.StringVar(&c.Balance, "balance", c.Balance, "how a session's server is picked from a pool: round-robin, least-conn, source (sticky by client address) or user (sticky by login name)")
	fs.StringVar(&c.ProxyProtocol, "proxy-protocol", c.ProxyProtocol, "send the servers a PROXY protocol header with the client's address: off, v1 or v2")
	fs.DurationVar(&c.HealthInterval, "health-interval", c.HealthInterval, "how often each server of a pool is checked (connect, read its 220); 0: no checks; a pool of one server is checked only when this is given")
	fs.DurationVar(&c.HealthTimeout, "health-timeout", c.HealthTimeout, "bound on one health check")
	fs.IntVar(&c.HealthFall, "health-fall", c.HealthFall, "failed checks in a row that take a server out of rotation")
	fs.IntVar(&c.HealthRise, "health-rise", c.HealthRise, "passed checks in a row that put it back")
	fs.Var(&listFlag[announceEntry]{list: (*[]announceEntry)(&c.Announce), parse: parseAnnounceFlag,
		show: func(e announceEntry) string { return e.Network + "=" + e.Addr }}, "announce", "`NETWORK=ADDR`: tell clients from NETWORK the gateway address ADDR in 227 replies (repeatable)")
	fs.StringVar(&c.Intercept, "intercept", c.Intercept, "transparent mode: install interception of FTP arriving on this LAN `interface`")
	fs.StringVar(&c.InterceptMethod, "intercept-method", c.InterceptMethod, "transparent mode: how connections are intercepted: redirect or tproxy")
	fs.Var(stringsFlag((*[]string)(&c.AllowDest)), "allow-dest", "transparent mode: servers clients may reach: public, a `NETWORK` or an address (repeatable; default public)")
	fs.StringVar(&c.PublicAddr, "public-addr", c.PublicAddr, "`IP` written into 227 replies (default: the address the client connected to)")
	fs.StringVar(&c.PublicIface, "public-iface", c.PublicIface, "take the 227 address from this `interface`, following its changes (instead of --public-addr)")
	fs.DurationVar(&c.LoginTimeout, "login-timeout", c.LoginTimeout, "end a session not logged in this long after it started (0: no limit)")
	fs.IntVar(&c.MaxSessions, "max-sessions", c.MaxSessions, "most concurrent sessions (0: no limit)")
	fs.IntVar(&c.MaxSessionsPerIP, "max-sessions-per-ip", c.MaxSessionsPerIP, "most concurrent sessions from one client address, an IPv6 client by its /64 (0: no limit)")
	fs.IntVar(&c.MaxMappingsPerIP, "max-mappings-per-ip", c.MaxMappingsPerIP, "most data ports one client address holds at once, an IPv6 client by its /64 (0: no limit)")
	fs.DurationVar(&c.Keepalive, "keepalive", c.Keepalive, "TCP keepalive period on both legs of a session (negative: off)")
	fs.StringVar(&c.Metrics, "metrics", c.Metrics, "serve Prometheus /metrics and /healthz on this `ADDR:PORT`")
	fs.BoolVar(&c.DebugPprof, "debug-pprof", c.DebugPprof, "also serve Go's profiles (/debug/pprof/) on the --metrics address")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "on SIGTERM, how long transfers in progress may finish before sessions are ended")
	fs.StringVar(&c.DataPorts, "data-ports", c.DataPorts, "public data port range `LOW-HIGH`")
	fs.DurationVar(&c.DataConnectTimeout, "data-connect-timeout", c.DataConnectTimeout, "how long a data mapping waits for its transfer command")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "end a control session idle this long (not during a transfer)")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "bound on connecting to the upstream server")
	fs.IntVar(&c.MaxLine, "max-line", c.MaxLine, "longest control line accepted, in `bytes`")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&c.Backend, "backend", c.Backend, "kernel backend: auto (nftables when the kernel and the host firewall allow, else iptables), iptables, or nftables (netlink, kernel-expiring entries)")
	fs.StringVar(&c.IptablesPath, "iptables-path", c.IptablesPath, "iptables `binary`: iptables, iptables-nft, iptables-legacy or a path")
	fs.DurationVar(&c.RuleTimeout, "rule-timeout", c.RuleTimeout, "bound on one rule operation, xtables lock wait included")
	fs.BoolVar(&c.SNAT, "snat", c.SNAT, "give data connections the gateway's address towards the server as source")
	fs.Func("connmark", "conntrack mark `bit` that tags data flows pasvgate admitted (default 0x10000000)", func(v string) error {
		m, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return fmt.Errorf("want a 32-bit mask such as 0x10000000")
		}
		c.ConnMark = uint32(m)
		return nil
	})
	fs.StringVar(&c.HostFirewall, "host-firewall", c.HostFirewall, "auto: with the nftables backend, accept pasvgate's conntrack mark at the top of host forward chains that drop (see README); leave: never touch the host's chains")
	fs.StringVar(&c.TLS, "tls", c.TLS, "FTPS towards clients: off, allow (AUTH TLS offered) or require (no login before AUTH TLS); default allow with --tls-cert, else off")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM `file` of the certificate clients are shown, with its chain (re-read on SIGHUP)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM `file` of --tls-cert's private key (re-read on SIGHUP)")
	fs.BoolVar(&c.TLSRequireReuse, "tls-require-reuse", c.TLSRequireReuse, "refuse a client's protected data connection whose TLS session does not resume its control connection's")
	fs.Var(stringsFlag(&c.ListenTLS), "listen-tls", "`ADDR:PORT` to accept implicit FTPS on, TLS from the first byte (port 990 by convention; repeatable)")
	fs.StringVar(&c.UpstreamTLS, "upstream-tls", c.UpstreamTLS, "TLS towards the server: auto (when the client's control channel is TLS), always, or never (offload)")
	fs.StringVar(&c.UpstreamCA, "upstream-ca", c.UpstreamCA, "PEM `file` of the CAs that verify the server's certificate (default: the system's)")
	fs.StringVar(&c.UpstreamServerName, "upstream-server-name", c.UpstreamServerName, "`name` the server's certificate must carry (default: the host of --upstream)")
	fs.BoolVar(&c.UpstreamInsecure, "upstream-insecure", c.UpstreamInsecure, "accept any server certificate (logged as a warning)")
	fs.DurationVar(&c.JumpCheckInterval, "jump-check-interval", c.JumpCheckInterval, "how often an install re-checks the jumps into pasvgate's chains (0: every install)")
	return fs
}

// usageError is a configuration error: exit status 2.
type usageError struct{ error }

// Unwrap lets errors.Is see flag.ErrHelp through it (-h exits 0).
func (e usageError) Unwrap() error { return e.error }

// loadConfig parses args for `pasvgate run`: defaults, then the config file,
// then the flags given, then parse, which validates every value into the
// typed runConfig that everything after uses; then the TLS files.
func loadConfig(args []string) (*runConfig, error) {
	c, err := readConfig(args)
	if err != nil {
		return nil, err
	}
	rc, err := c.parse()
	if err != nil {
		return nil, err
	}
	if err := rc.loadTLS(); err != nil {
		return nil, err
	}
	return rc, nil
}

// readConfig is loadConfig without the validation, for `pasvgate rules`,
// which needs only the backend's settings from the same file.
func readConfig(args []string) (Config, error) {
	first := defaults()
	fs := runFlags(&first)
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return Config{}, usageError{err}
	}
	if fs.NArg() > 0 {
		return Config{}, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	flagged := func(fs *flag.FlagSet) (set bool) {
		fs.Visit(func(f *flag.Flag) { set = set || f.Name == "health-interval" })
		return set
	}
	if first.Config == "" {
		first.healthSet = flagged(fs)
		return first, nil
	}
	c := defaults()
	data, err := os.ReadFile(first.Config)
	if err != nil {
		return Config{}, usageError{fmt.Errorf("--config: %w", err)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty file (io.EOF) is a valid config that sets nothing.
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, usageError{fmt.Errorf("--config %s: %w", first.Config, err)}
	}
	var keys map[string]any
	_ = yaml.Unmarshal(data, &keys) // decoded above: it parses
	_, c.healthSet = keys["health-interval"]
	// The flags again, over the file's values: a flag always wins.
	fs = runFlags(&c)
	fs.SetOutput(new(bytes.Buffer))
	if err := fs.Parse(args); err != nil {
		return Config{}, usageError{err}
	}
	c.healthSet = c.healthSet || flagged(fs)
	return c, nil
}

// newLogger makes the process logger. Its level can be changed later
// through level (SIGHUP).
func newLogger(l logSpec, level *slog.LevelVar) *slog.Logger {
	return slog.New(newHandler(l, level, os.Stderr))
}

// newServiceLogger is newLogger for `pasvgate run`, whose info lines are
// held and written out together (logWriter). The caller must Close the
// logWriter before it exits.
func newServiceLogger(l logSpec, level *slog.LevelVar) (*slog.Logger, *logWriter) {
	w := newLogWriter(os.Stderr)
	return slog.New(bufferedHandler{newHandler(l, level, w), w}), w
}

// newHandler is the handler of --log-format and --log-level, writing to
// out.
func newHandler(l logSpec, level *slog.LevelVar, out io.Writer) slog.Handler {
	level.Set(l.level)
	opts := &slog.HandlerOptions{Level: level}
	if l.json {
		return slog.NewJSONHandler(out, opts)
	}
	return slog.NewTextHandler(out, opts)
}
