package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy"
)

// snapshot is a fixed view: a session logging in, one in a protected
// upload that has had its 150, one whose user name holds a blank and an
// escape sequence, and a busy one, which shows little.
func snapshot() []proxy.SessionInfo {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return []proxy.SessionInfo{{
		ID: "s1", Client: "203.0.113.10:40996", Server: "192.0.2.10:21", User: "anonymous",
		State: proxy.StateLogin, Awaiting: "PASS", Started: t0, AgeSeconds: 65.2,
		Bytes: proxy.ByteInfo{FromClient: 30, FromServer: 90},
	}, {
		ID: "s2", Route: "files", Client: "[2001:db8::10]:40997", Server: "[2001:db8::2]:21", User: "alice",
		State: proxy.StateTransfer, Awaiting: "STOR", Started: t0.Add(time.Second), AgeSeconds: 64,
		Transfer: &proxy.TransferInfo{Command: "STOR", Arg: "big file.iso", Seconds: 12.5, Started: true},
		TLS:      proxy.TLSInfo{Client: true, Server: true, ClientData: true, ServerData: true},
		Mapping: &proxy.MappingInfo{ID: "m-2", Public: "[2001:db8::1]:41004", Source: "2001:db8::10",
			Target: "[2001:db8::2]:30000", Path: "relay", Claimed: true, AgeSeconds: 13},
		Bytes: proxy.ByteInfo{FromClient: 412, FromServer: 1500, Relayed: 3 << 20},
	}, {
		ID: "s3", Client: "198.51.100.7:50000", Server: "192.0.2.11:21", User: "bob smith\x1b[2J",
		State: proxy.StateCommand, Awaiting: "OTHER", Started: t0.Add(2 * time.Second), AgeSeconds: 1.9,
		Mapping: &proxy.MappingInfo{ID: "m-3", Public: "203.0.113.2:41005", Source: "198.51.100.7",
			Target: "192.0.2.11:30001", Path: "kernel", AgeSeconds: 1},
		Bytes: proxy.ByteInfo{FromClient: 50, FromServer: 20 << 10},
	}, {
		ID: "s4", Client: "198.51.100.8:50001", State: proxy.StateBusy, Started: t0.Add(3 * time.Second),
	}}
}

