package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

// typedObject returns an empty object of the Kubernetes API type the
// manifests' apiVersion and kind name, or nil for a kind this test does
// not know: add it here when a manifest brings a new one.
func typedObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Service":
		return &corev1.Service{}
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}
	}
	return nil
}

// manifestDocs splits every file under kubernetes/ into its YAML
// documents, each re-encoded alone, by file and index.
func manifestDocs(t testing.TB) map[string][]byte {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	docs := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 1; ; i++ {
			var n yaml.Node
			err := dec.Decode(&n)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			out, err := yaml.Marshal(&n)
			if err != nil {
				t.Fatal(err)
			}
			docs[fmt.Sprintf("%s#%d", f, i)] = out
		}
	}
	return docs
}

// decodeStrict decodes one manifest document into its Kubernetes API type
// (k8s.io/api), refusing any field the type does not have, in any case
// but its own, and any field given twice, as the API server's strict
// field validation does: a misspelt field is an error here, not a setting
// the cluster silently drops. It decodes as the API server does
// (sigs.k8s.io/json, case-sensitive), not with encoding/json, which would
// take readOnlyRootFileSystem for readOnlyRootFilesystem.
func decodeStrict(doc []byte) error {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := sigsyaml.Unmarshal(doc, &meta); err != nil {
		return err
	}
	obj := typedObject(meta.APIVersion, meta.Kind)
	if obj == nil {
		return fmt.Errorf("%s %s: a kind this test does not know", meta.APIVersion, meta.Kind)
	}
	j, err := sigsyaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(j, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// TestManifestsDecodeStrictly: every manifest document is an object of
// the Kubernetes API, with no field its type lacks.
func TestManifestsDecodeStrictly(t *testing.T) {
	for name, doc := range manifestDocs(t) {
		if err := decodeStrict(doc); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestStrictDecodingCatchesMisspelling: the check fails for a misspelt
// field at any depth, so it can fail at all.
func TestStrictDecodingCatchesMisspelling(t *testing.T) {
	b, err := os.ReadFile("kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, typo := range [][2]string{
		{"hostNetwork:", "hostNetwrok:"},
		{"readOnlyRootFilesystem:", "readOnlyRootFileSystem:"},
		{"periodSeconds:", "periodSecond:"},
		{"matchLabels:", "matchLabel:"},
	} {
		if !bytes.Contains(b, []byte(typo[0])) {
			t.Fatalf("daemonset.yaml has no %s to misspell", typo[0])
		}
		bad := bytes.Replace(b, []byte(typo[0]), []byte(typo[1]), 1)
		failed := false
		for _, doc := range strings.Split(string(bad), "\n---\n") {
			if decodeStrict([]byte(doc)) != nil {
				failed = true
			}
		}
		if !failed {
			t.Errorf("%s misspelt as %s passed the strict decoding", typo[0], typo[1])
		}
	}
}

// TestDaemonSetAnnouncesItsNode: the DaemonSet's pasvgate announces its
// own node's address (the downward API's status.hostIP), so that each data
// connection comes back to the node that holds its mapping, whatever
// address a load balancer in front of port 21 has.
func TestDaemonSetAnnouncesItsNode(t *testing.T) {
	var ds *appsv1.DaemonSet
	for name, doc := range manifestDocs(t) {
		if !strings.HasPrefix(name, "kubernetes/daemonset.yaml#") {
			continue
		}
		var d appsv1.DaemonSet
		if err := sigsyaml.Unmarshal(doc, &d); err == nil && d.Kind == "DaemonSet" {
			ds = &d
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in kubernetes/daemonset.yaml")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	announced := ""
	for i, a := range c.Args {
		if a == "--public-addr" && i+1 < len(c.Args) {
			announced = c.Args[i+1]
		}
	}
	if announced != "$(HOST_IP)" {
		t.Fatalf("the DaemonSet announces %q, want --public-addr $(HOST_IP)", announced)
	}
	for _, e := range c.Env {
		if e.Name == "HOST_IP" {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
				t.Fatalf("HOST_IP is %+v, want the downward API's status.hostIP", e)
			}
			return
		}
	}
	t.Fatal("the DaemonSet's container has no HOST_IP")
}
