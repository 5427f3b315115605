package probe

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Server software the probe knows the settings of. A fix names the
// setting of the server that answered, so the operator does not have to
// translate advice written for another program.
const (
	ServerVsftpd    = "vsftpd"
	ServerProFTPD   = "proftpd"
	ServerPureFTPd  = "pure-ftpd"
	ServerFileZilla = "filezilla"
	ServerIIS       = "iis"
	ServerUnknown   = ""
)

// serverPatterns recognise greetings. Only the greeting is used: it is the
// one thing every server sends unasked, and SYST says "UNIX Type: L8" for
// nearly all of them. Operators can change a greeting, so a miss gives
// generic advice, never wrong advice.
var serverPatterns = []struct {
	kind string
	re   *regexp.Regexp // the first submatch, if any, is the version
}{
	{ServerVsftpd, regexp.MustCompile(`\(vsFTPd ([0-9][0-9A-Za-z.\-]*)\)`)},
	{ServerVsftpd, regexp.MustCompile(`(?i)\bvsftpd\b`)},
	{ServerProFTPD, regexp.MustCompile(`ProFTPD ([0-9][0-9A-Za-z.\-]*)`)},
	{ServerProFTPD, regexp.MustCompile(`(?i)\bproftpd\b`)},
	{ServerPureFTPd, regexp.MustCompile(`(?i)\bpure-?ftpd\b`)},
	{ServerFileZilla, regexp.MustCompile(`(?i)filezilla server(?: version)? ([0-9][0-9A-Za-z.\-]*)`)},
	{ServerFileZilla, regexp.MustCompile(`(?i)\bfilezilla\b`)},
	{ServerIIS, regexp.MustCompile(`Microsoft FTP Service`)},
}

// Identify names the server software from the lines of its greeting, and
// its version when the greeting carries one. Unknown software gives
// ServerUnknown and "".
func Identify(greeting []string) (kind, version string) {
	text := strings.Join(greeting, "\n")
	for _, p := range serverPatterns {
		if m := p.re.FindStringSubmatch(text); m != nil {
			if len(m) > 1 {
				version = m[1]
			}
			return p.kind, version
		}
	}
	return ServerUnknown, ""
}

// serverName is how a message names the software.
func serverName(kind string) string {
	switch kind {
	case ServerVsftpd:
		return "vsftpd"
	case ServerProFTPD:
		return "ProFTPD"
	case ServerPureFTPd:
		return "Pure-FTPd"
	case ServerFileZilla:
		return "FileZilla Server"
	case ServerIIS:
		return "IIS FTP"
	}
	return "the FTP server"
}

// addressFix tells how to make the server advertise want, the address
// clients reach it at. adv is what it advertised now: when that is a
// private address it is most likely the server's own, and the pasvgate
// command line can name it as the upstream.
func addressFix(kind string, want, adv netip.Addr) string {
	var own string
	switch kind {
	case ServerVsftpd:
		own = fmt.Sprintf("set pasv_address=%s in vsftpd.conf and restart vsftpd", want)
	case ServerProFTPD:
		own = fmt.Sprintf("set MasqueradeAddress %s in proftpd.conf and restart ProFTPD", want)
	case ServerPureFTPd:
		own = fmt.Sprintf("start pure-ftpd with -P %s (Debian: echo %s > /etc/pure-ftpd/conf/ForcePassiveIP)", want, want)
	case ServerFileZilla:
		own = fmt.Sprintf("set the passive mode public IP to %s in FileZilla Server's settings", want)
	case ServerIIS:
		own = fmt.Sprintf("set \"External IP Address of Firewall\" to %s in IIS Manager's FTP Firewall Support", want)
	default:
		own = fmt.Sprintf("configure the server's passive (masquerade) address as %s", want)
	}
	upstream := "SERVER-ADDRESS:21"
	if adv.IsValid() && Classify(adv) == ClassPrivate {
		upstream = netip.AddrPortFrom(adv.Unmap(), 21).String()
	}
	return fmt.Sprintf("%s; or, on the gateway in front of the server, run pasvgate in reverse mode: pasvgate run --upstream %s --public-addr %s",
		own, upstream, want)
}

// rangeFix tells how to open the server's passive ports, port being one it
// handed out.
func rangeFix(kind string, port uint16) string {
	var setting string
	switch kind {
	case ServerVsftpd:
		setting = "vsftpd's pasv_min_port= and pasv_max_port="
	case ServerProFTPD:
		setting = "ProFTPD's PassivePorts"
	case ServerPureFTPd:
		setting = "pure-ftpd's -p FIRST:LAST"
	case ServerFileZilla:
		setting = "FileZilla Server's passive port range"
	case ServerIIS:
		setting = "IIS's FTP Firewall Support data channel port range"
	default:
		setting = "the server's passive port range setting"
	}
	return fmt.Sprintf("let TCP to the server's passive ports through every firewall on the way (port %d was handed out; %s sets the range); or run pasvgate in front of the server, which opens exactly the port each transfer needs, for that client only",
		port, setting)
}

// lowPortFix tells how to move the passive range above the privileged
// ports.
func lowPortFix(kind string) string {
	switch kind {
	case ServerVsftpd:
		return "set pasv_min_port=40000 and pasv_max_port=40999 in vsftpd.conf (any range above 1023), and open it in the firewall"
	case ServerProFTPD:
		return "set PassivePorts 40000 40999 in proftpd.conf (any range above 1023), and open it in the firewall"
	case ServerPureFTPd:
		return "start pure-ftpd with -p 40000:40999 (any range above 1023), and open it in the firewall"
	}
	return "configure a passive port range above 1023 (such as 40000-40999), and open it in the firewall"
}

// pasvgateAuthRefusal is the start of the text pasvgate's proxy answers
// AUTH with (proxy/session.go). It is the one place the probe matches
// English reply text, and only pasvgate's own: no other program's wording
// is relied on.
const pasvgateAuthRefusal = "AUTH is not supported through this gateway"

// isPasvgateAuthRefusal reports whether a 534 reply line came from
// pasvgate rather than from the server behind it.
func isPasvgateAuthRefusal(line string) bool {
	return strings.Contains(line, pasvgateAuthRefusal)
}
