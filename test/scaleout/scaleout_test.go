package scaleout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/bins"
	"github.com/pasvgate/pasvgate/test/netns"
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Namespaces of earlier runs that were killed before cleaning up.
		if err := netns.Sweep(nsPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "scaleout: sweeping old namespaces:", err)
		}
	}
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// spread counts sessions per node from each node's own counter.
func (l *lab) spread(t *testing.T) []int {
	t.Helper()
	counts := make([]int, len(l.nodes))
	for i, n := range l.nodes {
		v, err := n.metric("pasvgate_sessions_total")
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		counts[i] = int(v)
	}
	return counts
}

func spreadString(counts []int) string {
	var s []string
	for i, c := range counts {
		s = append(s, fmt.Sprintf("node%d=%d", i, c))
	}
	return strings.Join(s, " ")
}

// TestSpread runs PASV and EPSV downloads from every client address and
// checks that they spread across the nodes, that every byte arrived, that
// each PASV named its own node's address, and that all the sessions of one
// client address went to one node (what makes EPSV safe).
func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		routing routing
		nodes   int
	}{{sourceLB, 3}, {ecmpL3, 2}} {
		t.Run(strings.ReplaceAll(tc.routing.String(), " ", "_"), func(t *testing.T) {
			l := newLab(t, options{nodes: tc.nodes, routing: tc.routing})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srcs := allClients(2)
			// Each address once with PASV, once with EPSV.
			outs := l.downloads(ctx, srcs, func(i int) bool { return i >= numClients })
			byClient := l.waitSessions(t, len(srcs))
			perAddr := map[string]*node{}
			for i, o := range outs {
				if o.err != nil || o.dataErr != nil {
					t.Errorf("download %d from %s (epsv %v): %v %v", i, srcs[i], o.epsv, o.err, o.dataErr)
					continue
				}
				n := byClient[o.src]
				if n == nil {
					t.Errorf("download %d: no node logged session %s", i, o.src)
					continue
				}
				if !o.epsv && o.data.Addr().String() != n.public {
					t.Errorf("session %s on %s: 227 named %s, want %s", o.src, n, o.data, n.public)
				}
				a := o.src.Addr().String()
				if prev := perAddr[a]; prev != nil && prev != n {
					t.Errorf("client %s has sessions on %s and %s: the router does not keep a client on one node", a, prev, n)
				}
				perAddr[a] = n
			}
			counts := l.spread(t)
			t.Logf("spread (%s, %d sessions, %d client addresses, half PASV half EPSV): %s",
				tc.routing, len(srcs), numClients, spreadString(counts))
			total := 0
			for i, c := range counts {
				total += c
				if c == 0 {
					t.Errorf("node%d served no session", i)
				}
			}
			if total != len(srcs) {
				t.Errorf("nodes counted %d sessions, want %d", total, len(srcs))
			}
		})
	}
}

