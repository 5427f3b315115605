package sniff

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteText prints the report for people: a header, each session with
// its data addresses, and the per-server summary. Every string from the
// capture in it has been through clean, so a hostile capture cannot
// inject terminal escapes.
func (r *Report) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }

	p("pasvgate audit of %s\n", orDash(r.Source))
	st := r.Stats
	p("  %s", plural(int(min(st.Packets, 1<<31)), "packet"))
	if !st.First.IsZero() {
		p(", %s to %s (%s)", st.First.UTC().Format("2006-01-02 15:04:05.000"),
			st.Last.UTC().Format("15:04:05.000 MST"), st.Last.Sub(st.First).Round(time.Millisecond))
	}
	p("; control ports %s\n", joinPorts(r.Ports))
	for _, w := range r.Warnings {
		p("  warning: %s\n", w)
	}
	for _, s := range r.Sessions {
		p("\n")
		writeSession(p, s)
	}
	if r.SessionsOmitted > 0 {
		p("\n(%s more not listed)\n", plural(r.SessionsOmitted, "session"))
	}
	if len(r.Servers) > 0 {
		p("\nservers\n")
	}
	encrypted := 0
	for _, sum := range r.Servers {
		writeSummary(p, sum)
		encrypted += sum.Encrypted
	}
	switch {
	case len(r.Sessions)+r.SessionsOmitted == 0:
		p("\nresult: no FTP control session in this capture\n")
	case r.Problems > 0:
		p("\nresult: %s (the PROBLEM lines above)\n", plural(r.Problems, "problem"))
	case encrypted > 0:
		p("\nresult: no problems found; %s encrypted, not inspected\n", plural(encrypted, "session"))
	default:
		p("\nresult: no problems found\n")
	}
	return bw.Flush()
}

func writeSession(p func(string, ...any), s *Session) {
	p("session %d: client %s, server %s\n", s.ID, s.Client, s.Server)
	how := map[EndReason]string{
		EndCapture: "still open when the capture ended",
		EndFIN:     "closed",
		EndRST:     "reset",
		EndIdle:    "idle: no longer followed",
		EndEvicted: "no longer followed (too many connections)",
	}[s.Ended]
	from := "from its handshake"
	if !s.FromStart {
		from = "picked up mid-session: earlier lines are missing"
	}
	p("  %s to %s UTC, %s; %s\n", s.Start.UTC().Format("15:04:05.000"), s.End.UTC().Format("15:04:05.000"), how, from)
	if s.Banner != "" {
		p("  banner: %s\n", s.Banner)
	}
	for _, ev := range s.DataAddrs {
		writeEvent(p, s, ev)
	}
	if s.DataAddrsOmitted > 0 {
		p("  (%s more not listed)\n", plural(s.DataAddrsOmitted, "data address"))
	}
	if s.TLS != nil {
		at := fmt.Sprintf("+%.3fs", s.TLS.Time.Sub(s.Start).Seconds())
		switch {
		case s.TLS.Implicit:
			p("  %s TLS from the first byte (implicit FTPS): the session is encrypted and cannot be inspected\n", at)
		case s.TLS.Command == "":
			p("  %s TLS records: the session was already encrypted and cannot be inspected\n", at)
		default:
			p("  %s %s accepted (234): the rest of the session is encrypted and cannot be inspected\n", at, s.TLS.Command)
		}
	}
	var notes []string
	if s.LostBytes > 0 {
		notes = append(notes, plural(int(min(s.LostBytes, 1<<31)), "byte")+" missing from the capture")
	}
	if s.LongLines > 0 {
		notes = append(notes, plural(s.LongLines, "over-long line")+" dropped")
	}
	if s.MalformedReplies > 0 {
		notes = append(notes, plural(s.MalformedReplies, "malformed reply line"))
	}
	if len(notes) > 0 {
		p("  note: %s\n", strings.Join(notes, "; "))
	}
	switch {
	case s.Problems > 0:
		p("  %s\n", plural(s.Problems, "problem"))
	case len(s.DataAddrs) == 0 && s.DataAddrsOmitted == 0:
		p("  no data addresses seen\n")
	default:
		p("  no problems\n")
	}
}

