package interop

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// bounce is one attempt to make the server connect somewhere other than
// the client's own unprivileged port (the FTP bounce attack, RFC 2577), or
// to use a command of the wrong family.
type bounce struct {
	what string
	cmd  string
	want []int // acceptable reply codes
}

// Bounce attempts on an IPv4 control connection from lab.ClientAddr.
var bounces4 = []bounce{
	{"PORT to the server itself", "PORT 192,0,2,10,117,48", []int{500}},
	{"PORT to a neighbour of the server", "PORT 192,0,2,11,0,80", []int{500}},
	{"PORT to another host on the client's side", "PORT 203,0,113,11,156,64", []int{500}},
	{"PORT to the gateway", "PORT 203,0,113,1,156,64", []int{500}},
	{"PORT to own port 22", "PORT 203,0,113,10,0,22", []int{500}},
	{"PORT to own port 1023", "PORT 203,0,113,10,3,255", []int{500}},
	{"PORT to own port 0", "PORT 203,0,113,10,0,0", []int{500, 501}},
	{"PORT with an octet over 255", "PORT 203,0,113,10,300,1", []int{501}},
	{"PORT with five numbers", "PORT 203,0,113,10,156", []int{501}},
	{"PORT without an argument", "PORT", []int{501}},
	{"EPRT to the server", "EPRT |1|192.0.2.10|30000|", []int{500}},
	{"EPRT, another delimiter, to the server", "EPRT !1!192.0.2.10!30000!", []int{500}},
	{"EPRT to another host on the client's side", "EPRT |1|203.0.113.11|40000|", []int{500}},
	{"EPRT to own port 22", "EPRT |1|203.0.113.10|22|", []int{500}},
	{"EPRT to own port 0", "EPRT |1|203.0.113.10|0|", []int{500, 501}},
	{"EPRT to port 65536", "EPRT |1|203.0.113.10|65536|", []int{501}},
	{"EPRT with leading zeros (octal to some parsers)", "EPRT |1|203.0.113.010|40000|", []int{501}},
	{"EPRT protocol 3", "EPRT |3|203.0.113.10|40000|", []int{501, 522}},
	{"EPRT protocol 2 on IPv4", "EPRT |2|2001:db8:1::10|40000|", []int{522}},
	{"LPRT (long address)", "LPRT 4,4,203,0,113,10,2,156,64", []int{502}},
	{"port in lower case to the server", "port 192,0,2,10,117,48", []int{500}},
	{"PORT hiding a second PORT behind a bare CR", "PORT 203,0,113,10,156,64\rPORT 192,0,2,10,0,21", []int{500, 501}},
}

// Bounce attempts on an IPv6 control connection from lab.ClientAddr6.
var bounces6 = []bounce{
	{"EPRT to the server itself", "EPRT |2|2001:db8:2::10|30000|", []int{500}},
	{"EPRT to a neighbour of the server", "EPRT |2|2001:db8:2::11|80|", []int{500}},
	{"EPRT to another host on the client's side", "EPRT |2|2001:db8:1::11|40000|", []int{500}},
	{"EPRT to the gateway", "EPRT |2|2001:db8:1::1|40000|", []int{500}},
	{"EPRT to own port 22", "EPRT |2|2001:db8:1::10|22|", []int{500}},
	{"EPRT to own port 0", "EPRT |2|2001:db8:1::10|0|", []int{500, 501}},
	{"EPRT IPv4-mapped own address", "EPRT |2|::ffff:203.0.113.10|40000|", []int{500, 501, 522}},
	{"EPRT protocol 1 on IPv6", "EPRT |1|203.0.113.10|40000|", []int{522}},
	{"PORT on IPv6", "PORT 203,0,113,10,156,64", []int{522}},
	{"PASV on IPv6", "PASV", []int{522}},
}