// waitSessions waits (bounded) until the nodes' logs name want sessions
// and returns which node served each.
func (l *lab) waitSessions(t *testing.T, want int) map[netip.AddrPort]*node {
	t.Helper()
	var m map[netip.AddrPort]*node
	for range 100 {
		if m = l.sessionsByClient(); len(m) >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m
}

// wrongNode counts the downloads whose data connection failed and checks
// each failed as a connection to a node without the mapping does: refused
// at once by a node that holds the address but has no DNAT for the port.
// Any other failure fails the test.
func wrongNode(t *testing.T, outs []outcome) (n int) {
	t.Helper()
	for i, o := range outs {
		switch {
		case o.err != nil:
			t.Errorf("download %d from %s: %v", i, o.src, o.err)
		case o.dataErr != nil:
			if !errors.Is(o.dataErr, syscall.ECONNREFUSED) {
				t.Errorf("download %d from %s: data connection to %s: %v, want connection refused", i, o.src, o.data, o.dataErr)
			}
			n++
		}
	}
	return n
}

// TestEPSVUnderL4Hash shows what the L4 hash does to each kind of data
// connection. PASV names the node's own address, which the router sends
// to that node alone: every PASV transfer works. EPSV names only a port,
// so the client connects to the service address, and the router hashes
// that connection on its own ports: with two nodes about half reach the
// other node, which refuses it. At least one of 64 must (the chance that
// none does is 2^-64 for a fair hash), and not all.
func TestEPSVUnderL4Hash(t *testing.T) {
	l := newLab(t, options{nodes: 2, routing: ecmpL4})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	srcs := allClients(2)
	pasv := l.downloads(ctx, srcs, func(int) bool { return false })
	if n := wrongNode(t, pasv); n != 0 {
		t.Errorf("%d of %d PASV data connections failed under the L4 hash, want 0", n, len(pasv))
	}
	epsv := l.downloads(ctx, srcs, func(int) bool { return true })
	n := wrongNode(t, epsv)
	t.Logf("L4 hash, 2 nodes: PASV %d/%d data connections reached the wrong node, EPSV %d/%d (%.0f%%); sessions: %s",
		0, len(pasv), n, len(epsv), 100*float64(n)/float64(len(epsv)), spreadString(l.spread(t)))
	if n == 0 || n == len(epsv) {
		t.Errorf("%d of %d EPSV data connections reached the wrong node; an independent hash of each connection gives about half", n, len(epsv))
	}
}

// TestDuplicatePublicAddr is why every node announces an address of its
// own: here both announce the service address itself, so a PASV data
// connection goes where the router's L4 hash sends it, not to the node
// that holds its mapping, and a measurable fraction fail (refused by the
// other node). At least one of 64 must.
func TestDuplicatePublicAddr(t *testing.T) {
	l := newLab(t, options{nodes: 2, routing: ecmpL4, public: func(int) string { return serviceAddr }})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	outs := l.downloads(ctx, allClients(2), func(int) bool { return false })
	for i, o := range outs {
		if o.data.IsValid() && o.data.Addr().String() != serviceAddr {
			t.Errorf("download %d: 227 named %s, want the shared %s", i, o.data, serviceAddr)
		}
	}
	n := wrongNode(t, outs)
	t.Logf("both nodes announcing %s, L4 hash: %d of %d PASV data connections reached the wrong node (%.0f%%); sessions: %s",
		serviceAddr, n, len(outs), 100*float64(n)/float64(len(outs)), spreadString(l.spread(t)))
	if n == 0 {
		t.Errorf("no data connection of %d reached the wrong node; the test shows nothing", len(outs))
	}
}

// onNode opens logged-in sessions from one client address after another
// until one lands on want, and returns it. Sessions that land elsewhere
// are closed.
func (l *lab) onNode(ctx context.Context, t *testing.T, want *node, skip map[netip.Addr]bool) *session {
	t.Helper()
	for i := range numClients {
		src := clientAddr(i)
		if skip[src] {
			continue
		}
		s, err := l.dial(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		if l.nodeOf(s.local) == want {
			skip[src] = true
			return s
		}
		s.close()
	}
	t.Fatalf("no client address of %d reached %s", numClients, want)
	return nil
}

// TestDrain takes node0 out of the balancer's map for new connections and
// sends its pasvgate SIGTERM while it holds a transfer in progress and an
// idle session. The transfer must complete byte-exact with its 226, the
// idle session must get 421, /healthz must say 503 while draining, every
// new session (from every client address, those that hashed to node0
// included) must go to node1 and succeed, and node0's pasvgate must exit 0
// once the transfer is done.
func TestDrain(t *testing.T) {
	l := newLab(t, options{nodes: 2, routing: sourceLB, fileSize: 4 << 20, slow: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n0, n1 := l.nodes[0], l.nodes[1]
	used := map[netip.Addr]bool{}

	// The transfer: PASV names node0's own address; the client reads a
	// little, then stops, so the server blocks with most of the file
	// unsent and the transfer stays in progress.
	a := l.onNode(ctx, t, n0, used)
	defer a.close()
	to, err := a.passive(false)
	if err != nil {
		t.Fatal(err)
	}
	if to.Addr().String() != n0.public {
		t.Fatalf("227 named %s, want node0's %s", to, n0.public)
	}
	dc, err := a.dialData(ctx, to, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, err := a.Cmd("RETR "+fileName, 150, 125); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	const head = 256 << 10
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	if _, err := io.CopyN(h, dc, head); err != nil {
		t.Fatalf("reading the first %d bytes: %v", head, err)
	}
	idle := l.onNode(ctx, t, n0, used)
	defer idle.close()

	// Out of rotation for new connections: every bucket to node1. The
	// connections node0 holds keep their conntrack mark, so they stay.
	owner := make([]int, buckets)
	for b := range owner {
		owner[b] = 1
	}
	if err := l.setOwners(owner); err != nil {
		t.Fatal(err)
	}
	drainStart := time.Now()
	if err := n0.pg.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if line, err := idle.Expect(421); err != nil {
		t.Errorf("idle session on node0 after SIGTERM: %v", err)
	} else {
		t.Logf("idle session on node0 got %q after %v", line, time.Since(drainStart).Round(time.Millisecond))
	}
	if code, err := n0.healthz(); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("node0 /healthz while draining: %d %v, want 503", code, err)
	}

	// New sessions, from every client address, PASV and EPSV by turns:
	// all on node1, all byte-exact, the transfer on node0 still held.
	before := len(l.sessionsByClient())
	srcs := allClients(1)
	outs := l.downloads(ctx, srcs, func(i int) bool { return i%2 == 1 })
	byClient := l.waitSessions(t, before+len(srcs))
	newCounts := make([]int, len(l.nodes))
	for i, o := range outs {
		if n := byClient[o.src]; n != nil {
			newCounts[n.i]++
		}
		if o.err != nil || o.dataErr != nil {
			t.Errorf("new session %d from %s (epsv %v) during the drain: %v %v", i, srcs[i], o.epsv, o.err, o.dataErr)
			continue
		}
		if n := byClient[o.src]; n != n1 {
			t.Errorf("new session %s went to %v during node0's drain, want node1", o.src, n)
		}
		if !o.epsv && o.data.Addr().String() != n1.public {
			t.Errorf("new session %s: 227 named %s, want node1's %s", o.src, o.data, n1.public)
		}
	}
	select {
	case <-n0.pg.Done():
		t.Fatalf("node0's pasvgate exited while its transfer was in progress: %v", n0.pg.Err())
	default:
	}

	// The rest of the transfer.
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	rest, err := io.Copy(h, dc)
	if err != nil {
		t.Errorf("reading the rest of the transfer after %d bytes: %v", head+rest, err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), fmt.Sprintf("%x", sha256.Sum256(l.file)); got != want || head+rest != int64(len(l.file)) {
		t.Errorf("transfer through the draining node: %d bytes sha256 %s, want %d bytes sha256 %s", head+rest, got, len(l.file), want)
	}
	if line, err := a.Expect(226, 250); err != nil {
		t.Errorf("transfer through the draining node, final reply: %v", err)
	} else {
		t.Logf("transfer through the draining node: %d bytes byte-exact, %q", head+rest, line)
	}
	select {
	case <-n0.pg.Done():
		if n0.pg.Err() != nil {
			t.Errorf("node0's pasvgate after the drain: %v", n0.pg.Err())
		}
		t.Logf("node0's pasvgate exited %v after SIGTERM; new sessions during the drain: %s",
			time.Since(drainStart).Round(time.Millisecond), spreadString(newCounts))
	case <-time.After(15 * time.Second):
		t.Errorf("node0's pasvgate still running 15s after its last transfer ended")
	}
}

// TestNexthopRemovalBreaksSessions is why TestDrain drains through the
// balancer and not by removing a node's ECMP nexthop: the router's ECMP
// route is stateless, so once node0's nexthop is gone every packet to the
// service address, those of node0's open control connections too, goes
// to node1, which holds no such connection and resets it. The transfer's
// data still arrives (PASV named node0's own address, which keeps its
// host route), but the session it belongs to is lost.
func TestNexthopRemovalBreaksSessions(t *testing.T) {
	l := newLab(t, options{nodes: 2, routing: ecmpL3, fileSize: 1 << 20, slow: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n0 := l.nodes[0]
	a := l.onNode(ctx, t, n0, map[netip.Addr]bool{})
	defer a.close()
	to, err := a.passive(false)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := a.dialData(ctx, to, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, err := a.Cmd("RETR "+fileName, 150, 125); err != nil {
		t.Fatal(err)
	}
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	if _, err := io.CopyN(io.Discard, dc, 64<<10); err != nil {
		t.Fatal(err)
	}
	l.router.MustRun(t, "ip", "route", "replace", serviceAddr+"/32", "via", nodeSide(1))
	got, err := io.Copy(io.Discard, dc)
	if err != nil || 64<<10+got != int64(len(l.file)) {
		t.Errorf("data connection after the nexthop removal: %d bytes, %v; want all %d (its route did not change)", 64<<10+got, err, len(l.file))
	}
	line, err226 := a.Expect(226)
	_, errQuit := a.Cmd("QUIT", 221)
	t.Logf("after node0's nexthop was removed: data %d of %d bytes; final reply %q %v; QUIT: %v", 64<<10+got, len(l.file), line, err226, errQuit)
	if err226 == nil && errQuit == nil {
		t.Errorf("the session on node0 survived the removal of its nexthop; the stateless route should have sent its packets to node1")
	}
	if errQuit != nil && !errors.Is(errQuit, syscall.ECONNRESET) && !errors.Is(errQuit, syscall.EPIPE) {
		t.Errorf("QUIT after the nexthop removal: %v, want a reset (node1 holds no such connection)", errQuit)
	}
}
