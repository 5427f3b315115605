package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/nat"
	"github.com/pasvgate/pasvgate/proxy"
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
	Upstream           stringList    `yaml:"upstream"`
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

	// tls is what the TLS keys name, read and parsed by loadTLS.
	tls tlsMaterial
}

// defaults are the values README.md promises.
func defaults() Config {
	return Config{
		Listen:             []string{":21"},
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
	}
}

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

// listFlag is a repeatable flag. The first use on the command line replaces
// the list from the config file instead of adding to it.
type listFlag struct {
	list *[]string
	set  bool
}

// String implements flag.Value.
func (l *listFlag) String() string {
	if l.list == nil {
		return ""
	}
	return strings.Join(*l.list, ",")
}

// Set implements flag.Value.
func (l *listFlag) Set(v string) error {
	if !l.set {
		*l.list = nil
		l.set = true
	}
	*l.list = append(*l.list, v)
	return nil
}

// runFlags binds the flags of `pasvgate run` to c.
func runFlags(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&c.Config, "config", c.Config, "YAML config `file`; flags override its keys")
	fs.Var(&listFlag{list: &c.Listen}, "listen", "`ADDR:PORT` to accept FTP control connections on (repeatable)")
	fs.Var(&listFlag{list: (*[]string)(&c.Upstream)}, "upstream", "the FTP server's control `ADDR:PORT` (reverse mode); give it twice, once per family, for IPv4 and IPv6 clients")
	fs.StringVar(&c.Intercept, "intercept", c.Intercept, "transparent mode: install interception of FTP arriving on this LAN `interface`")
	fs.StringVar(&c.InterceptMethod, "intercept-method", c.InterceptMethod, "transparent mode: how connections are intercepted: redirect or tproxy")
	fs.Var(&listFlag{list: (*[]string)(&c.AllowDest)}, "allow-dest", "transparent mode: servers clients may reach: public, a `NETWORK` or an address (repeatable; default public)")
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
	fs.Var(&listFlag{list: &c.ListenTLS}, "listen-tls", "`ADDR:PORT` to accept implicit FTPS on, TLS from the first byte (port 990 by convention; repeatable)")
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
// then the flags given, then validation.
func loadConfig(args []string) (Config, error) {
	c, err := readConfig(args)
	if err != nil {
		return Config{}, err
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	if err := c.loadTLS(); err != nil {
		return Config{}, err
	}
	return c, nil
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
	if first.Config == "" {
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
	// The flags again, over the file's values: a flag always wins.
	fs = runFlags(&c)
	fs.SetOutput(new(bytes.Buffer))
	if err := fs.Parse(args); err != nil {
		return Config{}, usageError{err}
	}
	return c, nil
}

// validate checks every value, naming the flag of the first bad one.
func (c Config) validate() error {
	bad := func(flag string, format string, a ...any) error {
		return usageError{fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...))}
	}
	if len(c.Listen) == 0 {
		return bad("listen", "at least one address is needed")
	}
	var listenFamilies []netip.Addr
	specs := make([]listenSpec, 0, len(c.Listen))
	for _, l := range c.Listen {
		sp, err := parseListen(l)
		if err != nil {
			return bad("listen", "%q: %v", l, err)
		}
		specs = append(specs, sp)
		if !sp.bothFamilies {
			listenFamilies = append(listenFamilies, sp.sockets[0].addr.Addr())
		}
		// The interception leads to one port, in both families.
		if c.Intercept != "" && sp.sockets[0].addr.Port() != specs[0].sockets[0].addr.Port() {
			return bad("listen", "with --intercept every --listen address needs the same port (%q and %q differ)", c.Listen[0], l)
		}
	}
	for _, l := range c.ListenTLS {
		sp, err := parseListen(l)
		if err != nil {
			return bad("listen-tls", "%q: %v", l, err)
		}
		specs = append(specs, sp)
	}
	if err := c.validateTLS(); err != nil {
		return err
	}
	if err := checkListenOverlap(specs); err != nil {
		return bad("listen", "%v", err)
	}
	if err := c.validateUpstream(); err != nil {
		return err
	}
	for _, u := range c.Upstream {
		if up, err := netip.ParseAddrPort(u); err == nil {
			if l, loop := upstreamIsListener(specs, up, nil); loop {
				return bad("upstream", "%s is pasvgate's own --listen %s: every session would dial pasvgate again", u, l)
			}
		}
	}
	if c.PublicAddr != "" {
		a, err := netip.ParseAddr(c.PublicAddr)
		if err != nil {
			return bad("public-addr", "%q is not an IP address", c.PublicAddr)
		}
		if !a.Is4() {
			// 227 can carry only IPv4 (RFC 959); EPSV clients use the
			// address they dialed, whatever this says.
			return bad("public-addr", "%s: 227 replies carry IPv4 only", a)
		}
		if !a.IsGlobalUnicast() && !a.IsLoopback() {
			// 0.0.0.0 in a 227 tells the client nothing it can dial,
			// and no DNAT can match it; multicast and broadcast neither.
			return bad("public-addr", "%s is not a unicast address a client can connect to", a)
		}
		if len(listenFamilies) == len(c.Listen) {
			v4 := false
			for _, l := range listenFamilies {
				v4 = v4 || l.Is4() // [::]:P is IPv6 only
			}
			if !v4 {
				return bad("public-addr", "%s is IPv4 but every --listen address is IPv6", a)
			}
		}
	}
	if c.PublicIface != "" {
		if c.PublicAddr != "" {
			return bad("public-iface", "give --public-addr or --public-iface, not both")
		}
		if !rules.ValidIface(c.PublicIface) {
			return bad("public-iface", "%q is not an interface name", c.PublicIface)
		}
	}
	if c.MaxSessions < 0 || c.MaxSessionsPerIP < 0 {
		return bad("max-sessions", "limits must not be negative")
	}
	if c.MaxMappingsPerIP < 0 {
		return bad("max-mappings-per-ip", "must not be negative")
	}
	if c.LoginTimeout < 0 {
		return bad("login-timeout", "must not be negative")
	}
	if c.DrainTimeout < 0 {
		return bad("drain-timeout", "must not be negative")
	}
	if c.DebugPprof && c.Metrics == "" {
		return bad("debug-pprof", "needs --metrics")
	}
	if c.Metrics != "" {
		if _, err := parseListen(c.Metrics); err != nil {
			return bad("metrics", "%q: %v", c.Metrics, err)
		}
	}
	pr, err := nat.ParsePortRange(c.DataPorts)
	if err != nil {
		return bad("data-ports", "%v", err)
	}
	if pr.Low < 1024 {
		return bad("data-ports", "%v reaches below 1024: data ports must be unprivileged", pr)
	}
	for name, d := range map[string]time.Duration{
		"data-connect-timeout": c.DataConnectTimeout, "idle-timeout": c.IdleTimeout,
		"dial-timeout": c.DialTimeout, "rule-timeout": c.RuleTimeout,
	} {
		if d <= 0 {
			return bad(name, "must be positive, got %v", d)
		}
	}
	if c.MaxLine < 512 || c.MaxLine > 1<<20 {
		// RFC 959 replies and commands fit in far less, but RFC 1123
		// asks for at least 512 bytes of tolerance.
		return bad("max-line", "%d is outside 512-1048576", c.MaxLine)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return bad("log-format", "%q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return bad("log-level", "%v", err)
	}
	if c.Backend != backendAuto && c.Backend != backendIptables && c.Backend != backendNftables {
		return bad("backend", "%q: want auto, iptables or nftables", c.Backend)
	}
	if c.IptablesPath == "" {
		return bad("iptables-path", "must not be empty")
	}
	if c.ConnMark == 0 {
		return bad("connmark", "must have at least one bit set")
	}
	if c.JumpCheckInterval < 0 {
		return bad("jump-check-interval", "must not be negative")
	}
	if c.HostFirewall != hostFirewallAuto && c.HostFirewall != hostFirewallLeave {
		return bad("host-firewall", "%q: want auto or leave", c.HostFirewall)
	}
	return nil
}

// validateUpstream checks the mode: reverse (one upstream, or one per
// family) or transparent (none, with an interception method).
func (c Config) validateUpstream() error {
	bad := func(flag string, format string, a ...any) error {
		return usageError{fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...))}
	}
	if c.InterceptMethod != rules.Redirect && c.InterceptMethod != rules.TProxy {
		return bad("intercept-method", "%q: want redirect or tproxy", c.InterceptMethod)
	}
	if len(c.Upstream) == 0 {
		// Transparent mode: each session's server is where the intercepted
		// connection was going.
		if c.Intercept != "" && !rules.ValidIface(c.Intercept) {
			return bad("intercept", "%q is not an interface name", c.Intercept)
		}
		if _, err := proxy.ParseDestPolicy(c.AllowDest); err != nil {
			return bad("allow-dest", "%v", err)
		}
		return nil
	}
	if c.Intercept != "" {
		return bad("intercept", "transparent mode takes no --upstream")
	}
	if len(c.AllowDest) > 0 {
		return bad("allow-dest", "transparent mode only: in reverse mode the server is --upstream")
	}
	if len(c.Upstream) > 2 {
		return bad("upstream", "at most two: one IPv4 and one IPv6 server")
	}
	var fams []bool
	for _, u := range c.Upstream {
		host, port, err := net.SplitHostPort(u)
		if err != nil {
			return bad("upstream", "%q: %v", u, err)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return bad("upstream", "%q: bad port", u)
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			if len(c.Upstream) > 1 {
				return bad("upstream", "%q: with two upstreams each must be an IP address", u)
			}
			continue
		}
		fams = append(fams, a.Unmap().Is4())
	}
	if len(fams) == 2 && fams[0] == fams[1] {
		return bad("upstream", "two upstreams of one family: give one IPv4 and one IPv6")
	}
	return nil
}

