package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pasvgate/pasvgate/test/netns"
)

// syscallGroups returns systemd's system call sets (@system-service, ...),
// from systemd-analyze syscall-filter, with nested sets left as "@name".
var syscallGroups = sync.OnceValues(func() (map[string][]string, error) {
	out, err := exec.Command("systemd-analyze", "syscall-filter", "--no-pager").Output()
	if err != nil {
		return nil, err
	}
	g := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "@"):
			cur = strings.TrimSpace(l)
		case strings.HasPrefix(l, " ") && cur != "":
			if s := strings.TrimSpace(l); s != "" && !strings.HasPrefix(s, "#") {
				g[cur] = append(g[cur], s)
			}
		}
	}
	return g, nil
})

// expandSyscalls resolves names and @sets into system calls.
func expandSyscalls(t *testing.T, names []string) map[string]bool {
	t.Helper()
	groups, err := syscallGroups()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	set := map[string]bool{}
	var add func(n string)
	add = func(n string) {
		if !strings.HasPrefix(n, "@") {
			set[n] = true
			return
		}
		members, ok := groups[n]
		if !ok {
			t.Fatalf("systemd knows no system call set %s", n)
		}
		for _, m := range members {
			add(m)
		}
	}
	for _, n := range names {
		add(n)
	}
	return set
}

// traced is what strace saw processes do.
type traced struct {
	syscalls map[string]int  // name -> count
	families map[string]bool // of socket(2)
	writes   []string        // opens for writing: the path and flags
	creates  []string        // O_CREAT opens for reading: the path
}

var (
	syscallRE = regexp.MustCompile(`^([a-z_0-9]+)\(`)
	socketRE  = regexp.MustCompile(`^socket\((AF_[A-Z0-9]+)`)
	openRE    = regexp.MustCompile(`^open(?:at)?\((?:AT_FDCWD, )?"([^"]*)", ([A-Z_|]+)`)
)

// readTrace reads strace -ff output files dir/name.PID. In a file whose
// process started as setpriv, the calls before its exec of pasvgate are
// setpriv's (systemd does that part itself) and are skipped.
func readTrace(t *testing.T, dir string) traced {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.*"))
	if len(files) == 0 {
		t.Fatal("strace wrote nothing")
	}
	tr := traced{syscalls: map[string]int{}, families: map[string]bool{}}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) > 0 && strings.HasPrefix(lines[0], "execve(") && strings.Contains(lines[0], "setpriv") {
			i := slices.IndexFunc(lines[1:], func(l string) bool { return strings.HasPrefix(l, "execve(") })
			if i < 0 {
				continue
			}
			lines = lines[i+1:]
		}
		for _, l := range lines {
			m := syscallRE.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			tr.syscalls[m[1]]++
			if m := socketRE.FindStringSubmatch(l); m != nil {
				tr.families[m[1]] = true
			}
			if m := openRE.FindStringSubmatch(l); m != nil {
				flags := m[2]
				switch {
				case strings.Contains(flags, "O_WRONLY") || strings.Contains(flags, "O_RDWR") || strings.Contains(flags, "O_TRUNC"):
					tr.writes = append(tr.writes, m[1]+" "+flags)
				case strings.Contains(flags, "O_CREAT"):
					tr.creates = append(tr.creates, m[1])
				}
			}
		}
	}
	return tr
}

// TestSyscallsAllowedByUnit traces pasvgate and every iptables binary it
// runs (strace -f), as nobody with the unit's capabilities, through the
// same life as TestLeastPrivilege, and checks what they did against the
// unit's sandbox: every system call allowed by its SystemCallFilter lines
// (expanded by systemd-analyze), every socket of a family in
// RestrictAddressFamilies, and no file opened for writing anywhere that
// ProtectSystem=strict, PrivateTmp and PrivateDevices leave read-only.
func TestSyscallsAllowedByUnit(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, "setpriv", "strace", "systemd-analyze")
	pasvgate, _ := build(t)
	u := readUnit(t, "systemd/pasvgate.service")
	var allow, deny []string
	for _, v := range u.values("Service", "SystemCallFilter") {
		if rest, ok := strings.CutPrefix(v, "~"); ok {
			deny = append(deny, strings.Fields(rest)...)
		} else {
			allow = append(allow, strings.Fields(v)...)
		}
	}
	if len(allow) == 0 {
		t.Fatal("the unit has no allow-list SystemCallFilter")
	}
	// systemd always allows @default with an allow list.
	allowed := expandSyscalls(t, append(allow, "@default"))
	for s := range expandSyscalls(t, deny) {
		delete(allowed, s)
	}
	families := map[string]bool{}
	for _, f := range strings.Fields(u.one(t, "Service", "RestrictAddressFamilies")) {
		families[f] = true
	}

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
			dir := sharedDir(t)
			exercise(t, l, s, dir)
			tr := readTrace(t, dir)
			if b.family != familyNftables && tr.syscalls["execve"] < 3 {
				t.Fatalf("strace saw %d execs: it did not follow the iptables binaries", tr.syscalls["execve"])
			}
			var names []string
			for n := range tr.syscalls {
				names = append(names, n)
				if !allowed[n] {
					t.Errorf("system call %s (%d times) is not allowed by the unit's SystemCallFilter", n, tr.syscalls[n])
				}
			}
			slices.Sort(names)
			t.Logf("%d system calls: %s", len(names), strings.Join(names, " "))
			for f := range tr.families {
				if !families[f] {
					t.Errorf("a socket of family %s, not in RestrictAddressFamilies", f)
				}
			}
			writable := []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/tmp/", "/var/tmp/"}
			for _, w := range tr.writes {
				if !slices.ContainsFunc(writable, func(p string) bool { return strings.HasPrefix(w, p) }) {
					t.Errorf("opened for writing, read-only under the unit: %s", w)
				}
			}
			// O_CREAT without write access succeeds on a read-only file
			// system when the file is there: legacy's lock, which
			// xtables-lock.tmpfiles makes sure of.
			for _, c := range tr.creates {
				if c != lock {
					t.Errorf("opened with O_CREAT: %s (read-only under the unit, so it must exist beforehand)", c)
				}
			}
			for _, n := range []string{"mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "symlink", "symlinkat", "link", "linkat"} {
				if tr.syscalls[n] > 0 {
					t.Errorf("%s: a file system change, read-only under the unit", n)
				}
			}
		})
	}
}
