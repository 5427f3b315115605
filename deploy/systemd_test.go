package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unit is a systemd unit file with its drop-ins, as key=value entries in
// file order.
type unit []unitEntry

type unitEntry struct {
	file, section, key, value string
	line                      int
}

// readUnit parses a unit file and drop-ins, in order (systemd.syntax(7):
// comments, sections, continuation lines).
func readUnit(t testing.TB, paths ...string) unit {
	t.Helper()
	var u unit
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		section, n, cont := "", 0, ""
		for sc.Scan() {
			n++
			line := strings.TrimSpace(sc.Text())
			if cont == "" && (line == "" || line[0] == '#' || line[0] == ';') {
				continue
			}
			if strings.HasSuffix(line, `\`) {
				cont += strings.TrimSuffix(line, `\`) + " "
				continue
			}
			line, cont = cont+line, ""
			if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
				section = line[1 : len(line)-1]
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value in a section: %q", p, n, line)
			}
			u = append(u, unitEntry{p, section, strings.TrimSpace(k), strings.TrimSpace(v), n})
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// values returns every value of a key, in order (an empty one resets a
// list setting in systemd).
func (u unit) values(section, key string) []string {
	var v []string
	for _, e := range u {
		if e.section == section && e.key == key {
			v = append(v, e.value)
		}
	}
	return v
}

// one returns the single value of a key, failing if there is not exactly one.
func (u unit) one(t testing.TB, section, key string) string {
	t.Helper()
	v := u.values(section, key)
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// caps returns the capabilities a capability setting grants, merged over
// all its lines, as setpriv names them (CAP_NET_ADMIN -> net_admin).
func (u unit) caps(section, key string) []string {
	var cs []string
	for _, v := range u.values(section, key) {
		for _, c := range strings.Fields(v) {
			cs = append(cs, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	slices.Sort(cs)
	return slices.Compact(cs)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestSystemdUnit checks the security-relevant settings of the unit and of
// its legacy drop-in, and that they grant exactly the capabilities
// TestLeastPrivilege proves.
func TestSystemdUnit(t *testing.T) {
	u := readUnit(t, "systemd/pasvgate.service")
	want := map[string]string{
		"Type":                    "notify",
		"User":                    "pasvgate",
		"Group":                   "pasvgate",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelTunables":   "yes",
		"RestrictSUIDSGID":        "yes",
		"SystemCallArchitectures": "native",
		"Restart":                 "on-failure",
		"ExecStart":               "/usr/local/bin/pasvgate run --config /etc/pasvgate/pasvgate.yaml",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"ExecStopPost":            "/usr/local/bin/pasvgate rules flush",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("[Service] %s=%s, want %s", k, got, v)
		}
	}
	if got := sorted(strings.Fields(u.one(t, "Service", "RestrictAddressFamilies"))); !slices.Equal(got, []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}) {
		t.Errorf("RestrictAddressFamilies=%v", got)
	}
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if got := u.caps("Service", k); !slices.Equal(got, sorted(capsNFT)) {
			t.Errorf("%s grants %v, want exactly %v", k, got, capsNFT)
		}
	}
	// Settings that would break it: capabilities over a private user
	// namespace instead of the host's network; /proc/net hidden.
	for k, bad := range map[string]string{"PrivateUsers": "yes", "ProcSubset": "pid", "PrivateNetwork": "yes", "DynamicUser": "yes"} {
		for _, v := range u.values("Service", k) {
			if v == bad || v == "true" {
				t.Errorf("%s=%s", k, v)
			}
		}
	}
	if u.values("Install", "WantedBy") == nil {
		t.Error("no [Install] WantedBy")
	}
	// The command lines use only flags pasvgate has.
	flags := runFlags(t)
	for _, k := range []string{"ExecStart", "ExecStopPost"} {
		for _, f := range flagsIn(strings.Fields(u.one(t, "Service", k))) {
			if !flags[f] {
				t.Errorf("%s uses --%s, which pasvgate run -h does not list", k, f)
			}
		}
	}

	// The legacy drop-in adds exactly what legacy needs and flushes legacy.
	d := readUnit(t, "systemd/legacy.conf")
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if got := d.caps("Service", k); !slices.Equal(got, sorted(capsLegacyExtra)) {
			t.Errorf("legacy.conf: %s adds %v, want exactly %v", k, got, capsLegacyExtra)
		}
	}
	if got := d.values("Service", "ExecStopPost"); !slices.Equal(got, []string{"", "/usr/local/bin/pasvgate rules flush --iptables-path iptables-legacy"}) {
		t.Errorf("legacy.conf: ExecStopPost %q, want it reset to a flush of iptables-legacy", got)
	}
	for _, e := range d {
		if e.section != "Service" {
			t.Errorf("legacy.conf:%d: [%s] in a drop-in meant for [Service] only", e.line, e.section)
		}
	}
}

// TestSystemdVerify runs systemd-analyze verify on the unit and its
// drop-in, with the binary paths pointed at the built pasvgate (verify
// checks that ExecStart's binary exists; nothing is installed on the
// host). Warnings count as failures: verify exits 0 on an unknown key.
func TestSystemdVerify(t *testing.T) {
	requireTools(t, "systemd-analyze")
	pasvgate, _ := build(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "pasvgate.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{
		"systemd/pasvgate.service": "pasvgate.service",
		"systemd/legacy.conf":      "pasvgate.service.d/legacy.conf",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/pasvgate", pasvgate))
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "pasvgate.service")).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSysusersTmpfiles applies the sysusers.d and tmpfiles.d entries to an
// empty root directory and checks what they make.
func TestSysusersTmpfiles(t *testing.T) {
	requireTools(t, "systemd-sysusers", "systemd-tmpfiles")
	if os.Geteuid() != 0 {
		t.Skip("systemd-tmpfiles sets ownership: needs root")
	}
	root := t.TempDir()
	for _, d := range []string{"etc", "run"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Given --root, these tools read a relative path under it.
	sysusers, _ := filepath.Abs("systemd/pasvgate.sysusers")
	tmpfiles, _ := filepath.Abs("systemd/xtables-lock.tmpfiles")
	if out, err := exec.Command("systemd-sysusers", "--root="+root, sysusers).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	user := readUnit(t, "systemd/pasvgate.service").one(t, "Service", "User")
	var found bool
	for _, l := range strings.Split(string(passwd), "\n") {
		f := strings.Split(l, ":")
		if len(f) == 7 && f[0] == user {
			found = true
			if f[6] != "/usr/sbin/nologin" || f[2] == "0" {
				t.Errorf("user entry %q: want a non-root uid and no login shell", l)
			}
		}
	}
	if !found {
		t.Fatalf("systemd-sysusers made no user %q:\n%s", user, passwd)
	}

	if out, err := exec.Command("systemd-tmpfiles", "--create", "--root="+root, tmpfiles).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	st, err := os.Stat(filepath.Join(root, "run/xtables.lock"))
	if err != nil {
		t.Fatal(err)
	}
	// As iptables-legacy makes it, so root's iptables keeps working.
	if st.Mode() != 0o600 || !st.Mode().IsRegular() {
		t.Errorf("the xtables lock is %v, want a regular file, mode 0600", st.Mode())
	}
}
