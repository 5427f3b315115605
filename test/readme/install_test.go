package readme

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// sandbox is a private mount namespace whose /etc, /usr/local/bin, /run
// and /usr/sbin are overlays on the host's, with their upper layers in a directory of
// the test's: the README's install steps write there, and the host's own
// files never change. A process holds the namespace; commands enter it
// with nsenter.
type sandbox struct {
	holder *exec.Cmd
	mnt    string // /proc/PID/ns/mnt of the holder
	root   string // the repository's top
}

// overlaid are the directories the install steps write to.
// /usr/sbin is for the Dockerfile's setcap lines, which give the
// iptables binaries file capabilities.
var overlaid = []string{"/etc", "/usr/local/bin", "/run", "/usr/sbin"}

func newSandbox(t *testing.T, root string) *sandbox {
	t.Helper()
	dir := t.TempDir()
	script := "set -e\n"
	for i, d := range overlaid {
		up, work := filepath.Join(dir, fmt.Sprint(i), "upper"), filepath.Join(dir, fmt.Sprint(i), "work")
		for _, x := range []string{up, work} {
			if err := os.MkdirAll(x, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// The merged directory takes the upper layer's mode: keep the
		// host's, so that the service user can reach what is below.
		if st, err := os.Stat(d); err == nil {
			if err := os.Chmod(up, st.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
		}
		script += fmt.Sprintf("mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s\n", d, up, work, d)
	}
	script += "echo ready\nexec sleep 600\n"
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	read := make(chan struct{})
	go func() {
		defer close(read)
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line == "ready\n"
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		// The reader ends when the holder's end of the pipe closes,
		// and Wait may close the pipe only after that.
		_ = cmd.Process.Kill()
		<-read
		_ = cmd.Wait()
	})
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("the sandbox's overlays could not be mounted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sandbox did not come up within 10s")
	}
	return &sandbox{holder: cmd, mnt: fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid), root: root}
}

// enter is the argv prefix that runs a program inside the sandbox.
func (s *sandbox) enter() []string { return []string{"nsenter", "--mount=" + s.mnt, "--"} }

// sh runs a shell line inside the sandbox, on the host's network, from
// the repository's top, and returns its combined output and exit status.
func (s *sandbox) sh(t *testing.T, line string) (string, int) {
	t.Helper()
	// make build may compile everything afresh (its -trimpath build is
	// cached apart from go test's) on a machine shared with other builds.
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	argv := append(s.enter(), "sh", "-c", "cd "+s.root+" && "+line)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), exitStatus(t, line, err)
}

// mustSh is sh that wants exit 0.
func (s *sandbox) mustSh(t *testing.T, line string) string {
	t.Helper()
	out, code := s.sh(t, line)
	if code != 0 {
		t.Fatalf("%s (in the sandbox): exit %d:\n%s", line, code, out)
	}
	return out
}

// stat returns "MODE USER GROUP" of a path in the sandbox.
func (s *sandbox) stat(t *testing.T, path string) string {
	t.Helper()
	return strings.TrimSpace(s.mustSh(t, "stat -c '%a %U %G' "+path))
}