// TestBounce sends bounce attempts through pasvgate from a raw client on
// each family, then one legitimate PORT (IPv4) or EPRT (IPv6) and a
// download over it. Every attempt must get its refusal, be logged, and
// never reach the server: the capture on the server's link shows exactly
// one PORT/EPRT per session, the legitimate one, rewritten to the
// gateway's address, and none of the attempts' arguments anywhere. The
// legitimate transfer is the positive control: it shows the capture sees
// commands, and that refusals leave the session usable.
func TestBounce(t *testing.T) {
	lab.RequireRoot(t)
	requirePasvgateMode(t)
	start := time.Now()
	tl := buildSome(t, false, false)
	if tl.pasvgateErr != nil {
		t.Skipf("pasvgate binary: %v", tl.pasvgateErr)
	}
	l := lab.New(t, labOptions(0, true))
	srv, err := l.StartServer(t.Context(), lab.Vsftpd, lab.ServerOptions{})
	if err != nil {
		if strings.Contains(err.Error(), lab.ErrMissing.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	defer srv.Proc.Stop()
	pg, err := startPasvgateArgs(t, l, tl.pasvgate,
		[]string{lab.GWPublicAddr + ":21", net.JoinHostPort(lab.GWPublicAddr6, "21")},
		"--listen", lab.GWPublicAddr+":21",
		"--listen", net.JoinHostPort(lab.GWPublicAddr6, "21"),
		"--upstream", lab.ServerAddr+":21",
		"--upstream", net.JoinHostPort(lab.ServerAddr6, "21"),
		"--public-addr", lab.GWPublicAddr2,
		"--data-ports", pasvgateDataPorts,
		"--backend", *flagBackend,
		"--iptables-path", l.IPTables,
		"--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.stop(t)

	type result struct {
		family string
		b      bounce
		got    int
		text   string
		fails  []string
	}
	var results []result
	for _, fam := range []struct {
		side     side
		bounces  []bounce
		eprt     bool
		upstream netip.AddrPort
	}{
		{side4, bounces4, false, netip.AddrPortFrom(addr(lab.ServerAddr), 21)},
		{side6, bounces6, true, netip.AddrPortFrom(addr(lab.ServerAddr6), 21)},
	} {
		t.Run(fam.side.name, func(t *testing.T) {
			capture, err := l.Capture(l.GW, lab.GWPrivateIface)
			if err != nil {
				t.Fatal(err)
			}
			logBefore := strings.Count(pg.proc.Output(), `"msg":"command refused"`)
			codes, sum, err := bounceSession(t.Context(), l, fam.side, srv, fam.bounces, fam.eprt, " ")
			pkts, capErr := capture.Stop()
			if err != nil {
				t.Fatalf("session: %v", err)
			}
			if capErr != nil {
				t.Errorf("capture incomplete, the check that nothing reached the server is inconclusive: %v", capErr)
			}
			if sum != srv.DataSHA256 {
				t.Errorf("positive control: download after the attempts has sha256 %s, want %s", sum, srv.DataSHA256)
			}
			toServer := lab.Stream(pkts, netip.AddrPort{}, fam.upstream)
			payloads := lab.Payloads(pkts)
			for i, b := range fam.bounces {
				r := result{family: fam.side.name, b: b, got: codes[i].code, text: codes[i].text}
				if !slices.Contains(b.want, r.got) {
					r.fails = append(r.fails, fmt.Sprintf("reply %d %q, want %v", r.got, r.text, b.want))
				}
				if _, arg, ok := strings.Cut(b.cmd, " "); ok && len(lab.Leaks(payloads, arg)) > 0 {
					r.fails = append(r.fails, "its argument reached the server's link")
				}
				for _, f := range r.fails {
					t.Errorf("%s (%s): %s", b.what, b.cmd, f)
				}
				results = append(results, r)
			}
			// The server saw one data command in all: the legitimate one,
			// rewritten.
			verbs := dataVerbs(toServer)
			told := lab.ParseActive(toServer)
			if len(verbs) != 1 || len(told) != 1 || told[0].Addr.Addr() != addr(fam.side.gwPrivate) {
				t.Errorf("the server got data commands %q (parsed %v), want exactly the legitimate one with %s",
					verbs, told, fam.side.gwPrivate)
			}
			if n := strings.Count(pg.proc.Output(), `"msg":"command refused"`) - logBefore; n != len(fam.bounces) {
				t.Errorf("pasvgate logged %d refusals, want %d", n, len(fam.bounces))
			}
			if left := pg.waitDrained(t.Context()); left != "" {
				t.Error(left)
			}
		})
	}

	fmt.Fprintf(os.Stdout, "\nbounce attempts through pasvgate (%s, %v)\n", *flagIPTables, time.Since(start).Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "family\tattempt\tcommand\twant\tgot\tresult\t")
	for _, r := range results {
		verdict := "refused, not forwarded"
		if len(r.fails) > 0 {
			verdict = "FAIL: " + strings.Join(r.fails, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%s\t\n", r.family, r.b.what, strings.ReplaceAll(r.b.cmd, "\r", `\r`), r.b.want, r.got, verdict)
	}
	tw.Flush()
}

// reply is one FTP reply: its code and its last line's text.
type reply struct {
	code int
	text string
}

// bounceSession logs in from the side's client address, sends every
// attempt and reads its reply, then downloads lab.DataFile in active mode
// (PORT, or EPRT when eprt, with sep between verb and argument) as the
// positive control. It returns the attempts' replies and the download's
// SHA-256.
func bounceSession(ctx context.Context, l *lab.Lab, sd side, srv *lab.Server, bounces []bounce, eprt bool, sep string) ([]reply, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, nc, err := l.RawLogin(ctx, lab.RawSession{NS: l.Client, Local: sd.client, Host: sd.gwPublic, User: srv.User, Password: srv.Password})
	if err != nil {
		return nil, "", err
	}
	defer nc.Close()
	var out []reply
	for _, b := range bounces {
		if _, err := c.Cmd("%s", b.cmd); err != nil {
			return out, "", err
		}
		code, msg, err := c.ReadResponse(0)
		if err != nil && code == 0 {
			return out, "", fmt.Errorf("%s: %w", b.cmd, err)
		}
		out = append(out, reply{code, msg})
	}
	ln, err := l.Listen(l.Client, net.JoinHostPort(sd.client, "0"))
	if err != nil {
		return out, "", err
	}
	defer ln.Close()
	_ = ln.SetDeadline(time.Now().Add(30 * time.Second))
	cmd := strings.Replace(lab.ActiveCommandFor(ln.Addr().(*net.TCPAddr).AddrPort(), eprt), " ", sep, 1)
	if _, err := lab.RawCmd(c, 200, "%s", cmd); err != nil {
		return out, "", fmt.Errorf("positive control: %w", err)
	}
	if _, err := lab.RawCmd(c, 1, "RETR %s", lab.DataFile); err != nil {
		return out, "", fmt.Errorf("positive control: %w", err)
	}
	data, err := ln.AcceptTCP()
	if err != nil {
		return out, "", fmt.Errorf("positive control: %w", err)
	}
	defer data.Close()
	h := sha256.New()
	if _, err := io.Copy(h, data); err != nil {
		return out, "", err
	}
	if _, err := lab.RawCmd(c, 2, ""); err != nil {
		return out, "", fmt.Errorf("positive control, after RETR: %w", err)
	}
	_, _ = lab.RawCmd(c, 2, "QUIT")
	return out, hex.EncodeToString(h.Sum(nil)), nil
}

// dataVerb is a command line that asks for a data connection.
var dataVerb = regexp.MustCompile(`(?mi)^(PORT|EPRT|LPRT|PASV|EPSV|LPSV)\b[^\r\n]*`)

// dataVerbs returns the data-connection command lines in cmds.
func dataVerbs(cmds string) []string {
	return dataVerb.FindAllString(cmds, -1)
}

func TestDataVerbs(t *testing.T) {
	got := dataVerbs("USER a\r\nPORT 1,2,3,4,5,6\r\nport\r\nEPRTX\r\nLPRT 4,4\r\nRETR x\r\n")
	if want := []string{"PORT 1,2,3,4,5,6", "port", "LPRT 4,4"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
