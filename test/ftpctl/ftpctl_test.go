package ftpctl

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestReplies: multi-line replies are read whole, codes are checked, and
// what is not a reply is an error.
func TestReplies(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		defer b.Close()
		buf := make([]byte, 64)
		for _, r := range []string{"220-hello\r\n220 ready\r\n", "331 user ok\r\n", "xx\r\n"} {
			_, _ = b.Write([]byte(r))
			_, _ = b.Read(buf) // the next command
		}
	}()
	f := New(a, 256, 2*time.Second)
	if line, err := f.Expect(220); err != nil || line != "220 ready" {
		t.Fatalf("greeting: %q, %v", line, err)
	}
	if _, err := f.Cmd("USER x", 230); err == nil || !strings.Contains(err.Error(), "331") {
		t.Fatalf("USER answered 331, want an error naming it: %v", err)
	}
	if _, err := f.Cmd("PASS y", 230); err == nil {
		t.Fatal("a short line read as a reply")
	}
}

// TestParse: the tests' own 227 and 229 parsers.
func TestParse(t *testing.T) {
	ap, err := Parse227("227 Entering Passive Mode (203,0,113,2,156,64).")
	if err != nil || ap != netip.MustParseAddrPort("203.0.113.2:40000") {
		t.Fatalf("Parse227: %v %v", ap, err)
	}
	if _, err := Parse227("227 (300,0,0,1,1,1)"); err == nil {
		t.Fatal("Parse227 took 300")
	}
	if p, err := Parse229("229 Entering Extended Passive Mode (|||40000|)"); err != nil || p != 40000 {
		t.Fatalf("Parse229: %v %v", p, err)
	}
	if _, err := Parse229("229 (|||0|)"); err == nil {
		t.Fatal("Parse229 took port 0")
	}
}
