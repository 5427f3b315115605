package probe

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// certWarnDays is how close to its end a certificate is worth a warning:
// two weeks leaves time for a renewal that failed to be noticed and
// fixed; automated renewals (ACME) run 30 days ahead.
const certWarnDays = 14

// pasvgateProtRefusal is the start of the answer to PROT P of the
// pasvgate versions before its PROT P relay, matched like
// pasvgateAuthRefusal: such a gateway is still met in the field.
const pasvgateProtRefusal = "PROT P is not supported through this gateway"

// tls judges the FTPS checks, in the order of their Check constants. They
// are skipped, with the reason, when the server offers no AUTH TLS.
func (a *analysis) tls() {
	t := a.r.TLS
	if t == nil {
		why := "not checked: "
		switch a.r.AuthTLS {
		case AuthByPasvgate:
			why += "pasvgate in front of the server refuses AUTH TLS"
		case AuthRefused:
			why += "AUTH TLS is refused"
		case AuthNoAnswer:
			why += "no answer about AUTH TLS"
		default:
			why += "the server does not offer AUTH TLS"
		}
		for _, c := range []string{CheckTLSCert, CheckTLSVersions, CheckPROTPData, CheckTLSReuse} {
			a.add(c, StatusSkip, why, "")
		}
		return
	}
	a.cert(t)
	a.versions(t)
	a.protP(t)
	a.reuse(t)
}

func (a *analysis) cert(t *TLSReport) {
	ci := t.Certificate
	switch {
	case t.Error != "":
		a.add(CheckTLSCert, StatusFail, "no TLS session: "+t.Error,
			"the server offers AUTH TLS but cannot complete it: check its TLS settings (certificate and key files, protocol versions, ciphers) and its log")
		return
	case ci == nil:
		a.add(CheckTLSCert, StatusFail, "the server sent no certificate", "")
		return
	}
	about := fmt.Sprintf("subject %s, issuer %s, names %s, valid until %s", ci.Subject, ci.Issuer, namesText(ci.Names),
		ci.NotAfter.Format(time.DateOnly))
	if len(ci.Problems) > 0 {
		var why, fixes []string
		for _, pr := range ci.Problems {
			why = append(why, pr.Detail)
			if f := certFix(pr.Kind, t, ci); f != "" {
				fixes = append(fixes, f)
			}
		}
		a.add(CheckTLSCert, StatusFail,
			fmt.Sprintf("the certificate for %s does not verify against the %s: %s (%s)", t.ServerName, t.Roots, strings.Join(why, "; "), about),
			strings.Join(fixes, "; "))
		return
	}
	if ci.DaysLeft < certWarnDays {
		a.add(CheckTLSCert, StatusWarn,
			fmt.Sprintf("the certificate for %s verifies against the %s, but expires in %s (%s)", t.ServerName, t.Roots, days(ci.DaysLeft), about),
			"renew the certificate, and make sure its renewal is automatic and watched")
		return
	}
	a.add(CheckTLSCert, StatusOK,
		fmt.Sprintf("the certificate for %s verifies against the %s (%s, %s left)", t.ServerName, t.Roots, about, days(ci.DaysLeft)), "")
}

