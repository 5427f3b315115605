package hostfw

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/nftables"
	"github.com/pasvgate/pasvgate/test/netns"
)

// hostFirewall is a firewall the gateway's owner runs, with a forward
// policy of drop in every family it covers, in the gateway's namespace.
type hostFirewall struct {
	name string
	bins []string
	// setUp gives the forward hook its drop policy.
	setUp func(t *testing.T, gw *netns.NS)
	// save returns the firewall's ruleset as its reload tool reads it;
	// reload loads it back, as the host's own firewall service does.
	save   func(t *testing.T, gw *netns.NS) string
	reload func(t *testing.T, gw *netns.NS, saved string)
	// flushesRuleset: the reload deletes pasvgate's tables too, so the
	// kernel has no nat hook until Run has them rebuilt, and a packet of
	// an open connection in that gap meets no NAT and is reset by the
	// gateway; the test waits for the repair before it sends.
	flushesRuleset bool
	// dump is the whole state, without counters, to compare.
	dump func(t *testing.T, gw *netns.NS) string
	// v6 is whether the firewall drops IPv6 forwarding too.
	v6 bool
}

var counters = regexp.MustCompile(`\[\d+:\d+\]|(?m)^#.*$`)

func xtablesFW(kind string) hostFirewall {
	bins := []string{"iptables-" + kind, "ip6tables-" + kind}
	return hostFirewall{
		name: "iptables-" + kind, v6: true,
		bins: append(bins, bins[0]+"-save", bins[1]+"-save", bins[0]+"-restore", bins[1]+"-restore"),
		setUp: func(t *testing.T, gw *netns.NS) {
			for _, b := range bins {
				gw.MustRun(t, b, "-w", "-P", "FORWARD", "DROP")
			}
		},
		save: func(t *testing.T, gw *netns.NS) string {
			return gw.MustRun(t, bins[0]+"-save") + "\x00" + gw.MustRun(t, bins[1]+"-save")
		},
		reload: func(t *testing.T, gw *netns.NS, saved string) {
			four, six, _ := strings.Cut(saved, "\x00")
			for i, s := range []string{four, six} {
				f := filepath.Join(t.TempDir(), "rules")
				if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
				gw.MustRun(t, "sh", "-c", bins[i]+"-restore -w < "+f)
			}
		},
		dump: func(t *testing.T, gw *netns.NS) string {
			return counters.ReplaceAllString(gw.MustRun(t, bins[0]+"-save")+gw.MustRun(t, bins[1]+"-save"), "")
		},
	}
}

// nativeFW is table inet filter as distributions ship it, reloaded with
// `nft -f` of a file that replaces that table, or, if flushRuleset, of a
// file that starts with `flush ruleset`, as Debian's /etc/nftables.conf
// does, which deletes pasvgate's own tables too.
func nativeFW(flushRuleset bool) hostFirewall {
	const table = "table inet filter {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n"
	conf, name := "table inet filter\ndelete table inet filter\n"+table, "nftables"
	if flushRuleset {
		conf, name = "flush ruleset\n"+table, "nftables-flush-ruleset"
	}
	return hostFirewall{
		name: name, v6: true, bins: []string{"nft"}, flushesRuleset: flushRuleset,
		setUp: func(t *testing.T, gw *netns.NS) {
			gw.MustRun(t, "nft", "add", "table", "inet", "filter")
			gw.MustRun(t, "nft", "add", "chain", "inet", "filter", "forward",
				"{ type filter hook forward priority filter; policy drop; }")
		},
		save: func(*testing.T, *netns.NS) string { return conf },
		reload: func(t *testing.T, gw *netns.NS, saved string) {
			f := filepath.Join(t.TempDir(), "nftables.conf")
			if err := os.WriteFile(f, []byte(saved), 0o600); err != nil {
				t.Fatal(err)
			}
			gw.MustRun(t, "nft", "-f", f)
		},
		dump: func(t *testing.T, gw *netns.NS) string {
			return gw.MustRun(t, "nft", "list", "table", "inet", "filter")
		},
	}
}

func (fw hostFirewall) require(t *testing.T) {
	for _, b := range fw.bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// syncBuf is a log sink read while it is written.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	client4, public4, server4 = netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("192.0.2.10")
	client6, public6, server6 = netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::10")
)

func mapping(id string, client, public, server netip.Addr, q uint16) rules.Mapping {
	return rules.Mapping{ID: id, Source: client, Public: netip.AddrPortFrom(public, q),
		Target: netip.AddrPortFrom(server, netns.GatewayServerPort), Created: time.Now()}
}

// TestHostFirewall runs the nftables backend on a gateway whose host
// firewall drops forwarded traffic, of each kind: without pasvgate's
// accept its data connections are dropped; Ensure adds the accept, and
// they pass, in both families; a reload of the host's firewall in the
// middle of a connection removes the accept, Run puts it back and logs
// it, and the connection carries on (TCP retransmits over the gap); Remove
// leaves the host's firewall exactly as its owner wrote it. A reload that
// flushes the whole ruleset deletes the nftables backend's tables too: Run
// has the backend rebuild them before it puts the accept back, and open
// connections that sent nothing in that gap carry on as well.
func TestHostFirewall(t *testing.T) {
	netns.RequireRoot(t)
	for _, fw := range []hostFirewall{xtablesFW("nft"), xtablesFW("legacy"), nativeFW(false), nativeFW(true)} {
		t.Run(fw.name, func(t *testing.T) {
			fw.require(t)
			testHostFirewall(t, fw)
		})
	}
}

