package sniff

import (
	"fmt"
	"testing"
	"time"
)

// TestOmittedEventsStillCount: beyond Limits.MaxEvents a session lists no
// more data addresses, but every one still counts in the summary, with
// its data connection.
func TestOmittedEventsStillCount(t *testing.T) {
	e := NewExtractor(Limits{MaxEvents: 2})
	c := Conn{Client: client, Server: server}
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	for i := range 20 {
		host := "192,0,2,10"
		if i%2 == 1 {
			host = "192,0,2,99"
		}
		e.Data(c, ClientToServer, []byte("PASV\r\n"), now)
		e.Data(c, ServerToClient, fmt.Appendf(nil, "227 Entering Passive Mode (%s,117,%d)\r\n", host, i+1), now)
		if i == 19 {
			// The last one is attempted and not answered.
			e.Handshake(SYN, ap("203.0.113.10:50000"), ap(fmt.Sprintf("192.0.2.99:%d", 117*256+i+1)), now)
		}
		now = now.Add(time.Second)
	}
	r := e.Report()
	s := r.Sessions[0]
	if len(s.DataAddrs) != 2 || s.DataAddrsOmitted != 18 {
		t.Errorf("listed %d, omitted %d", len(s.DataAddrs), s.DataAddrsOmitted)
	}
	sum := r.Servers[0]
	if sum.Passive != 20 || sum.BadAddress != 10 || sum.Unanswered != 1 || sum.Verdict != VerdictBadAddress {
		t.Errorf("summary %+v", sum)
	}
	if s.Problems != 11 {
		t.Errorf("session counts %d problems, want 11 (10 other-host, 1 no-answer)", s.Problems)
	}
}

// TestMaxOpenAndServers: connections beyond MaxOpen are not followed and
// counted; servers beyond MaxServers are counted, not listed; and a
// connection that ended makes room.
func TestMaxOpenAndServers(t *testing.T) {
	e := NewExtractor(Limits{MaxOpen: 1, MaxServers: 1})
	now := time.Now()
	a := Conn{Client: ap("203.0.113.1:1000"), Server: ap("192.0.2.10:21")}
	b := Conn{Client: ap("203.0.113.2:1000"), Server: ap("192.0.2.11:21")}
	if !e.Begin(a, now, true) || e.Begin(b, now, true) {
		t.Fatal("MaxOpen 1 not enforced")
	}
	e.Data(b, ClientToServer, []byte("PASV\r\n"), now)
	e.End(a, now, EndFIN)
	if !e.Begin(b, now, true) {
		t.Fatal("no room after End")
	}
	r := e.Report()
	if len(r.Sessions) != 2 || len(r.Servers) != 1 || r.SessionsNotSummarized != 1 || r.Stats.SegmentsNotFollowed != 1 {
		t.Errorf("sessions %d servers %d not summarized %d not followed %d",
			len(r.Sessions), len(r.Servers), r.SessionsNotSummarized, r.Stats.SegmentsNotFollowed)
	}
	if r.Sessions[1].Ended != EndCapture {
		t.Errorf("open at the end: %v", r.Sessions[1].Ended)
	}
}

// TestStaleAnnouncementIgnored: an attempt after DataTimeout does not
// count for an old announcement; a newer announcement of the same
// address takes the attempt.
func TestStaleAnnouncementIgnored(t *testing.T) {
	e := NewExtractor(Limits{DataTimeout: 10 * time.Second})
	c1 := Conn{Client: ap("203.0.113.1:1000"), Server: server}
	c2 := Conn{Client: ap("203.0.113.2:1000"), Server: server}
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	e.Data(c1, ClientToServer, []byte("PASV\r\n"), now)
	e.Data(c1, ServerToClient, []byte("227 (192,0,2,10,117,48)\r\n"), now)
	e.Handshake(SYN, ap("203.0.113.9:5000"), ap("192.0.2.10:30000"), now.Add(11*time.Second))
	e.Data(c2, ClientToServer, []byte("PASV\r\n"), now.Add(12*time.Second))
	e.Data(c2, ServerToClient, []byte("227 (192,0,2,10,117,48)\r\n"), now.Add(12*time.Second))
	e.Handshake(SYN, ap("203.0.113.2:5000"), ap("192.0.2.10:30000"), now.Add(13*time.Second))
	e.Handshake(SYNACK, ap("192.0.2.10:30000"), ap("203.0.113.2:5000"), now.Add(13*time.Second))
	r := e.Report()
	if d := r.Sessions[0].DataAddrs[0].Data; d.SYNs != 0 {
		t.Errorf("stale announcement took an attempt: %+v", d)
	}
	if d := r.Sessions[1].DataAddrs[0].Data; d.SYNs != 1 || !d.SYNACK || d.From != ap("203.0.113.2:5000") {
		t.Errorf("new announcement: %+v", d)
	}
}
