package readme

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// entry is a command the README shows, and what the test does with it.
type entry struct {
	// cmd is the command's exact text (continuations joined, blanks
	// collapsed, a trailing comment left out).
	cmd string
	// test is the test that runs it.
	test string
	// proves says what a pass shows.
	proves string
	// notRun, if not empty, says why the command cannot run here; the
	// test then does what proves says instead.
	notRun string
}

// Commands of the README's "Install on a gateway, with systemd" and
// "Container" sections, run in TestInstall's sandbox.
const (
	cmdMakeBuild      = "make build"
	cmdInstallBin     = "install -m 0755 bin/pasvgate /usr/local/bin/pasvgate"
	cmdInstallSysuser = "install -D -m 0644 deploy/systemd/pasvgate.sysusers /etc/sysusers.d/pasvgate.conf"
	cmdSysusers       = "systemd-sysusers"
	cmdInstallEtcDir  = "install -d -m 0750 -g pasvgate /etc/pasvgate"
	cmdInstallConfig  = "install -m 0640 -g pasvgate deploy/examples/gateway-appliance.yaml /etc/pasvgate/pasvgate.yaml"
	cmdEditor         = "$EDITOR /etc/pasvgate/pasvgate.yaml"
	cmdInstallUnit    = "install -m 0644 deploy/systemd/pasvgate.service /etc/systemd/system/"
	cmdDaemonReload   = "systemctl daemon-reload"
	cmdEnableNow      = "systemctl enable --now pasvgate"
	cmdInstallLegacy  = "install -D -m 0644 deploy/systemd/legacy.conf /etc/systemd/system/pasvgate.service.d/legacy.conf"
	cmdInstallLock    = "install -m 0644 deploy/systemd/xtables-lock.tmpfiles /etc/tmpfiles.d/xtables-lock.conf"
	cmdTmpfiles       = "systemd-tmpfiles --create /etc/tmpfiles.d/xtables-lock.conf"
	cmdRestartLegacy  = "systemctl daemon-reload && systemctl restart pasvgate"
	cmdSetpriv        = "setpriv --reuid=pasvgate --regid=pasvgate --clear-groups --no-new-privs --inh-caps=-all,+net_admin,+net_bind_service --ambient-caps=-all,+net_admin,+net_bind_service --bounding-set=-all,+net_admin,+net_bind_service /usr/local/bin/pasvgate run --config /etc/pasvgate/pasvgate.yaml"
	cmdDockerBuild    = `docker build -f deploy/container/Dockerfile --build-arg VERSION="$(git describe --always --dirty)" -t pasvgate .`
	cmdDockerRun      = `docker run -d --name pasvgate --network host --read-only --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_BIND_SERVICE --group-add "$(getent group pasvgate | cut -d: -f3)" -v /etc/pasvgate:/etc/pasvgate:ro pasvgate`
	cmdDockerStop     = "docker stop -t 100 pasvgate"
)

// The other commands the README shows.
const (
	cmdMakeDemo   = "make demo"
	cmdMakeTest   = "make test"
	cmdReverse    = "pasvgate run --listen 203.0.113.1:21 --upstream 192.0.2.10:21 --public-addr 203.0.113.2"
	cmdRulesList  = "pasvgate rules list"
	cmdRulesFlush = "pasvgate rules flush"
	cmdVersion    = "pasvgate version"
	cmdDemo       = "pasvgate demo"
	cmdSidecar    = "pasvgate run --intercept lan0 --intercept-method redirect --listen 0.0.0.0:2121 --listen '[::]:2121' --data-ports 40000-40999"
	cmdIPv6       = "pasvgate run --listen 203.0.113.1:21 --listen '[2001:db8:1::1]:21' --upstream 192.0.2.10:21 --upstream '[2001:db8:2::10]:21'"
	cmdProbe      = "pasvgate probe ftp://192.0.2.10:21"
	cmdAudit      = "pasvgate audit test/testdata/misconfigured.pcap"
)

const noSystemd = "systemd is not PID 1 here (systemctl has no manager to talk to)"

