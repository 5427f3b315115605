package deploy

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// instruction is one Dockerfile instruction.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, ...
	Args string // the rest, continuation lines joined
	Line int
}

// parseDockerfile reads a Dockerfile: comments, continuation lines ending
// in a backslash, one instruction per logical line. (No parser
// directives other than the default escape character are used.)
func parseDockerfile(path string) ([]instruction, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		ins   []instruction
		cur   strings.Builder
		first int
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			first = n
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		ins = append(ins, instruction{strings.ToUpper(cmd), strings.Join(strings.Fields(args), " "), first})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("%s: ends in a continuation line", path)
	}
	return ins, sc.Err()
}

// stage is a build stage: its FROM and its instructions.
type stage struct {
	From, Name string
	Ins        []instruction
}

func stages(ins []instruction) []stage {
	var ss []stage
	for _, in := range ins {
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			s := stage{From: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.Name = f[2]
			}
			ss = append(ss, s)
			continue
		}
		if len(ss) > 0 {
			ss[len(ss)-1].Ins = append(ss[len(ss)-1].Ins, in)
		}
	}
	return ss
}

func (s stage) all(cmd string) []instruction {
	var r []instruction
	for _, in := range s.Ins {
		if in.Cmd == cmd {
			r = append(r, in)
		}
	}
	return r
}

// imageCaps returns the file capabilities the final stage's setcap calls
// give each path, as setpriv names them.
func imageCaps(t testing.TB, final stage) map[string][]string {
	t.Helper()
	re := regexp.MustCompile(`setcap\s+(\S+)\+ep\s+(\S+)`)
	m := map[string][]string{}
	for _, in := range final.all("RUN") {
		for _, x := range re.FindAllStringSubmatch(in.Args, -1) {
			var cs []string
			for _, c := range strings.Split(x[1], ",") {
				cs = append(cs, strings.TrimPrefix(c, "cap_"))
			}
			slices.Sort(cs)
			m[x[2]] = cs
		}
	}
	return m
}

// imageUser returns the final stage's USER uid.
func imageUser(t testing.TB, final stage) int {
	t.Helper()
	us := final.all("USER")
	if len(us) != 1 {
		t.Fatalf("the final stage has %d USER instructions, want one", len(us))
	}
	uid, err := strconv.Atoi(strings.Split(us[0].Args, ":")[0])
	if err != nil {
		t.Fatalf("USER %s: want a numeric uid, so that Kubernetes can check runAsNonRoot", us[0].Args)
	}
	return uid
}

func dockerfile(t testing.TB) (build, final stage) {
	t.Helper()
	ins, err := parseDockerfile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ss := stages(ins)
	if len(ss) != 2 {
		t.Fatalf("container/Dockerfile has %d stages, want 2 (build, final)", len(ss))
	}
	return ss[0], ss[1]
}