// upstreams splits the configured upstreams into the IPv4 one (or the only
// one) and the IPv6 one.
func (c Config) upstreams() (main, v6 string) {
	for _, u := range c.Upstream {
		host, _, _ := net.SplitHostPort(u)
		if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !a.Is4In6() && len(c.Upstream) == 2 {
			v6 = u
		} else {
			main = u
		}
	}
	if main == "" {
		main = v6
	}
	return main, v6
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// newLogger makes the process logger from the config. Its level can be
// changed later through level (SIGHUP).
func newLogger(c Config, level *slog.LevelVar) *slog.Logger {
	return slog.New(newHandler(c, level, os.Stderr))
}

// newServiceLogger is newLogger for `pasvgate run`, whose info lines are
// held and written out together (logWriter). The caller must Close the
// logWriter before it exits.
func newServiceLogger(c Config, level *slog.LevelVar) (*slog.Logger, *logWriter) {
	w := newLogWriter(os.Stderr)
	return slog.New(bufferedHandler{newHandler(c, level, w), w}), w
}

// newHandler is the handler of --log-format and --log-level, writing to
// out.
func newHandler(c Config, level *slog.LevelVar, out io.Writer) slog.Handler {
	l, _ := parseLevel(c.LogLevel)
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.NewJSONHandler(out, opts)
	}
	return slog.NewTextHandler(out, opts)
}
