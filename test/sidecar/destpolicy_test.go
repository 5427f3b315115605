package sidecar

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// destNSPrefix names this test's router lab apart from the matrix's.
const destNSPrefix = "pgscd-"

// TestDestinationPolicy: pasvgate dials intercepted connections from the
// router itself, past the router's forwarding policy, so transparent mode
// admits only the destinations --allow-dest names. With a policy that
// names another host, a LAN client's FTP to the server gets 421 and
// pasvgate never connects to it; with the default (public addresses, the
// documentation ranges included) the same client gets the server's
// greeting through the router.
func TestDestinationPolicy(t *testing.T) {
	lab.RequireRoot(t)
	if err := lab.SweepPrefix(destNSPrefix); err != nil {
		t.Logf("sweeping stale namespaces: %v", err)
	}
	bin := pasvgateBinary(t)
	l := lab.NewRouter(t, lab.RouterOptions{NSPrefix: destNSPrefix})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := l.StartServer(ctx, lab.Vsftpd, lab.ServerOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		policy []string
		want   string
	}{
		{[]string{"--allow-dest", lab.WANIntruderAddr}, "421 "},
		{nil, "220 "},
	} {
		args := append([]string{"run",
			"--listen", "0.0.0.0:" + strconv.Itoa(listenPort),
			"--intercept", lab.RouterLANIface,
			"--data-ports", dataPorts,
			"--iptables-path", l.IPTables}, tc.policy...)
		p, err := l.Start(l.GW, bin, args...)
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(15 * time.Second); !strings.Contains(p.Output(), "pasvgate started"); {
			if done, err := p.Exited(); done || time.Now().After(deadline) {
				t.Fatalf("pasvgate %v did not start: %v\n%s", tc.policy, err, p.Output())
			}
			time.Sleep(50 * time.Millisecond)
		}
		c, err := l.Dial(ctx, l.Client, "", lab.WANServerAddr+":21")
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReaderSize(c, 512).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(line, tc.want) {
			t.Errorf("--allow-dest %v: the LAN client got %q, want %q", tc.policy, line, tc.want)
		}
		p.Stop()
		out := p.Output()
		if tc.want == "421 " && (!strings.Contains(out, "not allowed") || strings.Contains(out, "session started")) {
			t.Errorf("--allow-dest %v: want a refusal logged and no session to the server:\n%s", tc.policy, out)
		}
	}
}