// TestDockerfile checks the image's recipe: a Go 1.26 build stage with a
// static, trimmed build; a Debian slim final stage with iptables, the file
// capabilities TestLeastPrivilege proves, and a non-root user.
func TestDockerfile(t *testing.T) {
	b, final := dockerfile(t)
	if !strings.HasPrefix(b.From, "golang:1.26") || b.Name == "" {
		t.Errorf("build stage FROM %s AS %q, want golang:1.26 AS a name", b.From, b.Name)
	}
	line, err := dockerBuildCommand("/out")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0 ", "go build ", "-trimpath", `-ldflags "-s -w -X main.version=` + buildVersion + `"`, "./cmd/pasvgate"} {
		if !strings.Contains(line, want) {
			t.Errorf("the build command %q lacks %q", line, want)
		}
	}
	if args := b.all("ARG"); len(args) != 1 || !strings.HasPrefix(args[0].Args, "VERSION") {
		t.Errorf("build stage ARGs %v, want ARG VERSION", args)
	}

	if !regexp.MustCompile(`^debian:[a-z]+-slim$`).MatchString(final.From) {
		t.Errorf("final stage FROM %s, want debian:RELEASE-slim", final.From)
	}
	var dest string
	for _, c := range final.all("COPY") {
		if f := strings.Fields(c.Args); len(f) == 3 && f[0] == "--from="+b.Name {
			dest = f[2]
		}
	}
	if dest == "" {
		t.Fatalf("the final stage copies nothing from the %s stage", b.Name)
	}
	var installs bool
	for _, r := range final.all("RUN") {
		installs = installs || regexp.MustCompile(`apt-get install [^&]*\biptables\b`).MatchString(r.Args)
	}
	if !installs {
		t.Error("the final stage does not apt-get install iptables")
	}
	if uid := imageUser(t, final); uid == 0 {
		t.Error("USER is root")
	}
	var entry []string
	if e := final.all("ENTRYPOINT"); len(e) != 1 || json.Unmarshal([]byte(e[0].Args), &entry) != nil || len(entry) != 1 || entry[0] != dest {
		t.Errorf("ENTRYPOINT %v, want [%q] in exec (JSON) form", e, dest)
	}
	var cmd []string
	if c := final.all("CMD"); len(c) != 1 || json.Unmarshal([]byte(c[0].Args), &cmd) != nil || len(cmd) == 0 || cmd[0] != "run" {
		t.Errorf("CMD %v, want [\"run\", ...] in exec form", c)
	}
	flags := runFlags(t)
	for _, f := range flagsIn(cmd) {
		if !flags[f] {
			t.Errorf("CMD uses --%s, which pasvgate run -h does not list", f)
		}
	}

	caps := imageCaps(t, final)
	legacy := sorted(append([]string{"net_admin"}, capsLegacyExtra...))
	for path, want := range map[string][]string{
		dest:                             sorted(capsNFT),
		"/usr/sbin/xtables-nft-multi":    {"net_admin"},
		"/usr/sbin/xtables-legacy-multi": legacy,
	} {
		if !slices.Equal(caps[path], want) {
			t.Errorf("setcap gives %s %v, want %v", path, caps[path], want)
		}
	}
	if len(caps) != 3 {
		t.Errorf("setcap on %d files, want 3: %v", len(caps), caps)
	}
}

// TestImageBinary checks the binary the Dockerfile's build command makes
// (build runs that very command): statically linked, no cgo, trimmed,
// stripped, and carrying the version given at build time.
func TestImageBinary(t *testing.T) {
	pasvgate, _ := build(t)
	f, err := elf.Open(pasvgate)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if _, err := f.Symbols(); !errors.Is(err, elf.ErrNoSymbols) {
		t.Errorf("the binary has a symbol table (err %v): -s did not apply", err)
	}
	out, err := exec.Command("go", "version", "-m", pasvgate).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	// (-trimpath keeps -ldflags out of the build info; the version
	// check below shows -X applied.)
	for _, want := range []string{"\tbuild\tCGO_ENABLED=0\n", "\tbuild\t-trimpath=true\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("go version -m lacks %q:\n%s", want, out)
		}
	}
	if out, err := exec.Command(pasvgate, "version").Output(); err != nil || strings.TrimSpace(string(out)) != "pasvgate "+buildVersion {
		t.Errorf("pasvgate version: %q, %v; want %q", out, err, "pasvgate "+buildVersion)
	}
}

