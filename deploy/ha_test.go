package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/netns"
)

// haConfigIDs are the node names deploy/ha/keepalived.conf's "@" lines
// select (keepalived --config-id).
var haConfigIDs = []string{"pgw-a", "pgw-b"}

// TestKeepalivedConfig checks deploy/ha/keepalived.conf with keepalived's
// own parser (keepalived --config-test), as each node reads it. keepalived
// also checks that the interfaces it names exist, so it runs in a
// throw-away namespace holding pub0 and priv0. A misspelt keyword fails
// (TestKeepalivedConfigCatchesMisspelling proves it). conntrackd has no
// such check mode (1.4.7: no option parses without starting); test/ha
// runs deploy/ha/conntrackd.conf itself, edited only in its paths, so that
// file is checked there.
func TestKeepalivedConfig(t *testing.T) {
	ns := keepalivedNS(t)
	path := filepath.Join("ha", "keepalived.conf")
	for _, id := range haConfigIDs {
		if out, err := keepalivedTest(ns, path, id); err != nil {
			t.Errorf("%s as %s: %v\n%s", path, id, err, out)
		}
	}
}

// TestKeepalivedConfigCatchesMisspelling proves the check above can fail:
// one keyword misspelt, on a line of one node only, fails that node.
func TestKeepalivedConfigCatchesMisspelling(t *testing.T) {
	ns := keepalivedNS(t)
	b, err := os.ReadFile(filepath.Join("ha", "keepalived.conf"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "@pgw-b\tpriority", "@pgw-b\tpriorty", 1)
	if bad == string(b) {
		t.Fatal("deploy/ha/keepalived.conf has no \"@pgw-b\\tpriority\" line to misspell")
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := keepalivedTest(ns, path, "pgw-b"); err == nil {
		t.Errorf("keepalived --config-test accepted a misspelt keyword:\n%s", out)
	}
}

// keepalivedNS skips t without root or keepalived, and returns a
// namespace with the interfaces the example names.
func keepalivedNS(t *testing.T) *netns.NS {
	t.Helper()
	netns.RequireRoot(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skipf("keepalived not installed (test/install-deps.sh installs it): %v", err)
	}
	ns := netns.New(t, nsPrefix)
	if err := netns.Veth(ns, "pub0", ns, "priv0"); err != nil {
		t.Fatal(err)
	}
	return ns
}

func keepalivedTest(ns *netns.NS, path, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return ns.Run(ctx, "keepalived", "--config-test", "--config-id", id, "--use-file", path)
}
