package probe

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// analyze turns what Run saw into findings. It is a pure function of the
// report, so every message and fix can be tested without a server.
func analyze(r *Report, timeout time.Duration) []Finding {
	a := analysis{r: r, timeout: timeout, out: []Finding{}}
	if !r.Connected {
		a.add(CheckConnect, StatusFail, "no FTP control connection: "+r.failure,
			"check the host name and port, that the server is running, and that every firewall on the way lets TCP to the control port through")
		return a.out
	}
	a.add(CheckConnect, StatusOK, fmt.Sprintf("connected to %s; the server greeted", r.ControlAddress), "")
	a.ctrl = netip.MustParseAddrPort(r.ControlAddress).Addr()
	if !r.LoggedIn {
		fix := "check the user name and password"
		if r.User == anonymousUser {
			fix = "the server refuses anonymous logins: give an account in the URL, ftp://USER:PASSWORD@" + r.ControlAddress
		}
		if r.AuthTLS == AuthOffered {
			fix += "; the server may allow logins only over FTPS: prot-p-data says whether the login works over TLS"
		}
		a.add(CheckLogin, StatusFail, "could not log in: "+r.failure, fix)
		a.auth()
		a.tls()
		return a.out
	}
	a.add(CheckLogin, StatusOK, "logged in as "+r.User, "")
	a.auth()
	a.tls()
	for _, m := range r.Modes {
		switch m.Mode {
		case "PASV":
			a.pasv(m)
		case "EPSV":
			a.epsv(m)
		case "PORT":
			a.active(m, CheckPORT)
		case "EPRT":
			a.active(m, CheckEPRT)
		}
	}
	return a.out
}

// verdictOf answers the question the exit status carries: would passive
// FTP work for a client that trusts the address the server advertises?
// On an IPv6 control connection that client uses EPSV, PASV being
// IPv4-only.
func verdictOf(r *Report) Verdict {
	switch {
	case !r.Connected:
		return VerdictNoConnect
	case !r.LoggedIn:
		return VerdictNoLogin
	}
	mode := "PASV"
	if a, err := netip.ParseAddrPort(r.ControlAddress); err == nil && a.Addr().Is6() {
		mode = "EPSV"
	}
	for _, m := range r.Modes {
		if m.Mode != mode {
			continue
		}
		for _, at := range m.Attempts {
			if at.Via == "advertised" && at.Connected && at.Listed {
				return VerdictWorks
			}
		}
	}
	return VerdictFails
}

type analysis struct {
	r       *Report
	timeout time.Duration
	ctrl    netip.Addr // the server's end of the control connection
	out     []Finding
}

func (a *analysis) add(check string, s Status, msg, fix string) {
	a.out = append(a.out, Finding{Check: check, Status: s, Message: msg, Fix: fix})
}

func (a *analysis) auth() {
	r := a.r
	switch r.AuthTLS {
	case AuthOffered:
		a.add(CheckAuthTLS, StatusOK,
			fmt.Sprintf("the server offers AUTH TLS (%s): the kernel's FTP helper cannot read a 227 inside TLS; pasvgate, which terminates FTPS itself (--tls), can", r.AuthReply), "")
	case AuthByPasvgate:
		a.add(CheckAuthTLS, StatusWarn,
			fmt.Sprintf("AUTH TLS refused by pasvgate (%s): pasvgate is in front of the server with FTPS off; plain FTP works", r.AuthReply),
			"if clients need FTPS, run pasvgate with --tls allow (or require) and --tls-cert/--tls-key: it terminates TLS on both legs and still reads the 227")
	case AuthRefused:
		a.add(CheckAuthTLS, StatusOK,
			fmt.Sprintf("AUTH TLS refused for policy reasons (%s): FTPS is turned off by the server or a gateway in front of it; plain FTP only", r.AuthReply), "")
	case AuthNotOffered:
		a.add(CheckAuthTLS, StatusOK,
			fmt.Sprintf("the server does not offer AUTH TLS (FEAT lists none, and AUTH TLS got %q): the control channel is plain text, which NAT helpers and pasvgate can read", r.AuthReply), "")
	case AuthNoAnswer:
		a.add(CheckAuthTLS, StatusWarn, "no answer about AUTH TLS: "+r.AuthReply, "")
	}
}

