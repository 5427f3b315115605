package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/conntrack"
	"github.com/pasvgate/pasvgate/test/netns"
)

// dnatBackend installs a mapping as one DNAT rule in the gateway
// namespace's nat PREROUTING: just enough kernel state for a data
// connection, for tests of what nat does around it.
type dnatBackend struct{ gw *netns.NS }

func (d dnatBackend) rule(op string, m rules.Mapping) []string {
	return []string{"-w", "-t", "nat", op, "PREROUTING", "-s", m.Source.String(), "-d", m.Public.Addr().String(),
		"-p", "tcp", "--dport", fmt.Sprint(m.Public.Port()), "-j", "DNAT", "--to-destination", m.Target.String()}
}

func (d dnatBackend) run(ctx context.Context, args []string) error {
	if out, err := d.gw.Run(ctx, "iptables", args...); err != nil {
		return fmt.Errorf("iptables %v: %w: %s", args, err, out)
	}
	return nil
}

func (d dnatBackend) Setup(context.Context) error { return nil }
func (d dnatBackend) Install(ctx context.Context, m rules.Mapping) error {
	return d.run(ctx, d.rule("-A", m))
}
func (d dnatBackend) Remove(ctx context.Context, m rules.Mapping) error {
	return d.run(ctx, d.rule("-D", m))
}
func (d dnatBackend) List(context.Context) ([]rules.Mapping, error) { return nil, nil }
func (d dnatBackend) Flush(context.Context) error                   { return nil }

// slowFlows holds each flush back for a while before the real one runs:
// long enough for a new mapping to be opened on the port and used, if
// the port came back before the flush.
type slowFlows struct {
	f       *conntrack.Flusher
	delay   time.Duration
	started chan struct{}
}

func (s slowFlows) FlushFlows(ctx context.Context, m rules.Mapping) (int, error) {
	select {
	case s.started <- struct{}{}:
	default:
	}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.f.FlushFlows(ctx, m)
}

// TestNewMappingNeverMeetsOldFlow runs item 8's case on a real kernel: a
// mapping that ends abnormally, with its data connection still up, on a
// one-port range. The port's next mapping is installed only once the old
// flow's entry is gone, and the old mapping's flush deletes that flow
// alone, never the new mapping's.
func TestNewMappingNeverMeetsOldFlow(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	l := netns.NewGatewayLab(t, "ntf-nat")
	// Something must keep conntrack on in the namespace once the last
	// DNAT rule is gone, as pasvgate's own FORWARD chain does.
	l.GW.MustRun(t, "iptables", "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	var f *conntrack.Flusher
	if err := l.GW.Do(func() (err error) { f, err = conntrack.New(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h, err := netlink.NewHandleAt(l.GW.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)

	client, public := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.1")
	pub := netip.AddrPortFrom(public, 40001)
	// entries counts the gateway's entries from the client to the port.
	entries := func() int {
		t.Helper()
		all, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range all {
			src, _ := netip.AddrFromSlice(e.Forward.SrcIP)
			dst, _ := netip.AddrFromSlice(e.Forward.DstIP)
			if e.Forward.Protocol == unix.IPPROTO_TCP && src.Unmap() == client && netip.AddrPortFrom(dst.Unmap(), e.Forward.DstPort) == pub {
				n++
			}
		}
		return n
	}
	flows := slowFlows{f: f, delay: 300 * time.Millisecond, started: make(chan struct{}, 1)}
	tb, err := New(dnatBackend{l.GW}, Config{Ports: PortRange{40001, 40001}, Flows: flows})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.Close(context.Background()) })
	r := Request{Session: "s1", Source: client, Public: public,
		Target: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), netns.GatewayServerPort)}
	ctx := context.Background()

	old, err := tb.Open(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	l.Connects(t, client, pub, client, 5*time.Second)
	old.Release(ReasonSessionEnd)
	select {
	case <-flows.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the old mapping's flush never began")
	}

	// The port's next mapping, as soon as the table hands the port out.
	var next *Mapping
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if next, err = tb.Open(ctx, r); err == nil {
			break
		}
		if !errors.Is(err, ErrExhausted) || time.Now().After(deadline) {
			t.Fatalf("opening the port's next mapping: %v", err)
		}
	}
	if n := entries(); n != 0 {
		t.Errorf("the port's next mapping was installed with %d entries of the old mapping's flow still in the table", n)
	}
	newConn := l.Connects(t, client, pub, client, 5*time.Second)
	// Let any flush still to come run.
	for deadline := time.Now().Add(5 * time.Second); tb.Stats().FlowsFlushed == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old mapping's flows were never flushed")
		}
	}
	time.Sleep(flows.delay)
	if st := tb.Stats(); st.FlowsFlushed != 1 {
		t.Errorf("%d flows flushed, want 1: the old mapping's flush deleted the new mapping's flow too", st.FlowsFlushed)
	}
	if err := netns.Echo(newConn, "still here"); err != nil {
		t.Errorf("the new mapping's connection after the old flush: %v", err)
	}
	next.Release(ReasonTransferDone)
}
