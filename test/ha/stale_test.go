package ha

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestStaleState leaves a pending mapping (a PASV whose data connection
// never comes) on the master and kills the master's processes, twice:
//   - on pgw-a, pasvgate stays dead until the mapping's kernel timeout
//     (--data-connect-timeout) has passed: the nftables elements expire
//     by themselves;
//   - on pgw-b, pasvgate starts again at once: its start-up sweep removes
//     the mapping.
//
// Each time the other node never had the mapping (conntrackd syncs
// connections, not nftables elements), the restarted keepalived removes
// the addresses its killed predecessor left, and after a download through
// the new master `pasvgate rules list` is empty on both nodes.
func TestStaleState(t *testing.T) {
	p := newPair(t, 0)
	for round, restartAtOnce := range []bool{false, true} {
		m := p.master()
		if m < 0 {
			t.Fatalf("round %d: no master", round)
		}
		other := 1 - m
		c, err := p.pendingMapping()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if got := p.rules(m); got == "" {
			t.Fatalf("round %d: %s lists no mapping after PASV", round, p.nodes[m].id)
		}
		p.killProcs(m)
		c.Close()
		if err := p.waitMaster(other, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := p.rules(other); got != "" {
			t.Errorf("round %d: %s, the new master, has mappings it never made:\n%s", round, p.nodes[other].id, got)
		}
		if !restartAtOnce {
			// pasvgate is dead here: only the kernel timeout can help.
			start := time.Now()
			if !lab.WaitFor(pendingTimeout+3*time.Second, func() bool { return p.rules(m) == "" }) {
				t.Errorf("round %d: %s's pending mapping did not expire in %v:\n%s", round, p.nodes[m].id, pendingTimeout+3*time.Second, p.rules(m))
			}
			t.Logf("round %d: %s's pending mapping expired %v after the kill (timeout %v), pasvgate dead", round, p.nodes[m].id, time.Since(start).Round(100*time.Millisecond), pendingTimeout)
		}
		p.restoreProcs(m)
		if restartAtOnce {
			if got := p.rules(m); got != "" {
				t.Errorf("round %d: %s still has mappings after pasvgate's start-up sweep:\n%s", round, p.nodes[m].id, got)
			}
		}
		if p.holds(m) || p.holdsPrivate(m) {
			t.Errorf("round %d: %s still holds a virtual address after keepalived restarted", round, p.nodes[m].id)
		}
		if err := p.download(10*time.Second, fmt.Sprintf("stale-%d.bin", round)); err != nil {
			t.Fatalf("round %d: download through %s: %v", round, p.nodes[other].id, err)
		}
		p.nodes[other].pg.WaitSessions(1, 5*time.Second)
		for i := range p.nodes {
			if !lab.WaitFor(2*time.Second, func() bool { return p.rules(i) == "" }) {
				t.Errorf("round %d: %s: rules list not empty after the sessions ended:\n%s", round, p.nodes[i].id, p.rules(i))
			}
		}
	}
}

// pendingMapping logs in through the virtual address and sends PASV, so
// the master holds a mapping, and returns the open control connection.
func (p *pair) pendingMapping() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.l.Dial(ctx, p.l.Client, "", net.JoinHostPort(publicVIP, "21"))
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	for _, step := range []struct{ send, want string }{
		{"", "220"},
		{"USER " + p.srv.User, "331"},
		{"PASS " + p.srv.Password, "230"},
		{"PASV", "227"},
	} {
		if step.send != "" {
			if _, err := fmt.Fprintf(c, "%s\r\n", step.send); err != nil {
				c.Close()
				return nil, err
			}
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("after %q: %w", step.send, err)
			}
			// Skip continuation lines of multi-line replies.
			if len(line) >= 4 && line[3] == ' ' {
				if !strings.HasPrefix(line, step.want) {
					c.Close()
					return nil, fmt.Errorf("after %q: %q, want %s", step.send, line, step.want)
				}
				break
			}
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// rules returns `pasvgate rules list` on node i (empty when it has no
// mapping), or the error's text.
func (p *pair) rules(i int) string {
	out, err := p.l.Exec(context.Background(), p.nodes[i].ns, p.bin, "rules", "list", "--backend", "nftables")
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(out)
}

// holdsPrivate reports whether node i has the private virtual address.
func (p *pair) holdsPrivate(i int) bool {
	out, _ := p.l.Exec(context.Background(), p.nodes[i].ns, "ip", "-o", "addr", "show", "dev", "priv0")
	return strings.Contains(out, " "+privateVIP+"/")
}
