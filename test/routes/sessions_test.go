package routes

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// metricsAddr is pasvgate's admin listener in these tests: loopback of
// the gw namespace, where `pasvgate sessions` runs too.
const metricsAddr = "127.0.0.1:9121"

// held is a session the test keeps in a known state, and what the live
// view must show for it.
type held struct {
	name    string
	s       *session
	user    string
	state   string
	mapping netip.AddrPort // the 227's address; zero if none
}

// testSessions holds four sessions open in known states (one that sent
// USER only, one logged in and idle, one with a PASV mapping open, one
// with an upload stalled after its 150: "my upload hangs") and checks
// `pasvgate sessions`, as a table and as JSON, against them: one row
// each and no other, with the client's port, the server, the user, the
// state and the mapping's port.
func (e *env) testSessions(t *testing.T) {
	e.startPasvgate(t, []string{lab.GWPublicAddr + ":21"},
		"--listen", lab.GWPublicAddr+":21",
		"--upstream", e.plain.addr,
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", "40000-40999",
		"--metrics", metricsAddr)

	login := &held{name: "login", s: dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr), user: "visitor", state: "login"}
	if _, err := lab.RawCmd(login.s.c, 331, "USER visitor"); err != nil {
		t.Fatal(err)
	}
	idle := &held{name: "idle", s: dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr), user: lab.TestUser, state: "idle"}
	idle.s.login(t)
	mapped := &held{name: "mapped", s: dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr), user: lab.TestUser, state: "idle"}
	mapped.s.login(t)
	mapped.mapping = mapped.s.pasv(t)
	upload := &held{name: "upload", s: dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr), user: lab.TestUser, state: "transfer"}
	upload.s.login(t)
	upload.mapping = upload.s.pasv(t)
	dc, err := e.l.Dial(t.Context(), e.l.Client, lab.ClientAddr, upload.mapping.String())
	if err != nil {
		t.Fatalf("upload's data connection: %v", err)
	}
	defer dc.Close() // ends the upload: the server then sends 226
	if _, err := lab.RawCmd(upload.s.c, 150, "STOR stalled.bin"); err != nil {
		t.Fatal(err)
	}
	all := []*held{login, idle, mapped, upload}

	out, err := e.l.Exec(t.Context(), e.l.GW, e.pasvgate, "sessions", "--metrics", metricsAddr)
	if err != nil {
		t.Fatalf("pasvgate sessions: %v", err)
	}
	rows, err := parseTable(out)
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(rows) != len(all) {
		t.Errorf("%d rows, want %d (the sessions held):\n%s", len(rows), len(all), out)
	}
	for _, h := range all {
		client := fmt.Sprintf("%s:%d", lab.ClientAddr, h.s.port())
		var row map[string]string
		for _, r := range rows {
			if r["CLIENT"] == client {
				row = r
			}
		}
		if row == nil {
			t.Errorf("session %s: no row with CLIENT %s:\n%s", h.name, client, out)
			continue
		}
		// The cell names the public ADDR:PORT first (then the target,
		// the path, ...): the whole address is what must be there.
		wantMapping := ""
		if h.mapping.IsValid() {
			wantMapping = h.mapping.String()
		}
		// ROUTE is empty ("-"): the default route has no name.
		for col, want := range map[string]string{"ROUTE": "", "SERVER": e.plain.addr, "USER": h.user, "STATE": h.state} {
			if row[col] != want {
				t.Errorf("session %s: %s %q, want %q", h.name, col, row[col], want)
			}
		}
		if got := row["MAPPING"]; wantMapping == "" && got != "" || !strings.Contains(got, wantMapping) {
			t.Errorf("session %s: MAPPING %q, want %q", h.name, got, cmpOr(wantMapping, "none"))
		}
	}

	// The same through --json, where the mapping's public address is
	// whole.
	js, err := e.l.Exec(t.Context(), e.l.GW, e.pasvgate, "sessions", "--metrics", metricsAddr, "--json")
	if err != nil {
		t.Fatalf("pasvgate sessions --json: %v", err)
	}
	infos, err := decodeSessions(js)
	if err != nil {
		t.Fatalf("%v:\n%s", err, js)
	}
	if len(infos) != len(all) {
		t.Errorf("--json: %d sessions, want %d", len(infos), len(all))
	}
	for _, h := range all {
		client := fmt.Sprintf("%s:%d", lab.ClientAddr, h.s.port())
		var got *sessionJSON
		for i := range infos {
			if infos[i].Client == client {
				got = &infos[i]
			}
		}
		switch {
		case got == nil:
			t.Errorf("--json: session %s (%s) missing", h.name, client)
		case got.User != h.user || got.State != h.state || got.Server != e.plain.addr:
			t.Errorf("--json: session %s: user %q state %q server %q, want %q %q %q",
				h.name, got.User, got.State, got.Server, h.user, h.state, e.plain.addr)
		case h.mapping.IsValid() && (got.Mapping == nil || got.Mapping.Public != h.mapping.String()):
			t.Errorf("--json: session %s: mapping %+v, want public %v", h.name, got.Mapping, h.mapping)
		case !h.mapping.IsValid() && got.Mapping != nil:
			t.Errorf("--json: session %s: mapping %+v, want none", h.name, got.Mapping)
		case h == upload && (got.Transfer == nil || got.Transfer.Command != "STOR" || !got.Transfer.Started):
			t.Errorf("--json: the stalled upload's transfer is %+v, want STOR with its 150 come", got.Transfer)
		case h != upload && got.Transfer != nil:
			t.Errorf("--json: session %s: transfer %+v, want none", h.name, got.Transfer)
		}
	}
	if t.Failed() {
		t.Logf("pasvgate sessions:\n%s\n--json:\n%s", out, js)
	}

	// The stalled upload ends cleanly once its data connection closes.
	dc.Close()
	_ = upload.s.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := lab.RawCmd(upload.s.c, 2, ""); err != nil {
		t.Errorf("upload after its data connection closed: %v", err)
	}
}

