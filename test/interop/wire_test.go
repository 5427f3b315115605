package interop

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The wire parsers are the tests' own oracle, written apart from
// proxy/ftp; they live in test/lab, shared with test/sidecar.

// parse227s returns every address announced by a 227 reply in replies.
func parse227s(replies string) []netip.AddrPort { return lab.Parse227s(replies) }

// parse229s returns the port of every 229 reply in replies.
func parse229s(replies string) []uint16 { return lab.Parse229s(replies) }

// sentCommand reports whether cmds contains the command verb.
func sentCommand(cmds, verb string) bool { return lab.SentCommand(cmds, verb) }

func TestParse227(t *testing.T) {
	got := parse227s("150 x\r\n227 Entering Passive Mode (203,0,113,2,156,64).\r\n227 =192,0,2,10,1,2\r\n227 (300,1,1,1,1,1)\r\n")
	want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:40000"), netip.MustParseAddrPort("192.0.2.10:258")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestParse229(t *testing.T) {
	got := parse229s("229 Entering Extended Passive Mode (|||40001|)\r\n229 x (!!!5!)\r\n229 (|||0|)\r\n229 (||40002|)\r\n229 (|||99999|)\r\n")
	if fmt.Sprint(got) != "[40001 5]" {
		t.Errorf("got %v", got)
	}
}

func TestSentCommand(t *testing.T) {
	cmds := "USER a\r\nepsv\r\nEPSV ALL\r\nPASVX\r\n"
	if !sentCommand(cmds, "EPSV") || sentCommand(cmds, "PASV") {
		t.Errorf("sentCommand wrong on %q", cmds)
	}
}

// rawRetr is the "raw" client of the matrix: lab's raw passive client
// (see Lab.RawPassiveRetr), inside namespace ns, from local, to host:21.
// between runs after the passive reply, with the announced address.
func rawRetr(ctx context.Context, l *lab.Lab, ns, local, host, user, password string, epsv bool,
	between func(announced netip.AddrPort) (net.Conn, error)) (string, error) {
	return l.RawPassiveRetr(ctx, lab.RawSession{NS: ns, Local: local, Host: host, User: user, Password: password}, epsv, between)
}
