package rulestest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/test/netns"
)

// MeasureEnv names the environment variable that turns on the one-shot
// window measurement (MeasureWindow), which takes tens of seconds and only
// logs figures.
const MeasureEnv = "PASVGATE_MEASURE_ONESHOT"

// Window is one row of MeasureWindow: how often a second connection from
// the client, started Delay after the first, got through as well.
type Window struct {
	Delay          time.Duration
	Tries, Through int
}

// MeasureWindow measures what is left of a mapping's one-shot window on a
// real kernel: for each delay, tries times, it installs a fresh mapping of
// l's client made by mk (with a public port of its own), starts a first
// connection to it and, delay later, a second one from another source
// port, and counts the second connections that got through (a dial that
// succeeds: nothing but a DNAT to the echo server answers on the public
// port). The first connection must always get through. Each mapping is
// removed before the next. The delay is between the starts of the two
// dials in userspace, which is close to, but not exactly, the gap between
// the two SYNs.
func MeasureWindow(t *testing.T, b rules.Backend, l *netns.GatewayLab, from netip.Addr,
	mk func(id string, q uint16) rules.Mapping, delays []time.Duration, tries int) []Window {
	t.Helper()
	ctx := context.Background()
	var out []Window
	n := 0
	for _, d := range delays {
		w := Window{Delay: d, Tries: tries}
		for range tries {
			n++
			m := mk(fmt.Sprintf("m-w%d", n), uint16(41000+n%20000))
			if err := b.Install(ctx, m); err != nil {
				t.Fatalf("Install %v: %v", m, err)
			}
			var wg sync.WaitGroup
			var firstErr error
			wg.Go(func() {
				_, firstErr = l.Dial(t, from, m.Public, 2*time.Second)
			})
			// A busy wait: a sleep of tens of microseconds would last a
			// scheduler tick.
			for start := time.Now(); time.Since(start) < d; {
			}
			if _, err := l.Dial(t, from, m.Public, 500*time.Millisecond); err == nil {
				w.Through++
			}
			wg.Wait()
			if firstErr != nil {
				t.Fatalf("delay %v: first connection: %v", d, firstErr)
			}
			if err := b.Remove(ctx, m); err != nil {
				t.Fatalf("Remove %s: %v", m.ID, err)
			}
			for len(l.Seen) > 0 {
				<-l.Seen
			}
		}
		t.Logf("second connection %v after the first: %d of %d got through", d, w.Through, w.Tries)
		out = append(out, w)
	}
	return out
}

// RequireMeasure skips t unless MeasureEnv is set.
func RequireMeasure(t *testing.T) {
	if os.Getenv(MeasureEnv) == "" {
		t.Skipf("set %s=1 to measure", MeasureEnv)
	}
}