// catalogue is every command README.md shows, in README order.
var catalogue = []entry{
	{cmd: cmdMakeDemo, test: "TestMakeDemo",
		proves: "it builds its lab, the client's download through pasvgate succeeds, --backend auto took nftables on its drop-policy gateway with pasvgate's own accept in FORWARD, the 227 is rewritten, the mapping was seen and is gone after (\"demo: OK\", exit 0), and it leaves no namespace behind"},
	{cmd: cmdMakeTest, test: "TestMakeTest",
		notRun: "it is the suite this test is part of: running it here would run itself",
		proves: "instead: the Makefile's test target is read and must run `go test` over ./... (so this package), with a timeout"},
	{cmd: cmdReverse, test: "TestReverse",
		proves: "reverse mode on the README's gateway: it starts, curl (trusting the 227) downloads through it with 227 replies naming 203.0.113.2 while it dialed 203.0.113.1, and SIGTERM with a session open gives that client 421, exit 0 and no mapping left"},
	{cmd: cmdRulesList, test: "TestReverse",
		proves: "with a passive mapping open it prints it (the client and 203.0.113.2:Q); after a clean stop it prints nothing, exit 0"},
	{cmd: cmdRulesFlush, test: "TestReverse",
		proves: "after a SIGKILL that left a mapping in the kernel, it exits 0 and leaves no pasvgate rule, chain or table (iptables-save, nft list ruleset), and `rules list` is empty"},
	{cmd: cmdVersion, test: "TestVersionDemo",
		proves: "it prints one line \"pasvgate VERSION\", exit 0"},
	{cmd: cmdDemo, test: "TestVersionDemo",
		proves: "rootless: it prints the server's 227 and the rewritten one (different addresses), the mapping while the session was open, and \"mappings left after the session: 0\", exit 0"},
	{cmd: cmdSidecar, test: "TestSidecar",
		proves: "on the README's router (LAN lan0 198.51.100.0/24, WAN 203.0.113.1): it starts with both listeners (0.0.0.0:2121 and [::]:2121 each in its own family), a LAN client's active (PORT, EPRT) and passive (PASV) downloads from a server outside go through it, SIGTERM exits 0 and no mapping or interception rule is left"},
	{cmd: cmdIPv6, test: "TestIPv6",
		proves: "one process serves both families: curl downloads over IPv4 (PASV) and over IPv6 (EPSV) through it, each to the upstream of its own family; clean stop"},
	{cmd: cmdProbe, test: "TestProbe",
		proves: "run on the gateway against the lab's vsftpd with its defaults, it prints what the README quotes (every finding, line for line, the kernel's port numbers left free) and exits 0"},
	{cmd: cmdProbe, test: "TestProbe",
		proves: "the second time the README shows it: against the same vsftpd advertising 192.0.2.99 (pasv_address), it prints what the README quotes there (the FAIL findings and their fix) and exits 1"},
	{cmd: cmdAudit, test: "TestAudit",
		proves: "on the lab's capture it prints exactly what the README quotes and exits 1 (problems found)"},
	{cmd: cmdMakeBuild, test: "TestInstall",
		proves: "it builds bin/pasvgate, a static binary (no ELF interpreter) that runs"},
	{cmd: cmdInstallBin, test: "TestInstall",
		proves: "run as written in a private mount namespace whose /etc, /usr/local/bin, /run and /usr/sbin are overlays on the host's (which stay untouched): the binary lands, mode 0755"},
	{cmd: cmdInstallSysuser, test: "TestInstall", proves: "(in the sandbox) the sysusers entry lands"},
	{cmd: cmdSysusers, test: "TestInstall", proves: "(in the sandbox) it makes the system user and group pasvgate, with no login shell"},
	{cmd: cmdInstallEtcDir, test: "TestInstall", proves: "(in the sandbox) /etc/pasvgate, 0750, group pasvgate"},
	{cmd: cmdInstallConfig, test: "TestInstall",
		proves: "(in the sandbox) the example config lands, 0640, group pasvgate: readable by the service user, which the setpriv and unit runs then prove"},
	{cmd: cmdEditor, test: "TestInstall",
		notRun: "interactive: it opens the user's editor",
		proves: "instead: the config stays the example as installed, which the gateway lab is built to match"},
	{cmd: cmdInstallUnit, test: "TestInstall", proves: "(in the sandbox) the unit lands in /etc/systemd/system; the unit's ExecStart and ExecStopPost are then read from there"},
	{cmd: cmdDaemonReload, test: "TestInstall", notRun: noSystemd,
		proves: "instead: deploy's TestSystemdVerify runs systemd-analyze verify on the unit"},
	{cmd: cmdEnableNow, test: "TestInstall", notRun: noSystemd,
		proves: "instead: the installed unit's ExecStart runs as its User=/Group= with its AmbientCapabilities, CapabilityBoundingSet and NoNewPrivileges (setpriv), with NOTIFY_SOCKET: READY=1, a client's download through it, SIGTERM exit 0 (STOPPING=1); then its ExecStopPost the same way leaves no pasvgate rule or chain"},
	{cmd: cmdInstallLegacy, test: "TestInstall", proves: "(in the sandbox) the drop-in lands where systemd reads drop-ins"},
	{cmd: cmdInstallLock, test: "TestInstall", proves: "(in the sandbox) the tmpfiles entry lands"},
	{cmd: cmdTmpfiles, test: "TestInstall", proves: "(in the sandbox, /run an overlay) it creates /run/xtables.lock, root's, mode 0600"},
	{cmd: cmdRestartLegacy, test: "TestInstall", notRun: noSystemd,
		proves: "instead: deploy's TestLeastPrivilege runs the unit's command lines with the legacy drop-in's capabilities and flush on iptables-legacy"},
	{cmd: cmdSetpriv, test: "TestInstall",
		proves: "in the sandbox, after the install steps, on the README's gateway: it starts as user pasvgate, /healthz answers, a client's download goes through it, SIGTERM exits 0 and no mapping is left"},
	{cmd: cmdDockerBuild, test: "TestInstall",
		notRun: "no Docker engine runs on this machine",
		proves: "instead: its arguments, as the shell expands them, give a VERSION (git describe); deploy's tests run the Dockerfile's go build line, and the binary `make build` made is what the image's ENTRYPOINT runs below"},
	{cmd: cmdDockerRun, test: "TestInstall",
		notRun: "no Docker engine runs on this machine",
		proves: "instead: the Dockerfile's ENTRYPOINT and CMD (parsed from it) run in the sandbox after its own setcap lines, on the gateway's network (--network host), as its USER 65532:65532 with the --group-add the shell expands, only the --cap-add capabilities in the bounding set, /etc/pasvgate bind-mounted read-only and the root read-only: it starts, /healthz answers, a client's download goes through it (without --group-add it cannot read the installed config: permission denied)"},
	{cmd: cmdDockerStop, test: "TestInstall",
		notRun: "no Docker engine runs on this machine",
		proves: "instead: SIGTERM to that process, which exits 0 well within its -t 100; then the ENTRYPOINT with `rules flush` (the Dockerfile's own clean-up command), run the same way, leaves no pasvgate rule or chain"},
}

