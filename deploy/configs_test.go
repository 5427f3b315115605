package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
	yaml "go.yaml.in/yaml/v3"
)

// decodeKnown decodes a pasvgate config with yaml's KnownFields into a
// struct made of exactly the keys given, so that any other key is an
// error, as it is for pasvgate itself.
func decodeKnown(b []byte, keys []string) error {
	fields := make([]reflect.StructField, len(keys))
	for i, k := range keys {
		fields[i] = reflect.StructField{
			Name: fmt.Sprintf("F%d", i),
			Type: reflect.TypeFor[yaml.Node](),
			Tag:  reflect.StructTag(`yaml:"` + k + `"`),
		}
	}
	v := reflect.New(reflect.StructOf(fields)).Interface()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func examples(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob("examples/*.yaml")
	for _, want := range []string{"gateway-appliance.yaml", "router-sidecar.yaml", "fix-passive-address.yaml"} {
		if !slices.Contains(files, filepath.Join("examples", want)) {
			t.Errorf("no examples/%s", want)
		}
	}
	return files
}

// TestExampleKeys checks that every example config has only keys that
// `pasvgate run -h` lists as flags.
func TestExampleKeys(t *testing.T) {
	keys := configKeys(t)
	for _, f := range examples(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := decodeKnown(b, keys); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// settings returns the values a run would use for a few keys, from its
// config file and then its flags (a flag wins; the first --listen replaces
// the file's list).
func settings(t *testing.T, args []string) map[string][]string {
	t.Helper()
	s := map[string][]string{}
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			b, err := os.ReadFile(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := yaml.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			for k, v := range m {
				switch v := v.(type) {
				case []any:
					for _, x := range v {
						s[k] = append(s[k], fmt.Sprint(x))
					}
				default:
					s[k] = []string{fmt.Sprint(v)}
				}
			}
		}
	}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		name, val, ok := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") {
			continue
		}
		if !ok && i+1 < len(args) && name != "snat" {
			i++
			val = args[i]
		}
		if !seen[name] {
			s[name] = nil
			seen[name] = true
		}
		s[name] = append(s[name], val)
	}
	return s
}

// TestConfigsStart runs every pasvgate that deploy/ describes (each example
// config, and each pasvgate container of the Kubernetes manifests, with its
// ConfigMap) for real: as an unprivileged user with the capabilities the
// systemd unit grants, in a fresh network namespace that has the addresses
// and interfaces the config names. Each must get past validation (exit 2
// would be a config error) and through its kernel set-up to "pasvgate
// started", and stop cleanly on SIGTERM.
func TestConfigsStart(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, "setpriv")
	pasvgate, _ := build(t)
	// What $(HOST_IP) and $(POD_IP) stand for.
	const nodeAddr = "192.0.2.10"
	runs := manifestRuns(t, nodeAddr)
	for _, f := range examples(t) {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		runs[f] = []string{"run", "--config", abs}
	}
	for name, args := range runs {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			t.Parallel()
			ns := netns.New(t, nsPrefix)
			s := settings(t, args)
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			addLocal := func(hp string) {
				host, _, err := net.SplitHostPort(hp)
				must(err)
				a, err := netip.ParseAddr(host)
				if err != nil || a.IsUnspecified() || a.IsLoopback() {
					return
				}
				if err := ns.AddAddr("lo", netip.PrefixFrom(a, a.BitLen())); err != nil && !errors.Is(err, syscall.EEXIST) {
					t.Fatal(err)
				}
			}
			for _, l := range s["listen"] {
				addLocal(l)
			}
			for _, m := range s["metrics"] {
				addLocal(m)
			}
			for _, k := range []string{"intercept", "public-iface"} {
				for _, iface := range s[k] {
					must(netns.Veth(ns, iface, ns, iface+"-p"))
					if k == "public-iface" {
						must(ns.AddAddr(iface, netip.MustParsePrefix("203.0.113.77/24")))
					}
				}
			}

			caps, env := capsNFT, []string(nil)
			ipt := "iptables"
			if v := s["iptables-path"]; len(v) > 0 {
				ipt = v[len(v)-1]
			}
			if p, err := exec.LookPath(ipt); err != nil {
				t.Skipf("%s: %v", ipt, err)
			} else if real, _ := filepath.EvalSymlinks(p); strings.Contains(real, "legacy") {
				caps = append(slices.Clone(capsNFT), capsLegacyExtra...)
				env = []string{"XTABLES_LOCKFILE=" + lockFile(t)}
			}

			cmd := nsCommand(ns, env, append(asNobody(caps), append([]string{pasvgate}, args...)...)...)
			p := start(t, cmd, "")
			if !p.waitFor("pasvgate started", 20*time.Second) {
				err := p.wait(t, time.Second)
				if exitCode(err) == 2 {
					t.Fatalf("pasvgate %s: rejected as a config error:\n%s", strings.Join(args, " "), p.output())
				}
				t.Fatalf("pasvgate %s: exited (%v) before it started:\n%s", strings.Join(args, " "), err, p.output())
			}
			for _, m := range s["metrics"] {
				checkMetrics(t, ns, m)
			}
			if err := p.stop(t, cmd.Process.Pid, syscall.SIGTERM); err != nil {
				t.Fatalf("pasvgate %s after SIGTERM: %v\n%s", strings.Join(args, " "), err, p.output())
			}
			if d := denied(p.output()); d != "" {
				t.Errorf("pasvgate %s, with capabilities %v, logged a permission error: %s", strings.Join(args, " "), caps, d)
			}
		})
	}
}