// unitService reads the [Service] section of a unit file: each key's
// values in order (systemd.syntax(7): comments, continuation lines).
func unitService(t *testing.T, text string) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	section, cont := "", ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if cont == "" && (l == "" || l[0] == '#' || l[0] == ';') {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cont += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		l, cont = cont+l, ""
		if strings.HasPrefix(l, "[") {
			section = strings.Trim(l, "[]")
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && section == "Service" {
			m[strings.TrimSpace(k)] = append(m[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return m
}

// unitArgv splits an Exec line of the unit. The unit's lines are plain
// words: anything systemd would expand or unquote is refused, so that
// the test runs what systemd would.
func unitArgv(t *testing.T, key, line string) []string {
	t.Helper()
	if strings.ContainsAny(line, `"'$%\;`) || strings.HasPrefix(line, "-") || strings.HasPrefix(line, "@") {
		t.Fatalf("%s=%s: quoting, specifiers or prefixes the test does not interpret", key, line)
	}
	return strings.Fields(line)
}

// caps turns capability settings ("CAP_NET_ADMIN CAP_NET_BIND_SERVICE")
// into setpriv's form ("-all,+net_admin,+net_bind_service").
func caps(values []string) string {
	s := "-all"
	for _, v := range values {
		for _, c := range strings.Fields(v) {
			s += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
	}
	return s
}

// notify listens where sd_notify messages go, as systemd does for a
// Type=notify unit, in a directory the service user can reach.
func notify(t *testing.T) (string, <-chan string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "rdm-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			select {
			case msgs <- string(buf[:n]):
			default:
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return path, msgs
}

func expectNotify(t *testing.T, msgs <-chan string, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-msgs:
			if slices.Contains(strings.Split(m, "\n"), want) {
				return
			}
		case <-timeout:
			t.Fatalf("no sd_notify %s within 10s", want)
		}
	}
}

// uidOf returns the uid of /proc/PID/status's real uid.
func uidOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return ""
}

// image is what the test needs of the Dockerfile's final stage.
type image struct {
	entry, cmd []string // ENTRYPOINT and CMD, in exec form
	user       string   // USER, uid:gid
	setcaps    []string // the setcap commands of its RUN lines
}

var setcapRE = regexp.MustCompile(`setcap \S+ /\S+`)

// dockerImage reads the final stage of the Dockerfile.
func dockerImage(t *testing.T, root string) image {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy/container/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Continuation lines joined, comments dropped.
	text := regexp.MustCompile(`(?m)^\s*#.*\n`).ReplaceAllString(string(b), "")
	text = strings.ReplaceAll(text, "\\\n", " ")
	var im image
	for _, l := range strings.Split(text, "\n") {
		kw, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		switch kw {
		case "FROM":
			// A new stage: what came before belongs to another image.
			im = image{}
		case "ENTRYPOINT", "CMD":
			dst := &im.entry
			if kw == "CMD" {
				dst = &im.cmd
			}
			if err := json.Unmarshal([]byte(v), dst); err != nil {
				t.Fatalf("Dockerfile: %s %s: not in exec form: %v", kw, v, err)
			}
		case "USER":
			im.user = v
		case "RUN":
			im.setcaps = append(im.setcaps, setcapRE.FindAllString(v, -1)...)
		}
	}
	if len(im.entry) == 0 || len(im.cmd) == 0 || !strings.Contains(im.user, ":") || len(im.setcaps) == 0 {
		t.Fatalf("Dockerfile: final stage has ENTRYPOINT %q, CMD %q, USER %q, setcap %q: want all, USER as uid:gid", im.entry, im.cmd, im.user, im.setcaps)
	}
	return im
}

// TestInstall runs the README's install steps (in a sandbox that keeps
// them off the host's files), then what they installed as systemd, the
// README's setpriv line and the container would run it, on the README's
// gateway: the systemd unit's ExecStart and ExecStopPost, the setpriv
// command, and the Dockerfile's ENTRYPOINT and CMD.
func TestInstall(t *testing.T) {
	lab.RequireRoot(t)
	for _, tool := range []string{"unshare", "nsenter", "setpriv", "systemd-sysusers", "systemd-tmpfiles", "make", "git", "stat", "getent"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	t.Parallel()
	_, root := readmeDoc(t)
	// The installed config is deploy/examples/gateway-appliance.yaml: the
	// README's gateway, which lab.New builds.
	l, srv := gatewayLab(t, lab.Options{})
	sb := newSandbox(t, root)
	var uid string

	ok := t.Run("install", func(t *testing.T) {
		for _, key := range []string{cmdMakeBuild, cmdInstallBin, cmdInstallSysuser, cmdSysusers, cmdInstallEtcDir, cmdInstallConfig, cmdInstallUnit} {
			sb.mustSh(t, readmeCommand(t, key).raw)
		}
		if !staticELF(t, filepath.Join(root, "bin/pasvgate")) {
			t.Errorf("%s: bin/pasvgate is not static", cmdMakeBuild)
		}
		if out := sb.mustSh(t, "/usr/local/bin/pasvgate version"); !strings.HasPrefix(out, "pasvgate ") {
			t.Errorf("the installed binary says %q", out)
		}
		pw := strings.Split(strings.TrimSpace(sb.mustSh(t, "getent passwd pasvgate")), ":")
		if len(pw) != 7 || pw[2] == "0" || pw[6] != "/usr/sbin/nologin" {
			t.Fatalf("%s made the user %q, want a system user with no login shell", cmdSysusers, pw)
		}
		uid = pw[2]
		for path, want := range map[string]string{
			"/usr/local/bin/pasvgate":              "755 root root",
			"/etc/sysusers.d/pasvgate.conf":        "644 root root",
			"/etc/pasvgate":                        "750 root pasvgate",
			"/etc/pasvgate/pasvgate.yaml":          "640 root pasvgate",
			"/etc/systemd/system/pasvgate.service": "644 root root",
		} {
			if got := sb.stat(t, path); got != want {
				t.Errorf("%s: %s, want %s", path, got, want)
			}
		}
		if _, err := os.Stat("/etc/pasvgate"); err == nil {
			t.Log("note: the host has its own /etc/pasvgate; the sandbox's is an overlay on it")
		}
	})
	if !ok {
		return
	}

	ok = t.Run("systemd-unit", func(t *testing.T) {
		// systemctl enable --now: what systemd would run, read from the
		// unit the install step put in place.
		u := unitService(t, sb.mustSh(t, "cat /etc/systemd/system/pasvgate.service"))
		one := func(k string) string {
			if len(u[k]) != 1 {
				t.Fatalf("[Service] %s: %q, want one value", k, u[k])
			}
			return u[k][0]
		}
		wrap := []string{"setpriv", "--reuid=" + one("User"), "--regid=" + one("Group"), "--init-groups",
			"--inh-caps=" + caps(u["AmbientCapabilities"]), "--ambient-caps=" + caps(u["AmbientCapabilities"]),
			"--bounding-set=" + caps(u["CapabilityBoundingSet"])}
		if one("NoNewPrivileges") == "yes" {
			wrap = append(wrap, "--no-new-privs")
		}
		if one("Type") != "notify" {
			t.Fatalf("Type=%s: the test drives a notify unit", one("Type"))
		}
		path, msgs := notify(t)
		startArgv := unitArgv(t, "ExecStart", one("ExecStart"))
		argv := append(append(append([]string{"NOTIFY_SOCKET=" + path}, sb.enter()...), wrap...), startArgv...)
		p, err := l.Start(l.GW, "env", argv...)
		if err != nil {
			t.Fatal(err)
		}
		waitStarted(t, p, "ExecStart="+one("ExecStart"))
		expectNotify(t, msgs, "READY=1")
		if got := uidOf(t, p.Pid()); got != uid {
			t.Errorf("ExecStart runs as uid %s, want pasvgate's %s", got, uid)
		}
		healthz(t, l, l.GW, "127.0.0.1:9121")
		download(t, l, srv, lab.GWPublicAddr, false, false)
		stop(t, p, "ExecStart", 100*time.Second)
		expectNotify(t, msgs, "STOPPING=1")
		// ExecStopPost, run the same way: every rule and chain goes.
		post := unitArgv(t, "ExecStopPost", one("ExecStopPost"))
		if out, err := l.Exec(t.Context(), l.GW, "env", append(append(sb.enter(), wrap...), post...)...); err != nil {
			t.Fatalf("ExecStopPost=%s: %v\n%s", one("ExecStopPost"), err, out)
		}
		checkNoMappings(t, l, l.GW)
		if st := kernelState(t, l, l.GW); strings.Contains(strings.ToLower(st), "pasvgate") {
			t.Fatalf("after ExecStopPost, pasvgate's rules, chains or tables are left:\n%s", st)
		}
	})
	if !ok {
		return
	}

	t.Run("legacy", func(t *testing.T) {
		for _, key := range []string{cmdInstallLegacy, cmdInstallLock, cmdTmpfiles} {
			sb.mustSh(t, readmeCommand(t, key).raw)
		}
		for path, want := range map[string]string{
			"/etc/systemd/system/pasvgate.service.d/legacy.conf": "644 root root",
			"/etc/tmpfiles.d/xtables-lock.conf":                  "644 root root",
			"/run/xtables.lock":                                  "600 root root",
		} {
			if got := sb.stat(t, path); got != want {
				t.Errorf("%s: %s, want %s", path, got, want)
			}
		}
	})

	ok = t.Run("setpriv", func(t *testing.T) {
		c := readmeCommand(t, cmdSetpriv)
		p, err := l.Start(l.GW, "nsenter", append(sb.enter()[1:], "sh", "-c", "exec "+c.raw)...)
		if err != nil {
			t.Fatal(err)
		}
		waitStarted(t, p, "the setpriv command")
		if got := uidOf(t, p.Pid()); got != uid {
			t.Errorf("the setpriv command runs pasvgate as uid %s, want pasvgate's %s", got, uid)
		}
		healthz(t, l, l.GW, "127.0.0.1:9121")
		download(t, l, srv, lab.GWPublicAddr, false, false)
		stop(t, p, "the setpriv command", 100*time.Second)
		checkNoMappings(t, l, l.GW)
	})
	if !ok {
		return
	}

	t.Run("container", func(t *testing.T) {
		// The docker command lines, as the user's shell expands them
		// where the install steps ran: docker's own arguments.
		dockerArgs := func(key string) []string {
			c := readmeCommand(t, key)
			rest, ok := strings.CutPrefix(c.raw, "docker ")
			if !ok {
				t.Fatalf("%s: not a docker command", key)
			}
			return strings.Split(strings.TrimSuffix(sb.mustSh(t, `printf '%s\n' `+rest), "\n"), "\n")
		}
		// docker build: its version argument.
		if b := dockerArgs(cmdDockerBuild); !slices.ContainsFunc(b, func(a string) bool { return strings.HasPrefix(a, "VERSION=") && len(a) > len("VERSION=") }) {
			t.Errorf("%s gives no VERSION: %q", cmdDockerBuild, b)
		}
		// docker run: the capabilities, groups and the volume it gives.
		run := dockerArgs(cmdDockerRun)
		var add, groups, vol []string
		for i := 0; i+1 < len(run); i++ {
			switch run[i] {
			case "--cap-add":
				add = append(add, run[i+1])
			case "--group-add":
				groups = append(groups, run[i+1])
			case "-v":
				vol = strings.Split(run[i+1], ":")
			}
		}
		if !slices.Contains(run, "--read-only") || !slices.Contains(run, "--network") || len(vol) != 3 || vol[2] != "ro" || vol[0] != vol[1] {
			t.Fatalf("%s: the test expects --read-only, --network host and -v DIR:DIR:ro", cmdDockerRun)
		}
		// The image's file capabilities: the Dockerfile's own setcap
		// commands, on the sandbox's copies (/usr/local/bin/pasvgate is
		// the binary the install step put there).
		im := dockerImage(t, root)
		for _, c := range im.setcaps {
			if strings.Contains(c, "legacy") {
				if _, err := os.Stat("/usr/sbin/xtables-legacy-multi"); err != nil {
					continue
				}
			}
			sb.mustSh(t, c)
		}
		// Its file system: the volume read-only, and the root read-only
		// (--read-only), in the sandbox only.
		sb.mustSh(t, fmt.Sprintf("mount --bind %s %s && mount -o remount,bind,ro %s && mount -o remount,bind,ro /", vol[0], vol[1], vol[1]))
		// The image's USER with no capability of its own, the bounding
		// set docker run gives (--cap-drop ALL --cap-add ...), and the
		// groups it adds. env execs first, as a container runtime's init
		// does: a non-root exec of a file without capabilities empties
		// the permitted set, so pasvgate has only what its file grants.
		uidGid := strings.Split(im.user, ":")
		asImage := []string{"setpriv", "--reuid=" + uidGid[0], "--regid=" + uidGid[1], "--inh-caps=-all", "--bounding-set=" + caps(add)}
		if len(groups) > 0 {
			asImage = append(asImage, "--groups="+strings.Join(groups, ","))
		} else {
			asImage = append(asImage, "--clear-groups")
		}
		asImage = append(asImage, "env")
		argv := append(append(sb.enter(), asImage...), append(im.entry, im.cmd...)...)
		p, err := l.Start(l.GW, argv[0], argv[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		waitStarted(t, p, "the image's ENTRYPOINT and CMD")
		if got := uidOf(t, p.Pid()); got != uidGid[0] {
			t.Errorf("the image's ENTRYPOINT runs as uid %s, want %s", got, uidGid[0])
		}
		healthz(t, l, l.GW, "127.0.0.1:9121")
		download(t, l, srv, lab.GWPublicAddr, false, false)
		// docker stop -t N: SIGTERM, then SIGKILL after N seconds.
		stopArgs := dockerArgs(cmdDockerStop)
		grace := 10 * time.Second
		if i := slices.Index(stopArgs, "-t"); i >= 0 && i+1 < len(stopArgs) {
			var n int
			if _, err := fmt.Sscan(stopArgs[i+1], &n); err == nil {
				grace = time.Duration(n) * time.Second
			}
		}
		stop(t, p, "the image's ENTRYPOINT and CMD", grace)
		checkNoMappings(t, l, l.GW)
		flush := append(append(sb.enter(), asImage...), append(im.entry, "rules", "flush")...)
		if out, err := l.Exec(t.Context(), l.GW, flush[0], flush[1:]...); err != nil {
			t.Fatalf("the image's rules flush: %v\n%s", err, out)
		}
		if st := kernelState(t, l, l.GW); strings.Contains(strings.ToLower(st), "pasvgate") {
			t.Fatalf("after the image's rules flush, pasvgate's rules, chains or tables are left:\n%s", st)
		}
	})
}
