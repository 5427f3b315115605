package interop

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Bounce attempts whose verb ends at whitespace other than a space (issue
// 12, item 1). ProFTPD ends a verb at any whitespace, so to it each of
// these is a PORT or EPRT; 192.0.2.1 is the gateway's own address towards
// the server, the one address ProFTPD's same-address check lets a PORT
// name through a gateway: a client that could send it would aim the
// server at whatever pinhole the gateway holds on that port. Ports stay
// outside pasvgate's data range (40000-40999), so that no rewritten PORT
// can contain an attempt's argument by chance.
var smuggled = []bounce{
	{"PORT<TAB> to the gateway", "PORT\t192,0,2,1,195,80", []int{500}},
	{"port<TAB> to the gateway", "port\t192,0,2,1,195,80", []int{500}},
	{"PORT<VT> to the gateway", "PORT\v192,0,2,1,195,81", []int{500}},
	{"PORT<FF> to the gateway", "PORT\f192,0,2,1,195,82", []int{500}},
	{"PORT<TAB> to the server's port 22", "PORT\t192,0,2,10,0,22", []int{500}},
	{"PORT<TAB> to another client", "PORT\t203,0,113,11,195,83", []int{500}},
	{"PORT<SP><TAB> to the gateway", "PORT \t192,0,2,1,195,84", []int{500, 501}},
	{"EPRT<TAB> to the gateway", "EPRT\t|1|192.0.2.1|50005|", []int{500}},
	{"EPRT<TAB> to the server's port 22", "EPRT\t|1|192.0.2.10|22|", []int{500}},
}

// TestVerbSmuggling sends smuggled through pasvgate to each real server
// (ProFTPD, pure-ftpd, and vsftpd for reference), then downloads with a
// TAB-separated PORT to the client's own port as the positive control:
// pasvgate must refuse every attempt with its own reply, none may reach
// the server's link (a capture there shows exactly one PORT, the
// legitimate one, rewritten to canonical form), and the download must
// work, even on servers that do not read a TAB as a separator. Before
// that, each attempt is sent to the server directly from the gateway, and
// the table shows what the server itself makes of it: where it says 200,
// the attempt was a real PORT to that server.
func TestVerbSmuggling(t *testing.T) {
	lab.RequireRoot(t)
	requirePasvgateMode(t)
	start := time.Now()
	tl := buildSome(t, false, false)
	if tl.pasvgateErr != nil {
		t.Skipf("pasvgate binary: %v", tl.pasvgateErr)
	}
	l := lab.New(t, labOptions(0, false))

	type result struct {
		server string
		b      bounce
		direct reply
		got    reply
		fails  []string
	}
	var results []result
	for _, kind := range []string{lab.ProFTPD, lab.PureFTPd, lab.Vsftpd} {
		t.Run(kind, func(t *testing.T) {
			srv, err := l.StartServer(t.Context(), kind, lab.ServerOptions{})
			if err != nil {
				if strings.Contains(err.Error(), lab.ErrMissing.Error()) {
					t.Skip(err)
				}
				t.Fatal(err)
			}
			defer srv.Proc.Stop()
			direct, err := directReplies(t.Context(), l, srv, smuggled)
			if err != nil {
				t.Fatalf("sending the attempts to %s directly: %v", kind, err)
			}
			pg, err := startPasvgateArgs(t, l, tl.pasvgate, []string{lab.GWPublicAddr + ":21"},
				append([]string{
					"--listen", lab.GWPublicAddr + ":21",
					"--upstream", lab.ServerAddr + ":21",
					"--public-addr", lab.GWPublicAddr2,
					"--data-ports", pasvgateDataPorts,
					"--log-format", "json",
				}, backendArgs(l)...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer pg.stop(t)

			capture, err := l.Capture(l.GW, lab.GWPrivateIface)
			if err != nil {
				t.Fatal(err)
			}
			logBefore := strings.Count(pg.proc.Output(), `"msg":"command refused"`)
			got, sum, err := bounceSession(t.Context(), l, side4, srv, smuggled, false, "\t")
			pkts, capErr := capture.Stop()
			if err != nil {
				// Check the attempts that were answered all the same.
				t.Errorf("session: %v", err)
			}
			if capErr != nil {
				t.Errorf("capture incomplete, the check that nothing reached the server is inconclusive: %v", capErr)
			}
			if sum != srv.DataSHA256 {
				t.Errorf("positive control: download after the attempts has sha256 %s, want %s", sum, srv.DataSHA256)
			}
			payloads := lab.Payloads(pkts)
			for i, b := range smuggled {
				r := result{server: kind, b: b, direct: direct[i], got: reply{0, "no reply"}}
				if i < len(got) {
					r.got = got[i]
				}
				if !slices.Contains(b.want, r.got.code) {
					r.fails = append(r.fails, fmt.Sprintf("reply %d %q, want %v", r.got.code, r.got.text, b.want))
				}
				if arg := strings.TrimLeft(b.cmd[4:], " \t\v\f"); len(lab.Leaks(payloads, arg)) > 0 {
					r.fails = append(r.fails, "its argument reached the server's link")
				}
				for _, f := range r.fails {
					t.Errorf("%s (%q): %s", b.what, b.cmd, f)
				}
				results = append(results, r)
			}
			// The server got one data command, the legitimate one, in the
			// canonical form: pasvgate's address, one space, no TAB.
			toServer := lab.Stream(pkts, netip.AddrPort{}, netip.AddrPortFrom(addr(lab.ServerAddr), 21))
			verbs := dataVerbs(toServer)
			told := lab.ParseActive(toServer)
			if len(verbs) != 1 || !strings.HasPrefix(verbs[0], "PORT 192,0,2,1,") || len(told) != 1 {
				t.Errorf("the server got data commands %q, want exactly the legitimate PORT, canonical, with %s", verbs, lab.GWPrivateAddr)
			}
			if strings.ContainsAny(toServer, "\t\v\f") {
				t.Errorf("whitespace other than a space reached the server: %q", toServer)
			}
			if n := strings.Count(pg.proc.Output(), `"msg":"command refused"`) - logBefore; n != len(smuggled) {
				t.Errorf("pasvgate logged %d refusals, want %d", n, len(smuggled))
			}
			if left := pg.waitDrained(t.Context()); left != "" {
				t.Error(left)
			}
		})
	}

	fmt.Fprintf(os.Stdout, "\nverb smuggling through pasvgate (%s, %v)\n", *flagIPTables, time.Since(start).Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "server\tattempt\tserver alone says\tthrough pasvgate\tresult\t")
	for _, r := range results {
		verdict := "refused, not forwarded"
		if len(r.fails) > 0 {
			verdict = "FAIL: " + strings.Join(r.fails, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d %.40s\t%d %.40s\t%s\t\n", r.server, r.b.what, r.direct.code, r.direct.text, r.got.code, r.got.text, verdict)
	}
	tw.Flush()
}

// directReplies logs in to srv from the gateway's private address, with
// nothing in between, sends each attempt and returns the server's replies:
// what the server itself makes of each line. An attempt the server does
// not answer within 5 s gets code 0 (the table shows it), and the next
// attempt a new session.
func directReplies(ctx context.Context, l *lab.Lab, srv *lab.Server, bounces []bounce) ([]reply, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var out []reply
	var c *textproto.Conn
	var nc net.Conn
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	for _, b := range bounces {
		if c == nil {
			var err error
			c, nc, err = l.RawLogin(ctx, lab.RawSession{NS: l.GW, Local: lab.GWPrivateAddr, Host: lab.ServerAddr, User: srv.User, Password: srv.Password})
			if err != nil {
				return out, err
			}
		}
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Cmd("%s", b.cmd); err != nil {
			return out, err
		}
		code, msg, err := c.ReadResponse(0)
		if err != nil && code == 0 {
			out = append(out, reply{0, "no reply in 5 s"})
			nc.Close()
			c, nc = nil, nil
			continue
		}
		out = append(out, reply{code, msg})
	}
	return out, nil
}
