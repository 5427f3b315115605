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

// Window is one row of MeasureWindow: how often both of two connections
// from the client, the second started Delay after the first, got through.
type Window struct {
	Delay       time.Duration
	Tries, Both int
}

// MeasureWindow measures what is left of a mapping's one-shot window on a
// real kernel: for each delay, tries times, it installs a fresh mapping of
// l's client made by mk (with a public port of its own), starts a first
// connection to it and, delay later, a second one from another source
// port, and counts the tries where both got through (a dial that
// succeeds: nothing but a DNAT to the echo server answers on the public
// port). One of them must always get through: with a short delay the
// second may well be the first to reach the gateway. Each mapping is
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
			_, secondErr := l.Dial(t, from, m.Public, 2*time.Second)
			wg.Wait()
			switch {
			case firstErr == nil && secondErr == nil:
				w.Both++
			case firstErr != nil && secondErr != nil:
				t.Fatalf("delay %v: neither connection got through: %v; %v", d, firstErr, secondErr)
			}
			if err := b.Remove(ctx, m); err != nil {
				t.Fatalf("Remove %s: %v", m.ID, err)
			}
			for len(l.Seen) > 0 {
				<-l.Seen
			}
		}
		t.Logf("second connection started %v after the first: both got through %d times of %d", d, w.Both, w.Tries)
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

// WindowDelays are the delays the kernel backends' TestOneShotWindow
// measure with.
var WindowDelays = []time.Duration{0, 10 * time.Microsecond, 20 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 200 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 10 * time.Millisecond}