func writeEvent(p func(string, ...any), s *Session, ev *DataAddr) {
	at := fmt.Sprintf("+%.3fs", ev.Time.Sub(s.Start).Seconds())
	switch {
	case ev.Kind == KindPORT || ev.Kind == KindEPRT:
		reply := "no reply seen"
		if ev.Reply != 0 {
			reply = fmt.Sprint(ev.Reply)
		}
		p("  %s %s -> %s\n", at, ev.Line, reply)
	case ev.Command == "":
		p("  %s (no command pending) -> %s\n", at, ev.Line)
	default:
		p("  %s %s -> %s\n", at, ev.Command, ev.Line)
	}
	const indent = "           "
	who := "server"
	if ev.Kind == KindPORT || ev.Kind == KindEPRT {
		who = "client"
	}
	switch {
	case ev.Error != "":
		p("%saddress   does not parse\n", indent)
	case ev.Kind == KindPASV && ev.Addr.Addr().IsUnspecified():
		p("%saddress   %s: 0.0.0.0 stands for the control connection's address\n", indent, ev.Addr)
	case ev.Own:
		extra := ""
		if ev.Kind == KindEPSV {
			extra = " (a 229 carries only the port)"
		}
		p("%saddress   %s, the %s's own%s\n", indent, ev.Addr, who, extra)
	default:
		p("%saddress   %s, NOT the %s's own\n", indent, ev.Addr, who)
	}
	d := ev.Data
	switch {
	case d.SYNs == 0:
		p("%sdata      no connection attempt seen\n", indent)
	default:
		var result string
		switch {
		case d.SYNACK:
			result = "connected (SYN, SYN-ACK)"
		case d.Reset:
			result = "refused (SYN, RST)"
		default:
			result = plural(d.SYNs, "SYN") + ", no answer"
		}
		p("%sdata      %s -> %s: %s\n", indent, d.From, d.To, result)
		if d.ToControlAddress {
			p("%s          the client connected to the control address, ignoring the one advertised\n", indent)
		}
	}
	if ev.Transfer != "" {
		reply := "no reply seen"
		if ev.TransferReply != 0 {
			reply = fmt.Sprint(ev.TransferReply)
		}
		p("%stransfer  %s -> %s\n", indent, ev.Transfer, reply)
	}
	for _, pr := range ev.Problems {
		p("%sPROBLEM   %s\n", indent, pr.Detail)
	}
}

func writeSummary(p func(string, ...any), sum *ServerSummary) {
	counts := plural(sum.Sessions, "session") + ", " + plural(sum.Passive, "passive reply")
	switch sum.Verdict {
	case VerdictBadAddress:
		adv := ""
		if len(sum.Advertised) > 0 {
			names := make([]string, len(sum.Advertised))
			for i, a := range sum.Advertised {
				names[i] = a.String()
			}
			adv = " (" + strings.Join(names, ", ") + ")"
		}
		p("  %s  BAD ADDRESS: advertised an address its clients cannot use%s in %d of %s\n",
			sum.Server, adv, sum.BadAddress, plural(sum.Passive, "passive reply"))
	case VerdictDataUnreachable:
		var failed []string
		if sum.Unanswered > 0 {
			failed = append(failed, plural(sum.Unanswered, "data connection")+" unanswered")
		}
		if sum.Refused > 0 {
			failed = append(failed, plural(sum.Refused, "data connection")+" refused")
		}
		p("  %s  DATA UNREACHABLE: its addresses are right, but %s\n", sum.Server, strings.Join(failed, ", "))
	case VerdictOK:
		p("  %s  ok: every passive reply named a usable address\n", sum.Server)
	case VerdictEncrypted:
		p("  %s  unknown: its sessions were encrypted (TLS)\n", sum.Server)
	default:
		p("  %s  unknown: no passive reply seen\n", sum.Server)
	}
	if sum.Encrypted > 0 && sum.Verdict != VerdictEncrypted {
		counts += ", " + fmt.Sprint(sum.Encrypted) + " encrypted"
	}
	p("      %s\n", counts)
}

func joinPorts(ports []uint16) string {
	if len(ports) == 0 {
		return "-"
	}
	s := make([]string, len(ports))
	for i, pt := range ports {
		s[i] = fmt.Sprint(pt)
	}
	return strings.Join(s, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return clean([]byte(s))
}