// cmpOr is a if it is not empty, else b.
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// parseTable reads `pasvgate sessions`' table: a header line of column
// names, then one row per session, cells aligned under their column's
// name (text/tabwriter). A cell that is empty or "-" reads as "".
func parseTable(out string) ([]map[string]string, error) {
	lines := readLines(out)
	if len(lines) == 0 {
		return nil, fmt.Errorf("no output")
	}
	header := lines[0]
	names := strings.Fields(header)
	for _, need := range []string{"CLIENT", "SERVER", "USER", "STATE", "MAPPING"} {
		if !strings.Contains(" "+header+" ", " "+need+" ") {
			return nil, fmt.Errorf("header %q lacks column %s", header, need)
		}
	}
	starts := make([]int, len(names))
	from := 0
	for i, n := range names {
		at := strings.Index(header[from:], n)
		starts[i] = from + at
		from = starts[i] + len(n)
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		if strings.TrimSpace(line) == "" {
			continue
		}
		row := map[string]string{}
		for i, n := range names {
			lo, hi := starts[i], len(line)
			if i+1 < len(starts) {
				hi = min(starts[i+1], len(line))
			}
			cell := ""
			if lo < len(line) {
				cell = strings.TrimSpace(line[lo:hi])
			}
			if cell == "-" {
				cell = ""
			}
			row[n] = cell
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// sessionJSON is what this test reads of a session in /sessions' JSON
// (proxy.SessionInfo): decoded here, not imported, so the test checks the
// wire format.
type sessionJSON struct {
	Client  string `json:"client"`
	Server  string `json:"server"`
	User    string `json:"user"`
	State   string `json:"state"`
	Mapping *struct {
		Public string `json:"public"`
	} `json:"mapping"`
	Transfer *struct {
		Command string `json:"command"`
		Started bool   `json:"started"`
	} `json:"transfer"`
}

// decodeSessions reads `pasvgate sessions --json`: a list of sessions, or
// an object holding it under "sessions".
func decodeSessions(s string) ([]sessionJSON, error) {
	var list []sessionJSON
	if err := json.Unmarshal([]byte(s), &list); err == nil {
		return list, nil
	}
	var obj struct {
		Sessions []sessionJSON `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return nil, fmt.Errorf("decoding sessions JSON: %w", err)
	}
	return obj.Sessions, nil
}
