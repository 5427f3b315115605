package deploy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pasvgate/pasvgate/nat"
	yaml "go.yaml.in/yaml/v3"
)

// k8sObject is the part of a Kubernetes object these tests read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec yaml.Node         `yaml:"spec"`

	file string
}

type workloadSpec struct {
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	HostNetwork  bool              `yaml:"hostNetwork"`
	Grace        *int              `yaml:"terminationGracePeriodSeconds"`
	DNSPolicy    string            `yaml:"dnsPolicy"`
	NodeSelector map[string]string `yaml:"nodeSelector"`
	Tolerations  []yaml.Node       `yaml:"tolerations"`
	Containers   []container       `yaml:"containers"`
	Volumes      []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string     `yaml:"name"`
		Value     string     `yaml:"value"`
		ValueFrom *yaml.Node `yaml:"valueFrom"`
	} `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	SecurityContext *struct {
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		Privileged               *bool  `yaml:"privileged"`
		Capabilities             *struct {
			Add  []string `yaml:"add"`
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
}

type probe struct {
	HTTPGet *struct {
		Host string `yaml:"host"`
		Port int    `yaml:"port"`
		Path string `yaml:"path"`
	} `yaml:"httpGet"`
}

type serviceSpec struct {
	Type                  string            `yaml:"type"`
	ExternalTrafficPolicy string            `yaml:"externalTrafficPolicy"`
	Selector              map[string]string `yaml:"selector"`
	Ports                 []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort int    `yaml:"targetPort"`
	} `yaml:"ports"`
}

// apiVersions are the kinds the manifests may hold.
var apiVersions = map[string]string{
	"Namespace": "v1", "ConfigMap": "v1", "Service": "v1",
	"Deployment": "apps/v1", "DaemonSet": "apps/v1",
}

// loadManifests reads every YAML document under kubernetes/.
func loadManifests(t testing.TB) []k8sObject {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	var objs []k8sObject
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 1; ; i++ {
			var o k8sObject
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			o.file = f
			objs = append(objs, o)
		}
	}
	return objs
}

// workload is a pod template of a Deployment or DaemonSet.
type workload struct {
	obj  k8sObject
	spec workloadSpec
}

func workloads(t testing.TB, objs []k8sObject) []workload {
	t.Helper()
	var ws []workload
	for _, o := range objs {
		if o.Kind != "Deployment" && o.Kind != "DaemonSet" {
			continue
		}
		w := workload{obj: o}
		if err := o.Spec.Decode(&w.spec); err != nil {
			t.Fatalf("%s: %s %s: %v", o.file, o.Kind, o.Metadata.Name, err)
		}
		ws = append(ws, w)
	}
	return ws
}

// isPasvgate tells pasvgate's containers from the servers next to them.
func isPasvgate(c container) bool { return strings.Contains(c.Image, "/pasvgate:") }

// manifestCaps returns the capabilities the manifests add to pasvgate's
// containers (all the same), as setpriv names them.
func manifestCaps(t testing.TB) []string {
	t.Helper()
	var caps []string
	for _, w := range workloads(t, loadManifests(t)) {
		for _, c := range w.spec.Template.Spec.Containers {
			if !isPasvgate(c) || c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
				continue
			}
			var cs []string
			for _, a := range c.SecurityContext.Capabilities.Add {
				cs = append(cs, strings.ToLower(a))
			}
			slices.Sort(cs)
			if caps != nil && !slices.Equal(cs, caps) {
				t.Fatalf("%s: pasvgate containers add different capabilities: %v and %v", w.obj.file, caps, cs)
			}
			caps = cs
		}
	}
	if caps == nil {
		t.Fatal("no pasvgate container adds capabilities")
	}
	return caps
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// TestKubernetesManifests checks every object in kubernetes/: kinds and
// names; pasvgate's containers drop all capabilities and add exactly the
// ones its image's file capabilities need, run as the image's non-root
// user, and use only flags `pasvgate run -h` lists; the ConfigMap holds a
// config with known keys only; Services match the data ports of the
// pasvgate they front.
//
// Not a schema check: kubeconform installs from the Go module proxy, but
// fetches its JSON schemas from GitHub at run time, which this machine
// cannot reach.
func TestKubernetesManifests(t *testing.T) {
	objs := loadManifests(t)
	flags := runFlags(t)
	_, final := dockerfile(t)
	uid := int64(imageUser(t, final))
	var binCaps []string
	for path, cs := range imageCaps(t, final) {
		if strings.HasSuffix(path, "/pasvgate") {
			binCaps = cs
		}
	}
	configMaps := map[string]map[string]string{}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Kind)
		want, ok := apiVersions[o.Kind]
		if !ok {
			t.Errorf("%s: kind %s: not one these tests know", o.file, o.Kind)
		} else if o.APIVersion != want {
			t.Errorf("%s: %s with apiVersion %q, want %s", o.file, o.Kind, o.APIVersion, want)
		}
		if !dnsLabel.MatchString(o.Metadata.Name) {
			t.Errorf("%s: %s name %q is not a DNS label", o.file, o.Kind, o.Metadata.Name)
		}
		if o.Kind != "Namespace" && o.Metadata.Namespace != "pasvgate" {
			t.Errorf("%s: %s %s in namespace %q, want pasvgate", o.file, o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
		if o.Kind == "ConfigMap" {
			configMaps[o.Metadata.Name] = o.Data
			for k, v := range o.Data {
				if strings.HasSuffix(k, ".yaml") {
					if err := decodeKnown([]byte(v), configKeys(t)); err != nil {
						t.Errorf("%s: ConfigMap %s, %s: %v", o.file, o.Metadata.Name, k, err)
					}
				}
			}
		}
	}
	for _, k := range []string{"DaemonSet", "Deployment", "ConfigMap"} {
		if !slices.Contains(kinds, k) {
			t.Errorf("no %s in the manifests", k)
		}
	}

	ws := workloads(t, objs)
	var hostNet, podNet int
	for _, w := range ws {
		where := w.obj.file + ": " + w.obj.Kind + " " + w.obj.Metadata.Name
		ps := w.spec.Template.Spec
		for k, v := range w.spec.Selector.MatchLabels {
			if w.spec.Template.Metadata.Labels[k] != v {
				t.Errorf("%s: selector %s=%s does not match the pod template", where, k, v)
			}
		}
		if ps.HostNetwork {
			hostNet++
			if ps.DNSPolicy != "ClusterFirstWithHostNet" {
				t.Errorf("%s: hostNetwork with dnsPolicy %q, want ClusterFirstWithHostNet", where, ps.DNSPolicy)
			}
		} else {
			podNet++
		}
		if w.obj.Kind == "DaemonSet" && (len(ps.NodeSelector) == 0 || len(ps.Tolerations) == 0 || !ps.HostNetwork) {
			t.Errorf("%s: a gateway DaemonSet needs hostNetwork, a nodeSelector and tolerations", where)
		}
		var found bool
		for _, c := range ps.Containers {
			if c.Name == "" || c.Image == "" {
				t.Errorf("%s: a container without name or image", where)
			}
			if !isPasvgate(c) {
				continue
			}
			found = true
			where := where + ", container " + c.Name
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil {
				t.Errorf("%s: no securityContext.capabilities", where)
				continue
			}
			if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
				t.Errorf("%s: drops %v, want [ALL]", where, sc.Capabilities.Drop)
			}
			var add []string
			for _, a := range sc.Capabilities.Add {
				add = append(add, strings.ToLower(a))
			}
			// Fewer than the binary's file capabilities and the kernel
			// refuses to run it (TestFileCapabilities); more is more than
			// TestLeastPrivilege proves needed.
			if !slices.Equal(sorted(add), binCaps) {
				t.Errorf("%s: adds %v, want exactly the image's file capabilities %v", where, add, binCaps)
			}
			if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != uid {
				t.Errorf("%s: want runAsNonRoot: true and runAsUser: %d (the image's USER)", where, uid)
			}
			if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation: false sets no_new_privs, which ignores the file capabilities", where)
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s: privileged", where)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: want readOnlyRootFilesystem: true", where)
			}
			if len(c.Command) > 0 {
				t.Errorf("%s: command overrides the image's ENTRYPOINT", where)
			}
			if len(c.Args) == 0 || c.Args[0] != "run" {
				t.Errorf("%s: args %v, want run ...", where, c.Args)
			}
			for _, f := range flagsIn(c.Args) {
				if !flags[f] {
					t.Errorf("%s: --%s is not a flag pasvgate run -h lists", where, f)
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(strings.Join(c.Args, " "), -1) {
				if !env[m[1]] {
					t.Errorf("%s: args use $(%s), which env does not define", where, m[1])
				}
			}
			for _, vm := range c.VolumeMounts {
				for _, v := range ps.Volumes {
					if v.Name == vm.Name && v.ConfigMap != nil && configMaps[v.ConfigMap.Name] == nil {
						t.Errorf("%s: mounts ConfigMap %s, which the manifests do not define", where, v.ConfigMap.Name)
					}
				}
			}
		}
		if !found {
			t.Errorf("%s: no pasvgate container", where)
		}
	}
	if hostNet < 2 || podNet < 1 {
		t.Errorf("%d host-network and %d pod-network workloads, want the DaemonSet and a sidecar of each kind", hostNet, podNet)
	}

	// A Service in front of pasvgate must carry port 21 and every data
	// port, and keep the client's address (the mapping admits only it).
	for _, o := range objs {
		if o.Kind != "Service" {
			continue
		}
		var ss serviceSpec
		if err := o.Spec.Decode(&ss); err != nil {
			t.Fatal(err)
		}
		where := o.file + ": Service " + o.Metadata.Name
		if ss.ExternalTrafficPolicy != "Local" {
			t.Errorf("%s: externalTrafficPolicy %q, want Local", where, ss.ExternalTrafficPolicy)
		}
		var target *workload
		for i, w := range ws {
			match := len(ss.Selector) > 0
			for k, v := range ss.Selector {
				match = match && w.spec.Template.Metadata.Labels[k] == v
			}
			if match {
				target = &ws[i]
			}
		}
		if target == nil {
			t.Errorf("%s selects no workload", where)
			continue
		}
		var dataPorts string
		for _, c := range target.spec.Template.Spec.Containers {
			if i := slices.Index(c.Args, "--data-ports"); isPasvgate(c) && i >= 0 && i+1 < len(c.Args) {
				dataPorts = c.Args[i+1]
			}
		}
		pr, err := nat.ParsePortRange(dataPorts)
		if err != nil {
			t.Errorf("%s: its pasvgate has --data-ports %q: %v", where, dataPorts, err)
			continue
		}
		var got []int
		for _, p := range ss.Ports {
			if p.Port != p.TargetPort {
				t.Errorf("%s: port %d -> %d: a data port must keep its number, which is what the 227 reply names", where, p.Port, p.TargetPort)
			}
			got = append(got, p.Port)
		}
		want := []int{21}
		for p := int(pr.Low); p <= int(pr.High); p++ {
			want = append(want, p)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: ports %v, want 21 and the data ports %s", where, got, dataPorts)
		}
	}
}

// manifestRuns returns every pasvgate run the manifests make, for
// TestConfigsStart: the args with each $(VAR) from the downward API
// replaced by sub, and ConfigMap mounts replaced by a directory holding
// the ConfigMap's files.
func manifestRuns(t *testing.T, sub string) map[string][]string {
	t.Helper()
	objs := loadManifests(t)
	cms := map[string]map[string]string{}
	for _, o := range objs {
		if o.Kind == "ConfigMap" {
			cms[o.Metadata.Name] = o.Data
		}
	}
	runs := map[string][]string{}
	for _, w := range workloads(t, objs) {
		ps := w.spec.Template.Spec
		for _, c := range ps.Containers {
			if !isPasvgate(c) {
				continue
			}
			mounts := map[string]string{}
			for _, vm := range c.VolumeMounts {
				for _, v := range ps.Volumes {
					if v.Name != vm.Name || v.ConfigMap == nil {
						continue
					}
					dir := sharedDir(t)
					for k, data := range cms[v.ConfigMap.Name] {
						if err := os.WriteFile(filepath.Join(dir, k), []byte(data), 0o644); err != nil {
							t.Fatal(err)
						}
					}
					mounts[vm.MountPath] = dir
				}
			}
			var args []string
			for _, a := range c.Args {
				a = regexp.MustCompile(`\$\([A-Z_]+\)`).ReplaceAllLiteralString(a, sub)
				for mp, dir := range mounts {
					if strings.HasPrefix(a, mp+"/") {
						a = dir + strings.TrimPrefix(a, mp)
					}
				}
				args = append(args, a)
			}
			runs[filepath.Base(w.obj.file)+"/"+w.obj.Metadata.Name+"/"+c.Name] = args
		}
	}
	return runs
}