// modeFailed reports a mode that produced no usable reply, and whether it
// did.
func (a *analysis) modeFailed(check string, m ModeResult) bool {
	switch {
	case m.Skipped != "":
		a.add(check, StatusFail, m.Mode+" not tried: "+m.Skipped, "")
	case m.Code == 0:
		a.add(check, StatusFail, "no reply to "+m.Mode+": "+m.Error, "")
	default:
		return false
	}
	return true
}

func (a *analysis) pasv(m ModeResult) {
	kind := a.r.Server
	if a.ctrl.Is6() {
		// A 227 carries only IPv4: on IPv6, servers refuse PASV or
		// answer something no client can use (vsftpd: 0,0,0,0), and
		// clients use EPSV. Judging that answer would only mislead.
		what := "PASV not tried"
		if m.Reply != "" {
			what = fmt.Sprintf("PASV answered %q", m.Reply)
		}
		a.add(CheckPASV, StatusOK, what+" on an IPv6 control connection: a 227 carries only IPv4 addresses, so IPv6 clients use EPSV (see epsv)", "")
		return
	}
	if a.modeFailed(CheckPASV, m) {
		return
	}
	switch {
	case m.Code != ftp.CodeEnteringPassive:
		fix := "enable passive mode on the server"
		if kind == ServerVsftpd {
			fix = "set pasv_enable=YES in vsftpd.conf"
		}
		a.add(CheckPASV, StatusFail, "the server refused PASV: "+m.Reply, fix)
		return
	case m.Advertised == "":
		a.add(CheckPASV, StatusFail, fmt.Sprintf("the 227 reply carries no usable address (%s): %s", m.Error, m.Reply),
			"the server, or a firewall's FTP helper rewriting the reply on the way, sends a malformed 227; fix it or turn that helper off")
		return
	}
	a.add(CheckPASV, StatusOK, "PASV accepted: "+m.Reply, "")

	adv := netip.MustParseAddrPort(m.Advertised)
	first, ctl := attemptVia(m, "advertised"), attemptVia(m, "control")
	a.pasvAddress(adv, first, ctl)
	a.port(CheckPASVPort, adv.Port())
	a.data(CheckPASVData, adv, first, ctl)
	if ctl != nil {
		a.ignoring(first, ctl)
	}
}

func (a *analysis) pasvAddress(adv netip.AddrPort, first, ctl *Attempt) {
	ip, kind := adv.Addr(), a.r.Server
	class, ctrlClass := Classify(ip), Classify(a.ctrl)
	fix := addressFix(kind, a.ctrl, ip)
	switch {
	case ip == a.ctrl:
		a.add(CheckPASVAddress, StatusOK, fmt.Sprintf("PASV advertises %s, the control address", ip), "")
	case class == ClassUnspecified:
		a.add(CheckPASVAddress, StatusFail,
			fmt.Sprintf("PASV advertises %s, which is no address: clients that trust it cannot connect (some, and pasvgate, take it to mean the control address %s)", ip, a.ctrl), fix)
	case class == ClassLoopback && ctrlClass != ClassLoopback:
		a.add(CheckPASVAddress, StatusFail,
			fmt.Sprintf("PASV advertises %s, a loopback address that differs from the control address %s: only programs on the server's own host can reach it", ip, a.ctrl), fix)
	case first == nil || !first.Connected:
		msg := fmt.Sprintf("PASV advertises %s, %s, which differs from the control address %s and is unreachable (%s)",
			ip, Describe(ip), a.ctrl, attemptError(first))
		if ctl != nil && ctl.Connected {
			msg += fmt.Sprintf("; the data port answers at the control address %s, so only the advertised address is wrong", a.ctrl)
		}
		a.add(CheckPASVAddress, StatusFail, msg, fix)
	case !class.Routable() && ctrlClass.Routable():
		a.add(CheckPASVAddress, StatusWarn,
			fmt.Sprintf("PASV advertises %s, %s, not the control address %s; it is reachable from here, but clients on the Internet cannot reach it", ip, Describe(ip), a.ctrl), fix)
	default:
		a.add(CheckPASVAddress, StatusWarn,
			fmt.Sprintf("PASV advertises %s, which differs from the control address %s, but is reachable from here (as behind a NAT gateway, or pasvgate with --public-addr): clients that trust it work", ip, a.ctrl), "")
	}
}