func testHostFirewall(t *testing.T, fw hostFirewall) {
	ctx := context.Background()
	l := netns.NewGatewayLab(t, nsPrefix)
	gw := l.GW
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, tWriter{t}), nil))
	b, err := nftables.New(nftables.Config{NetNS: int(gw.Handle()), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	fw.setUp(t, gw)
	saved, baseline := fw.save(t, gw), fw.dump(t, gw)
	m := New(Config{Logger: log})
	do := func(f func() error) {
		t.Helper()
		if err := gw.Do(f); err != nil {
			t.Fatal(err)
		}
	}

	// The decision sees the drop and plans the accept.
	do(func() error {
		d := m.Choose(ctx, "", true)
		if d.Backend != Nftables || len(d.Accept) == 0 {
			t.Errorf("Choose = %+v, want nftables with an accept to add", d)
		}
		return nil
	})

	type flow struct {
		m       rules.Mapping
		client  netip.Addr
		dropped rules.Mapping
	}
	flows := []flow{{mapping("m4", client4, public4, server4, 40001), client4, mapping("d4", client4, public4, server4, 40002)}}
	if fw.v6 {
		flows = append(flows, flow{mapping("m6", client6, public6, server6, 40001), client6, mapping("d6", client6, public6, server6, 40002)})
	}
	for _, f := range flows {
		for _, mp := range []rules.Mapping{f.m, f.dropped} {
			if err := b.Install(ctx, mp); err != nil {
				t.Fatal(err)
			}
		}
		// Before the accept: the host firewall drops the connection.
		l.Refused(t, f.client, f.dropped.Public, 500*time.Millisecond)
	}

	do(func() error {
		n, err := m.Ensure(ctx)
		if err != nil || n == 0 {
			t.Fatalf("Ensure = %d, %v; want the accept added", n, err)
		}
		return nil
	})
	withAccept := fw.dump(t, gw)
	if !strings.Contains(withAccept, Comment) {
		t.Fatalf("no rule tagged %q in the host firewall:\n%s", Comment, withAccept)
	}
	do(func() error {
		if n, err := m.Ensure(ctx); n != 0 || err != nil {
			t.Errorf("a second Ensure = %d, %v; want nothing to add", n, err)
		}
		return nil
	})
	var conns []net.Conn
	for _, f := range flows {
		conns = append(conns, l.Connects(t, f.client, f.m.Public, f.client, 3*time.Second))
	}

	// Reload the host's firewall from its saved ruleset, which has no
	// accept of pasvgate's, while the connections are open; then send on
	// them while Run (every 200 ms) notices and puts the accept back.
	fw.reload(t, gw, saved)
	if got := fw.dump(t, gw); got != baseline {
		t.Fatalf("the reload did not restore the host's ruleset:\n%s\nwant:\n%s", got, baseline)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gw.Do(func() error { m.Run(runCtx, 200*time.Millisecond, b.Repair); return nil })
	}()
	start := time.Now()
	if fw.flushesRuleset {
		for !strings.Contains(logs.String(), "put it back") && time.Since(start) < 10*time.Second {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		msg := "after the reload " + flows[i].client.String()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("writing on the open connection after the reload: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("the open connection from %s did not survive the reload: %q, %v", flows[i].client, buf, err)
		}
	}
	t.Logf("open connections carried on %v after the reload", time.Since(start).Round(time.Millisecond))
	stop()
	<-done
	if tables := gw.MustRun(t, "nft", "list", "tables"); !strings.Contains(tables, "table ip pasvgate") || !strings.Contains(tables, "table ip6 pasvgate") {
		t.Errorf("pasvgate's tables are not back after the reload:\n%s", tables)
	}
	if !strings.Contains(logs.String(), "put it back") {
		t.Errorf("putting the accept back was not logged:\n%s", logs.String())
	}
	if got := fw.dump(t, gw); got != withAccept {
		t.Errorf("after the put-back the host firewall is\n%s\nwant\n%s", got, withAccept)
	}

	// Remove (rules flush) takes out pasvgate's accept and nothing else.
	do(func() error {
		n, err := m.Remove(ctx)
		if err != nil || n == 0 {
			t.Errorf("Remove = %d, %v", n, err)
		}
		return nil
	})
	if got := fw.dump(t, gw); got != baseline {
		t.Errorf("after Remove the host firewall is\n%s\nwant what its owner wrote:\n%s", got, baseline)
	}
	do(func() error {
		if n, err := m.Remove(ctx); n != 0 || err != nil {
			t.Errorf("Remove on a clean host = %d, %v; want 0, nil", n, err)
		}
		return nil
	})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}
