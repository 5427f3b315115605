package lab

import "time"

// WaitFor polls cond every 20 ms until it holds or d has passed, and
// reports whether it held. It is for conditions with no event to wait on:
// a log line, a kernel state, a peer's view.
func WaitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
