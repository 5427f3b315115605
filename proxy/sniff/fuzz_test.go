package sniff

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// Seeds live in testdata/fuzz/FuzzExtractor, so plain `go test` runs them.

// Small limits, so that the fuzzer reaches every bound.
var fuzzLimits = Limits{MaxLine: 64, MaxOpen: 2, MaxSessions: 3, MaxEvents: 2, MaxServers: 1, DataTimeout: 5 * time.Second}

// fuzzConns are the control connections a script speaks on: three, with
// room for two, so that one is sometimes refused.
var fuzzConns = [3]Conn{
	{Client: ap("203.0.113.1:40000"), Server: ap("192.0.2.10:21")},
	{Client: ap("203.0.113.2:40001"), Server: ap("192.0.2.10:21")},
	{Client: ap("203.0.113.3:40002"), Server: ap("10.0.0.1:2121")},
}

// fuzzAddrs are the endpoints of handshakes; a script names them by
// index. The data ports of the seeds' 227 and 229 replies are here.
var fuzzAddrs = [8]netip.AddrPort{
	ap("203.0.113.1:50000"), ap("192.0.2.10:30000"), ap("192.0.2.99:30000"), ap("192.0.2.10:30001"),
	ap("203.0.113.1:50001"), ap("192.0.2.10:20"), ap("[2001:db8::1]:30000"), ap("10.0.0.1:258"),
}

// FuzzExtractor runs a script of Extractor calls encoded in data, one
// operation after another. In an operation's first byte, bits 0-2 say
// which, bits 3-4 name the connection (modulo 3) and bits 5-7 are an
// argument a:
//
//	0-3  Data in direction bit 0, then a length byte and that many bytes
//	4    Handshake of kind 1+a%3, then source and destination indexes
//	     into fuzzAddrs
//	5    End, with reason a%5
//	6    Lost in direction a&1, then a count byte
//	7    time passes (a byte of tenths of a second), then Begin, from
//	     the handshake if a&1
//
// It checks that nothing panics, that the Extractor never holds more than
// its limits allow, that nothing of an ended session stays reachable from
// the ones still open, and that the report accounts for every session.
func FuzzExtractor(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		e := NewExtractor(fuzzLimits)
		lim := e.Limits()
		now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
		open := map[Conn]bool{}
		began := 0
		// track notes a connection the Extractor has started following.
		track := func(c Conn, before int) {
			if !open[c] && e.Open() > before {
				open[c] = true
				began++
			}
		}
		next := func() int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b)
		}
		for len(data) > 0 {
			op := next()
			c, arg := fuzzConns[(op>>3&3)%3], op>>5
			before := e.Open()
			switch op & 7 {
			case 0, 1, 2, 3:
				n := min(next(), len(data))
				chunk := data[:n]
				data = data[n:]
				e.Data(c, Dir(op&1), chunk, now)
				track(c, before)
			case 4:
				e.Handshake(Handshake(1+arg%3), fuzzAddrs[next()%len(fuzzAddrs)], fuzzAddrs[next()%len(fuzzAddrs)], now)
			case 5:
				e.End(c, now, EndReason(arg%5))
				delete(open, c)
			case 6:
				e.Lost(c, Dir(arg&1), next(), now)
			case 7:
				now = now.Add(time.Duration(next()) * 100 * time.Millisecond)
				e.Begin(c, now, arg&1 != 0)
				track(c, before)
			}
			checkBounds(t, e)
		}

		r := e.Report()
		if e.Open() != 0 {
			t.Fatalf("%d connections still open after Report", e.Open())
		}
		if got := len(r.Sessions) + r.SessionsOmitted; got != began {
			t.Fatalf("report has %d sessions (%d listed, %d omitted), %d began", got, len(r.Sessions), r.SessionsOmitted, began)
		}
		summed := r.SessionsNotSummarized
		for _, s := range r.Servers {
			summed += s.Sessions
		}
		if summed != began {
			t.Fatalf("summary counts %d sessions, %d began", summed, began)
		}
		if len(r.Sessions) > lim.MaxSessions || len(r.Servers) > lim.MaxServers {
			t.Fatalf("%d sessions, %d servers listed", len(r.Sessions), len(r.Servers))
		}
		lastID, problems := 0, 0
		for _, s := range r.Sessions {
			problems += s.Problems
			if s.ID <= lastID {
				t.Fatalf("session IDs out of order: %d after %d", s.ID, lastID)
			}
			lastID = s.ID
			if len(s.DataAddrs) > lim.MaxEvents {
				t.Fatalf("session %d lists %d data addresses", s.ID, len(s.DataAddrs))
			}
			problems := 0
			for _, ev := range s.DataAddrs {
				problems += len(ev.Problems)
				if ev.Error == "" && !ev.Addr.IsValid() {
					t.Fatalf("data address without address or error: %+v", ev)
				}
				if len(ev.Line) > maxLineShown {
					t.Fatalf("line of %d bytes kept", len(ev.Line))
				}
			}
			if s.DataAddrsOmitted == 0 && problems != s.Problems {
				t.Fatalf("session %d counts %d problems, its addresses have %d", s.ID, s.Problems, problems)
			}
		}
		if r.SessionsOmitted == 0 && problems != r.Problems {
			t.Fatalf("report counts %d problems, its sessions %d", r.Problems, problems)
		}
		var text bytes.Buffer
		if err := r.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		for _, c := range text.Bytes() {
			if (c < 0x20 && c != '\n') || c > 0x7e {
				t.Fatalf("byte %#x in the text report:\n%s", c, text.String())
			}
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatal(err)
		}
	})
}

// checkBounds checks the Extractor's state against its limits, and that
// every address awaiting a connection belongs to a session still open:
// an ended session must leave nothing behind.
func checkBounds(t *testing.T, e *Extractor) {
	t.Helper()
	lim := e.Limits()
	if len(e.open) > lim.MaxOpen {
		t.Fatalf("%d open, limit %d", len(e.open), lim.MaxOpen)
	}
	if len(e.expect) > lim.MaxOpen*maxExpects || len(e.syns) > lim.MaxOpen*maxSYNWaits {
		t.Fatalf("%d expected addresses, %d attempts awaited", len(e.expect), len(e.syns))
	}
	for ap, x := range e.expect {
		if e.open[Conn{x.owner.rep.Client, x.owner.rep.Server}] != x.owner {
			t.Fatalf("address %v awaited for a session no longer open", ap)
		}
	}
	for fk, x := range e.syns {
		if e.open[Conn{x.owner.rep.Client, x.owner.rep.Server}] != x.owner {
			t.Fatalf("attempt %v awaited for a session no longer open", fk)
		}
	}
	for _, s := range e.open {
		if len(s.pending) > maxPending || len(s.expects) > maxExpects || len(s.syns) > maxSYNWaits ||
			len(s.unretired) > maxUnretired || len(s.held) > 4*lim.MaxLine || len(s.shown) > maxLineShown {
			t.Fatalf("session over its bounds: pending %d expects %d syns %d unretired %d held %d shown %d",
				len(s.pending), len(s.expects), len(s.syns), len(s.unretired), len(s.held), len(s.shown))
		}
		for d := range s.lines {
			if r := s.lines[d].r; r != nil && r.Buffered() > lim.MaxLine {
				t.Fatalf("line reader holds %d bytes, limit %d", r.Buffered(), lim.MaxLine)
			}
		}
	}
}