// port judges the data port a server handed out.
func (a *analysis) port(check string, port uint16) {
	if port < 1024 {
		a.add(check, StatusWarn,
			fmt.Sprintf("data port %d is a privileged port (below 1024): firewalls often block such ports, and some clients refuse them", port),
			lowPortFix(a.r.Server))
		return
	}
	a.add(check, StatusOK, fmt.Sprintf("data port %d is above 1023", port), "")
}

// data judges the data connection to the advertised address. ctl is the
// attempt at the control address, when the advertised one differs.
func (a *analysis) data(check string, adv netip.AddrPort, first, ctl *Attempt) {
	kind := a.r.Server
	switch {
	case first == nil:
		a.add(check, StatusFail, "no data connection tried", "")
	case first.Connected && first.Listed:
		a.add(check, StatusOK, fmt.Sprintf("data connection to %s opened and the listing came through (%d)", first.Address, first.ListCode), "")
	case first.Connected:
		a.add(check, StatusFail,
			fmt.Sprintf("data connection to %s opened, but the listing did not come through: %s", first.Address, listFailure(first)),
			"the server refused or dropped the data connection: if a NAT or proxy changes the data connection's source address, servers that check it (vsftpd pasv_promiscuous=NO, ProFTPD AllowForeignAddress off) refuse it; the server's log says more")
	case ctl == nil:
		a.add(check, StatusFail,
			fmt.Sprintf("data port not reachable: connecting to %s failed (%s)", first.Address, attemptError(first)),
			rangeFix(kind, adv.Port()))
	case ctl.Connected:
		a.add(check, StatusFail,
			fmt.Sprintf("data connection to the advertised %s failed (%s); see pasv-address", first.Address, attemptError(first)), "")
	default:
		a.add(check, StatusFail,
			fmt.Sprintf("data port not reachable: neither the advertised %s (%s) nor the control address %s (%s) answered",
				first.Address, attemptError(first), ctl.Address, attemptError(ctl)),
			rangeFix(kind, adv.Port()))
	}
}

// ignoring judges the data connection of clients that ignore the 227
// address and connect to the control address instead.
func (a *analysis) ignoring(first, ctl *Attempt) {
	const who = "clients that ignore the 227 address and connect to the control address (Python ftplib's default, curl's since 7.74)"
	switch {
	case ctl.Address == "":
		a.add(CheckPASVIgnoring, StatusWarn, fmt.Sprintf("%s: not checked, %s", who, attemptError(ctl)), "")
	case ctl.Connected && ctl.Listed:
		a.add(CheckPASVIgnoring, StatusOK, fmt.Sprintf("%s work: %s answered and the listing came through", who, ctl.Address), "")
	case ctl.Connected:
		a.add(CheckPASVIgnoring, StatusWarn,
			fmt.Sprintf("%s connect to %s, but the listing did not come through: %s", who, ctl.Address, listFailure(ctl)), "")
	case first != nil && first.Connected:
		a.add(CheckPASVIgnoring, StatusWarn,
			fmt.Sprintf("%s fail: %s did not answer (%s)", who, ctl.Address, attemptError(ctl)),
			fmt.Sprintf("make the advertised address the control address %s (pasvgate: --public-addr %s, or no --public-addr), or have such clients trust the 227 address (ftplib: trust_server_pasv_ipv4_address = True; curl: --no-ftp-skip-pasv-ip)", a.ctrl, a.ctrl))
	default:
		a.add(CheckPASVIgnoring, StatusFail, fmt.Sprintf("%s fail too: %s did not answer (%s)", who, ctl.Address, attemptError(ctl)), "")
	}
}