// drift compares the commands a README shows with a catalogue, both
// ways, and says what differs.
func drift(commands []command, cat []entry) []string {
	count, line := map[string]int{}, map[string]int{}
	for _, c := range commands {
		count[c.key]++
		if line[c.key] == 0 {
			line[c.key] = c.line
		}
	}
	want := map[string]int{}
	for _, e := range cat {
		want[e.cmd]++
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(count)) {
		if count[k] != want[k] {
			out = append(out, fmt.Sprintf("README.md:%d shows %q %d time(s), and the test knows it %d time(s): add it to the catalogue in test/readme/commands_test.go, with a test that runs it", line[k], k, count[k], want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if count[k] == 0 {
			out = append(out, fmt.Sprintf("the test expects the README to show %q, and it does not any more: remove it from test/readme/commands_test.go (and its run), or restore it", k))
		}
	}
	return out
}

// TestCommandsKnown fails on drift either way: a command the README
// shows that the catalogue does not know, or a catalogued command the
// README no longer shows. It lists every command and what it proves.
func TestCommandsKnown(t *testing.T) {
	d, _ := readmeDoc(t)
	for _, e := range catalogue {
		if e.test == "" || e.proves == "" {
			t.Errorf("catalogue: %q says neither which test runs it nor what it proves", e.cmd)
		}
	}
	for _, p := range drift(d.commands, catalogue) {
		t.Error(p)
	}
	if t.Failed() {
		return
	}
	var b strings.Builder
	for _, e := range catalogue {
		b.WriteString("\n  " + e.cmd + "\n      ")
		if e.notRun != "" {
			b.WriteString("not run: " + e.notRun + "; ")
		}
		b.WriteString(e.test + ": " + e.proves)
	}
	t.Logf("%d commands in README.md, each known:%s", len(d.commands), b.String())
}

// TestDriftBothWays checks that drift catches a README that gained a
// command and one that lost one, and that parse finds commands and
// breaches of the convention where they are.
func TestDriftBothWays(t *testing.T) {
	readme := "# x\n\n```sh\nmake demo    # a comment\n             # more of it\n\npasvgate run --listen 203.0.113.1:21 \\\n    --upstream 192.0.2.10:21\n```\n\n```sh\npasvgate version\n```\n\n```output\npasvgate dev\n```\n"
	cat := []entry{{cmd: "make demo"}, {cmd: "pasvgate run --listen 203.0.113.1:21 --upstream 192.0.2.10:21"}, {cmd: "pasvgate version"}}
	d := parse(readme)
	if len(d.problems) > 0 || len(d.commands) != 3 {
		t.Fatalf("parse: %d commands, problems %q", len(d.commands), d.problems)
	}
	if p := drift(d.commands, cat); len(p) > 0 {
		t.Fatalf("drift on a README that matches: %q", p)
	}
	if d.commands[1].raw != "pasvgate run --listen 203.0.113.1:21 \\\n    --upstream 192.0.2.10:21" || d.commands[0].output != "" || d.commands[2].output != "pasvgate dev\n" {
		t.Errorf("parse: %+v", d.commands)
	}
	gained := parse(strings.Replace(readme, "make demo", "make demo\nmake bench", 1))
	if p := drift(gained.commands, cat); len(p) != 1 || !strings.Contains(p[0], `"make bench"`) {
		t.Errorf("a README that gained a command: drift says %q", p)
	}
	lost := parse(strings.Replace(readme, "make demo", "", 1))
	if p := drift(lost.commands, cat); len(p) != 1 || !strings.Contains(p[0], `"make demo", and it does not`) {
		t.Errorf("a README that lost a command: drift says %q", p)
	}
	for name, bad := range map[string]string{
		"untagged": "x\n\n```\nmake demo\n```\n",
		"indented": "x\n\n    make demo\n",
		"tag":      "x\n\n```bash\nmake demo\n```\n",
		"output":   "x\n\n```sh\nmake demo\nmake test\n```\n\n```output\nok\n```\n",
	} {
		if p := parse(bad).problems; len(p) != 1 {
			t.Errorf("%s: problems %q, want one", name, p)
		}
	}
}

// TestConvention checks that every code block of the README follows the
// convention the package doc describes, so that no command escapes
// TestCommandsKnown in a block it does not read.
func TestConvention(t *testing.T) {
	d, _ := readmeDoc(t)
	for _, p := range d.problems {
		t.Error(p)
	}
	if len(d.commands) == 0 {
		t.Fatal("README.md shows no command in a sh block")
	}
	// A synopsis in a runnable block would be run: no brackets of
	// optional arguments.
	for _, c := range d.commands {
		for _, w := range strings.Fields(c.key) {
			if strings.HasPrefix(w, "[") {
				t.Errorf("README.md:%d: %q looks like a synopsis (%s): put it in a text block", c.line, c.key, w)
			}
		}
	}
}