// checkMetrics asks pasvgate's metrics listener at addr, inside ns, for
// /healthz (what the Kubernetes probes ask) and /metrics.
func checkMetrics(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		host = "127.0.0.1"
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return ns.Dial(ctx, "tcp", "", net.JoinHostPort(host, port))
		},
	}}
	defer hc.CloseIdleConnections()
	for path, want := range map[string]string{"/healthz": "ok", "/metrics": "pasvgate_"} {
		resp, err := hc.Get("http://" + net.JoinHostPort(host, port) + path)
		if err != nil {
			t.Fatalf("GET %s from --metrics %s: %v", path, addr, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s from --metrics %s: %s, %.200q; want 200 and %q", path, addr, resp.Status, b, want)
		}
	}
}

// removalBound is how long pasvgate may spend removing rules at a stop,
// after the drain (cmd/pasvgate's shutdownTimeout).
const removalBound = 30 * time.Second

// TestStopTimeouts checks that whatever stops pasvgate waits long enough
// for its own stop (drain-timeout, then the rule removals) before it kills
// it: a kill mid-way leaves mappings in the kernel until the next start.
// And that the Kubernetes probes ask the /healthz that --metrics serves.
func TestStopTimeouts(t *testing.T) {
	def, err := time.ParseDuration(flagDefault(t, "drain-timeout"))
	if err != nil {
		t.Fatal(err)
	}
	u := readUnit(t, "systemd/pasvgate.service")
	stop, err := time.ParseDuration(strings.TrimSuffix(u.one(t, "Service", "TimeoutStopSec"), "s") + "s")
	if err != nil {
		t.Fatal(err)
	}
	if stop < def+removalBound {
		t.Errorf("TimeoutStopSec=%v, less than the default drain-timeout %v plus %v", stop, def, removalBound)
	}
	for _, f := range examples(t) {
		if d := settings(t, []string{"--config", f})["drain-timeout"]; len(d) > 0 {
			if v, err := time.ParseDuration(d[0]); err != nil || stop < v+removalBound {
				t.Errorf("%s: drain-timeout %s does not fit the unit's TimeoutStopSec=%v", f, d[0], stop)
			}
		}
	}

	runs := manifestRuns(t, "192.0.2.10")
	for _, w := range workloads(t, loadManifests(t)) {
		ps := w.spec.Template.Spec
		for _, c := range ps.Containers {
			if !isPasvgate(c) {
				continue
			}
			where := w.obj.file + ": " + w.obj.Metadata.Name + "/" + c.Name
			s := settings(t, runs[filepath.Base(w.obj.file)+"/"+w.obj.Metadata.Name+"/"+c.Name])
			drain := def
			if d := s["drain-timeout"]; len(d) > 0 {
				if drain, err = time.ParseDuration(d[0]); err != nil {
					t.Fatal(err)
				}
			}
			grace := 30 * time.Second // Kubernetes' default
			if ps.Grace != nil {
				grace = time.Duration(*ps.Grace) * time.Second
			}
			if grace < drain+removalBound {
				t.Errorf("%s: terminationGracePeriodSeconds %v, less than drain-timeout %v plus %v", where, grace, drain, removalBound)
			}
			for name, p := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
				if p == nil {
					t.Errorf("%s: no %s", where, name)
					continue
				}
				m := s["metrics"]
				if p.HTTPGet == nil || len(m) == 0 {
					t.Errorf("%s: %s wants httpGet on the --metrics listener (metrics %v)", where, name, m)
					continue
				}
				host, port, err := net.SplitHostPort(m[0])
				if err != nil {
					t.Fatal(err)
				}
				if port != fmt.Sprint(p.HTTPGet.Port) || p.HTTPGet.Path != "/healthz" {
					t.Errorf("%s: %s gets :%d%s, metrics serve /healthz on %s", where, name, p.HTTPGet.Port, p.HTTPGet.Path, m[0])
				}
				// The kubelet probes the pod's address unless told a host;
				// a loopback listener is reachable from the kubelet only
				// on the node's own network.
				if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() && (!ps.HostNetwork || p.HTTPGet.Host != host) {
					t.Errorf("%s: %s cannot reach metrics on %s (hostNetwork %v, host %q)", where, name, m[0], ps.HostNetwork, p.HTTPGet.Host)
				}
			}
		}
	}
}
