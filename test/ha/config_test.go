package ha

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// conntrackdConfig returns deploy/ha/conntrackd.conf as node pgw-a (or,
// with nodeB, pgw-b: sync addresses swapped) runs it in the lab: the lock
// file and control socket in dir (two conntrackd share one host's file
// system), a log file there instead of syslog, and no systemd
// notification (the lab starts it directly). Every edit must match the
// example exactly once, so an example that changes under the test fails
// here instead of drifting from what runs.
func conntrackdConfig(module string, nodeB bool, dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(module, "deploy", "ha", "conntrackd.conf"))
	if err != nil {
		return "", err
	}
	s := string(b)
	edits := [][2]string{
		{"LockFile /var/lock/conntrack.lock", "LockFile " + filepath.Join(dir, "conntrackd.lock")},
		{"Path /var/run/conntrackd.ctl", "Path " + filepath.Join(dir, "conntrackd.ctl")},
		{"LogFile off", "LogFile " + filepath.Join(dir, "conntrackd.log")},
		{"Syslog on", "Syslog off"},
		{"Systemd on", "Systemd off"},
	}
	if nodeB {
		edits = append(edits,
			[2]string{"IPv4_address 198.51.100.1\n\t\tIPv4_Destination_Address 198.51.100.2",
				"IPv4_address 198.51.100.2\n\t\tIPv4_Destination_Address 198.51.100.1"})
	}
	for _, e := range edits {
		if n := strings.Count(s, e[0]); n != 1 {
			return "", fmt.Errorf("deploy/ha/conntrackd.conf: %q occurs %d times, want 1", e[0], n)
		}
		s = strings.Replace(s, e[0], e[1], 1)
	}
	return s, nil
}