// TestFileCapabilities proves the container model on a real kernel: the
// Dockerfile's setcap lines applied to the same binaries (pasvgate, and the
// host's xtables-nft-multi and xtables-legacy-multi, which the image's
// Debian installs at the same paths), run as the image's USER with no
// ambient or inheritable capabilities and only the Kubernetes manifests'
// capabilities in the bounding set, as a container runtime runs a
// non-root container. It starts, maps a download and cleans up; under
// no_new_privs (allowPrivilegeEscalation: false) it fails, which is why the
// manifests leave that on.
func TestFileCapabilities(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, "setpriv", "setcap")
	pasvgate, _ := build(t)
	_, final := dockerfile(t)
	uid := imageUser(t, final)
	if uid != containerUID {
		t.Fatalf("the image's USER is %d; the manifests and this test use %d", uid, containerUID)
	}
	k8sCaps := manifestCaps(t)
	dest := ""
	for _, c := range final.all("COPY") {
		if f := strings.Fields(c.Args); len(f) == 3 && strings.HasPrefix(f[0], "--from=") {
			dest = f[2]
		}
	}

	// The image's files, in a directory the container user can reach.
	dir := sharedDir(t)
	copyFile := func(src, dst string) {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	local := map[string]string{dest: filepath.Join(dir, filepath.Base(dest))}
	copyFile(pasvgate, local[dest])
	for _, multi := range []string{"xtables-nft-multi", "xtables-legacy-multi"} {
		src := "/usr/sbin/" + multi
		if _, err := os.Stat(src); err != nil {
			continue
		}
		local[src] = filepath.Join(dir, multi)
		copyFile(src, local[src])
		fam := strings.TrimSuffix(strings.TrimPrefix(multi, "xtables-"), "-multi")
		for _, v := range []string{"iptables", "ip6tables"} {
			for _, sfx := range []string{"", "-restore", "-save"} {
				if err := os.Symlink(multi, filepath.Join(dir, v+"-"+fam+sfx)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for path, caps := range imageCaps(t, final) {
		if local[path] == "" {
			continue
		}
		spec := "cap_" + strings.Join(caps, ",cap_") + "+ep"
		if out, err := exec.Command("setcap", spec, local[path]).CombinedOutput(); err != nil {
			t.Fatalf("setcap %s %s: %v\n%s", spec, local[path], err, out)
		}
	}

	for _, b := range backends {
		t.Run("iptables-"+b.family, func(t *testing.T) {
			t.Parallel()
			if local["/usr/sbin/xtables-"+b.family+"-multi"] == "" {
				t.Skipf("no xtables-%s-multi", b.family)
			}
			requireTools(t, "iptables-"+b.family+"-save")
			// What the container is given: the manifests' capabilities,
			// plus legacy's for a legacy node, as the Dockerfile says.
			bounding := k8sCaps
			if b.family == "legacy" {
				bounding = append(slices.Clone(k8sCaps), capsLegacyExtra...)
			}
			l := newLab(t)
			ipt := filepath.Join(dir, "iptables-"+b.family)
			s := setup{wrap: asContainer(bounding, false), uid: containerUID, caps: sorted(capsNFT), bound: bounding,
				bin: local[dest], ipt: ipt, family: b.family,
				flush: []string{"rules", "flush", "--iptables-path", ipt}}
			s.writeConfig(t)
			if b.family == "legacy" {
				s.env = []string{"XTABLES_LOCKFILE=" + lockFile(t)}
			}

			// no_new_privs: file capabilities are ignored, nothing works.
			argv := append(asContainer(bounding, true), append([]string{s.bin}, s.runArgs()...)...)
			p := start(t, nsCommand(l.gw, s.env, argv...), "")
			if err := p.wait(t, 30*time.Second); exitCode(err) != 1 || !strings.Contains(p.output(), "denied") {
				t.Fatalf("under no_new_privs: exit %v, want 1 and a permission error:\n%s", err, p.output())
			}
			if save := l.save(t, b.family); strings.Contains(save, "PASVGATE") {
				t.Fatalf("under no_new_privs pasvgate still set up its chains:\n%s", save)
			}
			// A container given fewer capabilities than the binary's file
			// capabilities cannot even start it.
			argv = append(asContainer([]string{"net_admin"}, false), s.bin, "version")
			if out, err := nsCommand(l.gw, nil, argv...).CombinedOutput(); err == nil || !strings.Contains(string(out), "not permitted") {
				t.Fatalf("with NET_ADMIN only: %v, want exec refused:\n%s", err, out)
			}

			exercise(t, l, s, "")
		})
	}
}