func namesText(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func certFix(kind string, t *TLSReport, ci *CertInfo) string {
	switch kind {
	case CertExpired:
		return "renew the certificate"
	case CertNotYetValid:
		return "check the clocks of the server and of this host; a certificate issued minutes ago may need its NotBefore set earlier"
	case CertNameMismatch:
		if len(ci.Names) == 0 {
			return fmt.Sprintf("issue a certificate with %s as a subject alternative name", t.ServerName)
		}
		return fmt.Sprintf("if clients reach the server by another name, probe with --server-name NAME; else issue a certificate that names %s", t.ServerName)
	case CertUnknownAuthority:
		if t.Roots == systemRoots {
			return "if the server's CA is private, give its certificate with --ca FILE; else make the server send its intermediate certificates with its own (vsftpd: in rsa_cert_file after the certificate)"
		}
		return "check that the CA file holds the CA that issued the server's certificate, and that the server sends its intermediate certificates"
	}
	return ""
}

func (a *analysis) versions(t *TLSReport) {
	if len(t.Versions) == 0 {
		a.add(CheckTLSVersions, StatusSkip, "not checked: no TLS handshake was answered (see tls-cert)", "")
		return
	}
	var yes, no, errs []string
	modern, legacy := false, false
	for _, v := range t.Versions {
		if v.Accepted {
			yes = append(yes, v.Version)
			modern = modern || v.Version == "TLS 1.3" || v.Version == "TLS 1.2"
			legacy = legacy || v.Version == "TLS 1.1" || v.Version == "TLS 1.0"
		} else {
			no = append(no, v.Version)
			errs = append(errs, v.Version+": "+v.Error)
		}
	}
	what := fmt.Sprintf("accepts %s", joinOr(yes, "none"))
	if len(no) > 0 {
		what += fmt.Sprintf("; refuses %s", strings.Join(no, ", "))
	}
	switch {
	case len(yes) == 0:
		a.add(CheckTLSVersions, StatusFail, "the server completes no TLS handshake ("+strings.Join(errs, "; ")+")",
			"check the server's TLS settings and its log")
	case !modern:
		a.add(CheckTLSVersions, StatusFail, what+": current clients refuse TLS 1.1 and 1.0 (RFC 8996), and OpenSSL 3 at its default security level does too",
			"enable TLS 1.2 and 1.3 on the server")
	case legacy:
		a.add(CheckTLSVersions, StatusWarn, what+": TLS 1.1 and 1.0 are deprecated (RFC 8996)",
			"turn TLS 1.0 and 1.1 off in the server's TLS settings (ProFTPD: TLSProtocol TLSv1.2 TLSv1.3)")
	default:
		a.add(CheckTLSVersions, StatusOK, what, "")
	}
}

func joinOr(s []string, none string) string {
	if len(s) == 0 {
		return none
	}
	return strings.Join(s, ", ")
}

func (a *analysis) protP(t *TLSReport) {
	const check = CheckPROTPData
	switch {
	case t.Error != "":
		a.add(check, StatusSkip, "not checked: no TLS session (see tls-cert)", "")
		return
	case t.LoginError != "":
		fix := "check the account's FTPS permissions on the server"
		if a.r.Server == ServerVsftpd && a.r.User == anonymousUser {
			fix = "set allow_anon_ssl=YES in vsftpd.conf and restart vsftpd: without it, anonymous logins may not use TLS"
		}
		a.add(check, StatusFail, "could not log in over TLS: "+t.LoginError, fix)
		return
	case t.PBSZReply != "" && t.PROTReply == "":
		a.add(check, StatusFail, "the server refused PBSZ 0: "+t.PBSZReply, "")
		return
	case t.PROTCode != ftp.CodeOK && strings.Contains(t.PROTReply, pasvgateProtRefusal):
		a.add(check, StatusWarn,
			fmt.Sprintf("PROT P refused by pasvgate (%s): this version of pasvgate does not relay protected data connections; FTPS clients must keep data in clear (PROT C)", t.PROTReply),
			"upgrade pasvgate: later versions relay PROT P data; meanwhile, clients: curl --ftp-ssl-control, lftp set ftp:ssl-protect-data no, Python FTP_TLS without prot_p()")
		return
	case t.PROTCode != ftp.CodeOK:
		a.add(check, StatusFail, "the server refused PROT P: "+t.PROTReply, "")
		return
	case len(t.Data) == 0:
		a.add(check, StatusFail, "no PROT P data connection tried", "")
		return
	}
	d := t.Data[0]
	where := fmt.Sprintf("%s data connection to %s", d.Mode, d.Address)
	if d.Address == "" {
		where = d.Mode + " data connection"
	}
	resumed := "its TLS session resumed the control connection's"
	if !d.Resumed {
		resumed = "its TLS session did not resume the control connection's (" + noResumeWhy(t) + ")"
	}
	switch {
	case d.Listed:
		a.add(check, StatusOK, fmt.Sprintf("logged in over %s, PROT P accepted; %s: the listing came through (%d), and %s",
			t.Version, where, d.ListCode, resumed), "")
	case d.Handshake && !d.Resumed && t.SessionTickets == 0:
		a.add(check, StatusFail, fmt.Sprintf("%s: TLS handshake done, %s, but the listing did not come through: %s", where, resumed, listFailure(&d.Attempt)),
			"if the server requires session reuse (see tls-session-reuse), let it issue TLS session tickets, or stop requiring reuse: Go's clients, pasvgate's relay among them, resume only with tickets")
	case d.Handshake:
		a.add(check, StatusFail, fmt.Sprintf("%s: TLS handshake done, %s, but the listing did not come through: %s", where, resumed, listFailure(&d.Attempt)),
			"see tls-session-reuse; the server's log says more")
	case d.Connected:
		a.add(check, StatusFail, fmt.Sprintf("%s opened, but %s", where, listFailure(&d.Attempt)), "the server's log says more")
	default:
		msg := fmt.Sprintf("%s failed: %s", where, attemptError(&d.Attempt))
		if inTLS, plain := addrOf(d.Advertised), addrOf(a.plainAdvertised(d.Mode)); d.Mode == "PASV" && inTLS.IsValid() && plain.IsValid() && inTLS != plain {
			msg += fmt.Sprintf("; the 227 inside TLS names %s, the plain one %s: something on the way (a NAT helper) rewrites plain 227 replies and cannot read them inside TLS", inTLS, plain)
		}
		a.add(check, StatusFail, msg, "make the server advertise its public address itself, or run pasvgate with --tls in front of it")
	}
}

// noResumeWhy says why a data connection that offered to resume did not.
func noResumeWhy(t *TLSReport) string {
	if ci := t.Certificate; ci != nil {
		for _, pr := range ci.Problems {
			if pr.Kind == CertExpired {
				return "the certificate has expired, and Go's client offers no session whose certificate has"
			}
		}
	}
	if t.SessionTickets == 0 {
		return "the server sent no session ticket, and Go's client resumes only with tickets, not session IDs"
	}
	return "the server did not accept the session offered"
}

// addrOf is the address of an "address:port", or the zero Addr.
func addrOf(ap string) netip.Addr {
	a, err := netip.ParseAddrPort(ap)
	if err != nil {
		return netip.Addr{}
	}
	return a.Addr()
}

// plainAdvertised is the address the plain reply of mode named.
func (a *analysis) plainAdvertised(mode string) string {
	for _, m := range a.r.Modes {
		if m.Mode == mode {
			return m.Advertised
		}
	}
	return ""
}

func (a *analysis) reuse(t *TLSReport) {
	const check = CheckTLSReuse
	const why = "clients must resume it on every data connection (curl, lftp and FileZilla do; Python's ftplib.FTP_TLS does not), and so must a gateway in front of it that terminates TLS, as pasvgate does"
	if len(t.Data) == 0 || !t.Data[0].Handshake {
		a.add(check, StatusSkip, "not checked: no PROT P data connection got as far as a TLS handshake (see prot-p-data)", "")
		return
	}
	first := t.Data[0]
	if !first.Resumed {
		// The one data connection made did not resume: it answers the
		// question by itself.
		if first.Listed {
			a.add(check, StatusOK, "the server does not require session reuse: the PROT P data connection above did not resume the control connection's TLS session and was served", "")
			return
		}
		a.add(check, StatusOK, fmt.Sprintf("the server requires session reuse, it seems: the PROT P data connection above did not resume the control connection's TLS session and was refused (%s); %s",
			listFailure(&first.Attempt), why), "")
		return
	}
	switch {
	case len(t.Data) < 2:
		a.add(check, StatusSkip, "not checked: the TLS session was lost after the first data connection", "")
		return
	case !first.Listed:
		a.add(check, StatusSkip, "not checked: the data connection that resumed failed too (see prot-p-data)", "")
		return
	}
	d := t.Data[1]
	switch {
	case d.Listed:
		a.add(check, StatusOK, fmt.Sprintf("the server does not require session reuse: a second PROT P data connection, with a new TLS session, was served too (%d)", d.ListCode), "")
	case d.Handshake || d.ListCode != 0:
		a.add(check, StatusOK, fmt.Sprintf("the server requires session reuse: a second PROT P data connection, with a new TLS session, was refused (%s), where the one that resumed was served; %s",
			listFailure(&d.Attempt), why), "")
	default:
		a.add(check, StatusWarn, fmt.Sprintf("could not tell whether the server requires session reuse: a second PROT P data connection, with a new TLS session, failed before its handshake: %s", attemptError(&d.Attempt)), "")
	}
}