func (a *analysis) epsv(m ModeResult) {
	if a.modeFailed(CheckEPSV, m) {
		return
	}
	if m.Code != ftp.CodeEnteringExtPassive {
		status := StatusWarn
		msg := fmt.Sprintf("the server refuses EPSV (%s): clients that try EPSV first (curl, lftp) fall back to PASV", m.Reply)
		if a.ctrl.Is6() {
			status, msg = StatusFail, fmt.Sprintf("the server refuses EPSV (%s): on IPv6, clients have no other passive mode", m.Reply)
		}
		a.add(CheckEPSV, status, msg,
			"use a server version that supports EPSV (RFC 2428); if a firewall's FTP inspection refuses it, allow EPSV there")
		return
	}
	if m.Advertised == "" {
		a.add(CheckEPSV, StatusFail, fmt.Sprintf("the 229 reply carries no usable port (%s): %s", m.Error, m.Reply),
			"the server, or a firewall's FTP helper rewriting the reply on the way, sends a malformed 229")
		return
	}
	a.add(CheckEPSV, StatusOK, "EPSV accepted: "+m.Reply, "")
	adv := netip.MustParseAddrPort(m.Advertised)
	a.port(CheckEPSVPort, adv.Port())
	a.data(CheckEPSVData, adv, attemptVia(m, "advertised"), nil)
}

func (a *analysis) active(m ModeResult, check string) {
	if m.Skipped != "" && m.Mode == "PORT" && a.ctrl.Is6() {
		a.add(check, StatusOK, "PORT not tried: "+m.Skipped, "")
		return
	}
	if a.modeFailed(check, m) {
		return
	}
	if m.Code != ftp.CodeOK {
		a.add(check, StatusFail, fmt.Sprintf("the server refused %s %s: %s", m.Mode, m.Advertised, m.Reply),
			"active mode is off or restricted on the server; clients should use passive mode")
		return
	}
	at := attemptVia(m, "server")
	switch {
	case at == nil:
		a.add(check, StatusFail, m.Mode+" accepted, but no data connection was waited for", "")
	case at.Connected && at.Listed:
		a.add(check, StatusOK, fmt.Sprintf("%s accepted; the server connected back to %s from %s and the listing came through (%d)",
			m.Mode, at.Address, at.Peer, at.ListCode), "")
	case at.Connected:
		a.add(check, StatusFail, fmt.Sprintf("%s accepted; the server connected back to %s from %s, but the listing did not come through: %s",
			m.Mode, at.Address, at.Peer, listFailure(at)), "")
	default:
		a.add(check, StatusFail, fmt.Sprintf("%s accepted, but %s", m.Mode, attemptError(at)),
			"active mode needs the server to reach the client: a firewall or NAT in front of the client blocks the server's connection; clients should use passive mode")
	}
}

// attemptVia returns m's attempt made via via, or nil.
func attemptVia(m ModeResult, via string) *Attempt {
	for i := range m.Attempts {
		if m.Attempts[i].Via == via {
			return &m.Attempts[i]
		}
	}
	return nil
}

func attemptError(at *Attempt) string {
	if at == nil || at.Error == "" {
		return "not tried"
	}
	return at.Error
}

func listFailure(at *Attempt) string {
	switch {
	case at.Error != "":
		return at.Error
	case at.ListReply != "":
		return at.ListReply
	}
	return "no final reply"
}
