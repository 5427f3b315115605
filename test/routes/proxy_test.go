package routes

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// testProxyProtocol: pasvgate --proxy-protocol v1/v2 in front of test/ftpd
// --proxy-protocol. The server must log the client's own address
// (203.0.113.10 and the very port of the test's control connection) on a
// connection whose socket comes from the gateway (192.0.2.1).
//
// The cells also answer how PROXY protocol combines with --snat. A server
// that checks that a passive data connection comes from its control
// connection's client compares it with the header's source once it takes
// PROXY protocol: ftpserverlib compares with conn.RemoteAddr(), which
// go-proxyproto makes the header's source. (A server that replaces the
// session's client address with the header's, as ProFTPD's
// mod_proxy_protocol is meant to, should behave alike; the lab's ProFTPD
// has no mod_proxy_protocol, so only test/ftpd is measured here.) So:
//
//   - PROXY + --snat (default): the data connection comes from the
//     gateway, not the header's source: a checking server refuses it
//     (425); one without the check (test/ftpd's default) serves it.
//   - PROXY + --snat=false: the data connection keeps the client's
//     address, which is the header's source: served either way.
//   - no PROXY + --snat: the control connection and the data connection
//     both come from the gateway: served (the usual set-up).
//   - no PROXY + --snat=false: control from the gateway, data from the
//     client: a checking server refuses it.
//
// That is, with a same-address check, --snat must be on exactly when
// PROXY protocol is off.
func (e *env) testProxyProtocol(t *testing.T) {
	cells := []struct {
		srv      *ftpd
		proxy    string // pasvgate --proxy-protocol
		snat     bool
		wantData bool
	}{
		{e.proxied, "v1", true, true},
		{e.proxied, "v2", true, true},
		{e.proxied, "v2", false, true},
		{e.proxiedSameIP, "v1", true, false},
		{e.proxiedSameIP, "v2", true, false},
		{e.proxiedSameIP, "v1", false, true},
		{e.proxiedSameIP, "v2", false, true},
		{e.plain, "off", true, true},
		{e.plain, "off", false, false},
	}
	var summary []string
	for _, c := range cells {
		name := fmt.Sprintf("%s/snat=%t/%s", c.proxy, c.snat, c.srv.name)
		t.Run(name, func(t *testing.T) {
			since := len(c.srv.proc.Output())
			args := []string{
				"--listen", lab.GWPublicAddr + ":21",
				"--upstream", c.srv.addr,
				"--public-addr", lab.GWPublicAddr2,
				"--data-ports", "40000-40999",
				fmt.Sprintf("--snat=%t", c.snat),
			}
			if c.proxy != "off" { // off is the default
				// Checks often enough that every cell sees one.
				args = append(args, "--proxy-protocol", c.proxy, "--health-interval", "1s")
			}
			e.startPasvgate(t, []string{lab.GWPublicAddr + ":21"}, args...)
			s := dial(t, e.l, e.l.Client, lab.ClientAddr, lab.GWPublicAddr)
			s.login(t)
			announced, sum, reply := s.retr(t, e.l)
			summary = append(summary, fmt.Sprintf("%-32s data %s (%s)", name, map[bool]string{true: "served", false: "refused"}[sum != ""], reply))

			if announced.Addr().String() != lab.GWPublicAddr2 {
				t.Errorf("227 announced %v, want %s", announced, lab.GWPublicAddr2)
			}
			switch {
			case c.wantData && sum != c.srv.sha:
				t.Errorf("download: sha256 %q (reply %s), want the server's %s", sum, reply, c.srv.sha)
			case !c.wantData && (sum != "" || !strings.HasPrefix(reply, "4")):
				t.Errorf("download: sha256 %q, reply %s; want a 4xx refusal of the data connection", sum, reply)
			}

			client := fmt.Sprintf("%s:%d", lab.ClientAddr, s.port())
			// What the server saw: its log comes through a pipe, after
			// the replies the test has read.
			var want []*regexp.Regexp
			if c.proxy == "off" {
				want = append(want, regexp.MustCompile(`msg="client connected" client=`+regexp.QuoteMeta(lab.GWPrivateAddr)+`:\d+`))
			} else {
				v := strings.TrimPrefix(c.proxy, "v")
				want = append(want,
					regexp.MustCompile(`msg="PROXY header" peer=`+regexp.QuoteMeta(lab.GWPrivateAddr)+`:\d+ version=`+v+
						` command=PROXY source=`+regexp.QuoteMeta(client)+` destination=`+regexp.QuoteMeta(lab.GWPublicAddr)+`:21`),
					regexp.MustCompile(`msg="client connected" client=`+regexp.QuoteMeta(client)+` `),
					// pasvgate's health checks carry a header too (v1
					// UNKNOWN, v2 LOCAL), or the server would refuse them.
					regexp.MustCompile(`msg="PROXY header" peer=`+regexp.QuoteMeta(lab.GWPrivateAddr)+`:\d+ version=`+v+` command=LOCAL`))
			}
			if !c.wantData {
				// The server's reason, naming the two addresses it compared.
				data, control := lab.GWPrivateAddr, lab.ClientAddr
				if c.proxy == "off" {
					data, control = lab.ClientAddr, lab.GWPrivateAddr
				}
				want = append(want, regexp.MustCompile(`data connection ip address `+regexp.QuoteMeta(data)+
					` does not match control connection ip address `+regexp.QuoteMeta(control)))
			}
			var out string
			for _, re := range want {
				ok := lab.WaitFor(5*time.Second, func() bool {
					out = c.srv.proc.Output()[since:]
					return re.MatchString(out)
				})
				if !ok {
					t.Errorf("server log lacks %s", re)
				}
			}
			if c.proxy != "off" && strings.Contains(out, "no valid PROXY header") {
				t.Errorf("server refused a connection from pasvgate for its header")
			}
			if c.proxy == "off" && strings.Contains(out, "client="+client) {
				t.Errorf("server saw the client's address without PROXY protocol")
			}
			if t.Failed() {
				t.Logf("server log:\n%s", tailLines(out, 30))
			}
		})
	}
	t.Logf("PROXY protocol and --snat against test/ftpd (proxied: no same-address check; proxied-same-ip and plain: --pasv-same-ip):\n%s",
		strings.Join(summary, "\n"))
}
