package lab

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseActive(t *testing.T) {
	got := ParseActive("PORT 203,0,113,10,156,64\r\nport 1,2,3,4,0,21\r\nPORT 1,2,3,256,0,1\r\n" +
		"EPRT |1|192.0.2.1|40001|\r\nEPRT !2!2001:db8:2::1!40002!\r\nEPRT |2|192.0.2.1|1|\r\n" +
		"EPRT |1|1.2.3.4|0|\r\nEPRT |3|1.2.3.4|5|\r\nEPRTX |1|1.2.3.4|5|\r\n")
	want := []ActiveCommand{
		{"PORT", netip.MustParseAddrPort("203.0.113.10:40000")},
		{"PORT", netip.MustParseAddrPort("1.2.3.4:21")},
		{"EPRT", netip.MustParseAddrPort("192.0.2.1:40001")},
		{"EPRT", netip.MustParseAddrPort("[2001:db8:2::1]:40002")},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestConnects(t *testing.T) {
	a := netip.MustParseAddrPort
	pkts := []Packet{
		{Src: a("192.0.2.10:20"), Dst: a("192.0.2.1:40001"), SYN: true},
		{Src: a("192.0.2.1:40001"), Dst: a("192.0.2.10:20"), SYN: true, ACK: true},
		{Src: a("192.0.2.10:20"), Dst: a("192.0.2.1:40001"), ACK: true},
	}
	want := []Connect{{netip.MustParseAddr("192.0.2.10"), a("192.0.2.1:40001")}}
	if got := Connects(pkts); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestLeaksIPv6FoldsCase(t *testing.T) {
	p := [][]byte{[]byte("EPRT |2|2001:DB8:2::1|40000|\r\n"), []byte("200 ok 2001:db8:1::10\r\n")}
	if got := Leaks(p, "2001:db8:2:"); len(got) != 1 || !strings.Contains(got[0], "2001:DB8:2::1") {
		t.Errorf("upper-case IPv6 not found, or excerpt not from the original: %q", got)
	}
	if got := Leaks(p, "2001:db8:3:"); len(got) != 0 {
		t.Errorf("absent prefix found: %q", got)
	}
}

// TestGrid checks the table's text: statuses with times, "-" cells not
// counted, SetRow filling only what is unset, rows in declared order, and
// each reason once with its cells.
func TestGrid(t *testing.T) {
	g := NewGrid("suite", []string{"client", "cmd"}, []string{"get", "put"})
	g.Row("b", "PORT")
	g.Row("a", "EPRT")
	g.Set([]string{"a", "EPRT"}, "get", StatusOK, "", 1500*time.Millisecond)
	g.Set([]string{"a", "EPRT"}, "put", StatusNone, "", 0)
	g.Set([]string{"b", "PORT"}, "get", StatusFail, "broke", time.Second)
	g.SetRow([]string{"b", "PORT"}, StatusSkip, "not installed") // keeps get
	var b strings.Builder
	g.Print(&b, 2*time.Second)
	out := b.String()
	for _, want := range []string{"suite (2s)", "b       PORT  FAIL 1.0s  skip", "a       EPRT  ok 1.5s    -",
		"cells: 1 ok, 1 FAIL, 1 skip, 0 n/a", "FAIL: broke\n      in b/PORT/get\n", "skip: not installed\n      in b/PORT/put\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "b       PORT") > strings.Index(out, "a       EPRT") {
		t.Errorf("rows not in declared order:\n%s", out)
	}
}