// TestWriteSessions: the table's columns, one word each but the last,
// with the peer's strings made harmless.
func TestWriteSessions(t *testing.T) {
	var b bytes.Buffer
	if err := writeSessions(&b, snapshot()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "\x1b") {
		t.Fatalf("an escape sequence reached the table:\n%q", b.String())
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []struct {
		fields []string
		detail string
	}{
		{[]string{"ID", "ROUTE", "CLIENT", "SERVER", "USER", "STATE", "MAPPING", "BYTES", "AGE", "DETAIL"}, ""},
		{[]string{"s1", "-", "203.0.113.10:40996", "192.0.2.10:21", "anonymous", "login", "-", "30/90,0", "1m5s"}, "awaiting PASS"},
		{[]string{"s2", "files", "[2001:db8::10]:40997", "[2001:db8::2]:21", "alice", "transfer",
			"[2001:db8::1]:41004->[2001:db8::2]:30000,relay,claimed,13s", "412/1500,3.0M", "1m4s"}, `STOR "big file.iso" for 12s, data open`},
		{[]string{"s3", "-", "198.51.100.7:50000", "192.0.2.11:21", "bob?smith?[2J", "command",
			"203.0.113.2:41005->192.0.2.11:30001,kernel,unclaimed,1s", "50/20.0K,0", "1s"}, "awaiting a reply"},
		{[]string{"s4", "-", "198.51.100.8:50001", "-", "-", "busy", "-", "0/0,0", "0s"}, "-"},
	}
	if strings.Contains(b.String(), " \n") {
		t.Errorf("blanks at a line's end:\n%q", b.String())
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	// The columns line up: each starts where the header's does.
	detailAt := strings.Index(lines[0], "DETAIL")
	for i, l := range lines {
		f := strings.Fields(l)
		n := len(want[i].fields)
		if i == 0 {
			n--
		}
		if len(f) < n || strings.Join(f[:n], " ") != strings.Join(want[i].fields[:n], " ") {
			t.Errorf("line %d: %q, want the fields %q", i, l, want[i].fields)
		}
		if i > 0 {
			if got := strings.TrimSpace(l[min(detailAt, len(l)):]); got != want[i].detail {
				t.Errorf("line %d: DETAIL %q, want %q", i, got, want[i].detail)
			}
		}
	}
}

// TestSessionsRoundTrip: /sessions serves the snapshot as JSON, and
// `pasvgate sessions` prints it as the table, or with --json as it came;
// with no session open it prints nothing, and --json prints [].
func TestSessionsRoundTrip(t *testing.T) {
	list := snapshot()
	srv := httptest.NewServer(sessionsHandler(func() []proxy.SessionInfo { return list }))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	resp, err := http.Get(srv.URL + "/sessions")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/json" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, ct)
	}

	run := func(args ...string) (string, error) {
		var out, errs bytes.Buffer
		err := runSessions(context.Background(), args, &out, &errs)
		return out.String(), err
	}
	got, err := run("--metrics", addr)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	_ = writeSessions(&table, list)
	if got != table.String() {
		t.Errorf("printed\n%s\nwant\n%s", got, table.String())
	}
	if got, err = run("--metrics", addr, "--json"); err != nil || got != string(raw) {
		t.Errorf("--json printed %q (%v), want the body as served %q", got, err, raw)
	}

	list = nil
	if got, err = run("--metrics", addr); err != nil || got != "" {
		t.Errorf("no session: printed %q (%v), want nothing", got, err)
	}
	if got, err = run("--metrics", addr, "--json"); err != nil || got != "[]\n" {
		t.Errorf("no session, --json: printed %q (%v), want []", got, err)
	}

	// Not a pasvgate with /sessions: a failure (exit 1), not a usage error.
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	var ue usageError
	if _, err := run("--metrics", strings.TrimPrefix(other.URL, "http://")); err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "404") {
		t.Errorf("a 404: %v, want a failure naming it", err)
	}
	for _, args := range [][]string{
		{},
		{"--metrics", addr, "--config", "x.yaml"},
		{"--metrics", "nonsense"},
		{"--metrics", addr, "extra"},
	} {
		if _, err := run(args...); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// TestSessionsConfig: --config takes the admin address from the file's
// metrics key; a wildcard one is read on loopback; a file without one is
// a usage error.
func TestSessionsConfig(t *testing.T) {
	srv := httptest.NewServer(sessionsHandler(snapshot))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, metrics := range []string{"127.0.0.1:" + port, ":" + port, "0.0.0.0:" + port} {
		cfg := write("pasvgate.yaml", "upstream: 192.0.2.10:21\nmetrics: \""+metrics+"\"\n")
		var out bytes.Buffer
		if err := runSessions(context.Background(), []string{"--config", cfg}, &out, io.Discard); err != nil {
			t.Errorf("metrics %s: %v", metrics, err)
			continue
		}
		if !strings.HasPrefix(out.String(), "ID ") || strings.Count(out.String(), "\n") != 5 {
			t.Errorf("metrics %s: printed\n%s", metrics, out.String())
		}
	}
	var ue usageError
	none := write("none.yaml", "upstream: 192.0.2.10:21\n")
	if err := runSessions(context.Background(), []string{"--config", none}, io.Discard, io.Discard); !errors.As(err, &ue) || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("no metrics key: %v, want a usage error naming it", err)
	}
	if err := runSessions(context.Background(), []string{"--config", filepath.Join(dir, "missing.yaml")}, io.Discard, io.Discard); !errors.As(err, &ue) {
		t.Errorf("a missing file: %v, want a usage error", err)
	}
}

func TestSessionsURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9121":     "http://127.0.0.1:9121/sessions",
		":9121":              "http://127.0.0.1:9121/sessions",
		"0.0.0.0:9121":       "http://127.0.0.1:9121/sessions",
		"[::]:9121":          "http://[::1]:9121/sessions",
		"[2001:db8::1]:9121": "http://[2001:db8::1]:9121/sessions",
		"localhost:9121":     "http://localhost:9121/sessions",
	} {
		if got, err := sessionsURL(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"9121", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x"} {
		if got, err := sessionsURL(bad); err == nil {
			t.Errorf("%s: %q, want an error", bad, got)
		}
	}
}

// TestServeMetricsSessions: the admin listener serves /sessions to GET
// only, beside /healthz.
func TestServeMetricsSessions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a port free a moment ago, for serveMetrics to take
	stop, err := serveMetrics(addr, nil, func() error { return nil }, snapshot, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/sessions")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.HasPrefix(b, []byte(`[{"id":"s1",`)) {
		t.Errorf("GET /sessions: %d %.60q", resp.StatusCode, b)
	}
	resp, err = http.Post("http://"+addr+"/sessions", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /sessions: %d, want 405", resp.StatusCode)
	}
}
