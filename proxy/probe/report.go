package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Report is the result of one probe. Its JSON form (WriteJSON) is a stable
// interface for scripts and monitoring: fields are only ever added. Nothing
// in it depends on the time of day but a certificate's days left, so two
// probes of an unchanged server on the same day differ only in the data
// ports the server handed out.
type Report struct {
	// Target is the URL probed, without the password.
	Target string `json:"target"`
	// ControlAddress is the server's end of the control connection
	// ("192.0.2.10:21"): what a client that dialled Target reached. Empty
	// if no connection was made.
	ControlAddress string `json:"control_address"`
	// LocalAddress is the probe's own address on that connection (without
	// the port): where an active-mode server has to connect back to.
	LocalAddress string `json:"local_address"`
	// Banner is the first line of the server's greeting, and Server and
	// ServerVersion what Identify made of the greeting.
	Banner        string `json:"banner"`
	Server        string `json:"server"`
	ServerVersion string `json:"server_version"`
	// Connected and LoggedIn tell how far the control channel got.
	Connected bool `json:"connected"`
	LoggedIn  bool `json:"logged_in"`
	// User is the login name used.
	User string `json:"user"`
	// AuthTLS is whether the server offers FTPS, and AuthReply the reply
	// that decided it (a FEAT line or the reply to AUTH TLS).
	AuthTLS   AuthTLS `json:"auth_tls"`
	AuthReply string  `json:"auth_reply"`
	// TLS is what the FTPS checks found, when the server offers AUTH
	// TLS; nil when it does not, or no connection was made.
	TLS *TLSReport `json:"tls,omitempty"`
	// Modes has one entry for each data-connection mode tried, in order:
	// PASV, EPSV, and with Options.Active PORT and EPRT.
	Modes []ModeResult `json:"modes"`
	// Findings is the diagnosis, one per check, in a fixed order.
	Findings []Finding `json:"findings"`
	// Verdict sums it up.
	Verdict Verdict `json:"verdict"`

	// failure says why the control channel did not get through: set with
	// Connected or LoggedIn false.
	failure string
}

// AuthTLS is what the probe learnt about FTPS (RFC 4217).
type AuthTLS string

// The AuthTLS values.
const (
	AuthUnknown    AuthTLS = ""            // not found out (no connection)
	AuthOffered    AuthTLS = "offered"     // FEAT lists AUTH TLS, or AUTH TLS got 234
	AuthRefused    AuthTLS = "refused"     // AUTH TLS got 534 (denied for policy reasons)
	AuthByPasvgate AuthTLS = "pasvgate"    // 534 from pasvgate, which is in front of the server
	AuthNotOffered AuthTLS = "not-offered" // FEAT lists no AUTH, and AUTH TLS was refused otherwise
	AuthNoAnswer   AuthTLS = "no-answer"   // AUTH TLS got no reply in time
)

// ModeResult is what one data-connection mode did.
type ModeResult struct {
	// Mode is the command: "PASV", "EPSV", "PORT" or "EPRT".
	Mode string `json:"mode"`
	// Skipped, if not empty, says why the mode was not tried.
	Skipped string `json:"skipped,omitempty"`
	// Code and Reply are the server's reply to the command (its last line);
	// Code 0 with Error set when none came.
	Code  int    `json:"code"`
	Reply string `json:"reply"`
	// Error says what went wrong on the control channel, or why the reply
	// could not be used.
	Error string `json:"error,omitempty"`
	// Advertised is the data address in a 227 reply ("192.0.2.10:30001"),
	// and Class what that address is to a client on the Internet. For
	// EPSV, Advertised is the control address with the 229's port.
	Advertised string `json:"advertised,omitempty"`
	Class      Class  `json:"class,omitempty"`
	// Attempts are the data connections tried. Passive modes first try
	// the advertised address; when a 227 advertises an address other than
	// the control address, PASV also tries the control address with the
	// port the server handed out, which is where clients that ignore the
	// 227 address (Python's ftplib by default, curl since 7.74) connect.
	// Active modes have one attempt: the server connecting back.
	Attempts []Attempt `json:"attempts"`
}

// Attempt is one data connection and the listing over it.
type Attempt struct {
	// Via is "advertised" or "control" for passive modes, "server" for an
	// active one.
	Via string `json:"via"`
	// Address is where the connection went: the probe's target for
	// passive modes, the probe's listener for active ones.
	Address string `json:"address"`
	// Connected reports that the data connection was established, Peer is
	// who connected (active modes), and Error why it failed otherwise.
	Connected bool   `json:"connected"`
	Peer      string `json:"peer,omitempty"`
	Error     string `json:"error,omitempty"`
	// ListCode and ListReply are the final reply to LIST, ListBytes the
	// size of the listing, and Listed reports a complete listing: a 226 or
	// 250 and the data connection closed by the server.
	ListCode  int    `json:"list_code,omitempty"`
	ListReply string `json:"list_reply,omitempty"`
	ListBytes int    `json:"list_bytes"`
	Listed    bool   `json:"listed"`
}

// TLSReport is what the probe saw over FTPS (RFC 4217): one session
// (AUTH TLS, the certificate, a login, PROT P data connections) and one
// handshake per TLS version.
type TLSReport struct {
	// ServerName is the name the certificate was checked for: the one
	// given (Options.ServerName), else the host of the URL. It is also
	// the SNI sent, unless it is an address.
	ServerName string `json:"server_name"`
	// Roots is what the certificate was checked against: "system roots",
	// or the CA file given.
	Roots string `json:"roots"`
	// Error says why there is no TLS session: AUTH TLS refused, or the
	// handshake failed. The fields below it are then empty.
	Error string `json:"error,omitempty"`
	// Version and CipherSuite are what the session negotiated ("TLS 1.3",
	// "TLS_AES_128_GCM_SHA256").
	Version     string `json:"version,omitempty"`
	CipherSuite string `json:"cipher_suite,omitempty"`
	// Certificate is the server's certificate and what checking it found.
	Certificate *CertInfo `json:"certificate,omitempty"`
	// SessionTickets counts the tickets the server sent on the control
	// connection before the first data connection: Go's client resumes a
	// session only with a ticket.
	SessionTickets int `json:"session_tickets"`
	// LoginError says why the login over TLS failed; PBSZReply and
	// PROTReply are the replies to PBSZ 0 and PROT P, PROTCode the
	// latter's code.
	LoginError string `json:"login_error,omitempty"`
	PBSZReply  string `json:"pbsz_reply,omitempty"`
	PROTCode   int    `json:"prot_code,omitempty"`
	PROTReply  string `json:"prot_reply,omitempty"`
	// Data are the PROT P data connections, in order: the first offers to
	// resume the control connection's TLS session; the second, made only
	// when the first resumed, does not.
	Data []TLSData `json:"data"`
	// Versions has one entry per TLS version tried, newest first.
	Versions []VersionResult `json:"versions"`
}

// CertInfo describes the server's certificate (the leaf).
type CertInfo struct {
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// Names are its subject alternative names: DNS names, then
	// addresses. Clients check the server's name against these only.
	Names     []string  `json:"names"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// DaysLeft is the number of whole days until NotAfter, negative once
	// it has passed.
	DaysLeft int `json:"days_left"`
	// Problems are what stop a client that checks certificates from
	// trusting it; empty when it verifies.
	Problems []CertProblem `json:"problems"`
}

// CertProblem is one reason a certificate does not verify.
type CertProblem struct {
	// Kind is one of the CertProblem kinds.
	Kind string `json:"kind"`
	// Detail says it in words.
	Detail string `json:"detail"`
}

// The kinds of CertProblem.
const (
	CertExpired          = "expired"
	CertNotYetValid      = "not-yet-valid"
	CertNameMismatch     = "name-mismatch"
	CertUnknownAuthority = "unknown-authority"
	CertInvalid          = "invalid" // anything else Go's verifier refuses
)

// TLSData is one PROT P data connection and the listing over it.
type TLSData struct {
	// Mode is "PASV" or "EPSV", and Advertised the data address its reply
	// named.
	Mode       string `json:"mode"`
	Advertised string `json:"advertised,omitempty"`
	// OfferedResume reports that the handshake offered to resume the
	// control connection's session (a session cache shared with it, the
	// same server name), and Resumed that the server accepted.
	OfferedResume bool `json:"offered_resume"`
	Resumed       bool `json:"resumed"`
	// Handshake reports a completed TLS handshake on the data connection.
	Handshake bool `json:"handshake"`
	// Attempt is the connection and the listing; Via is "advertised".
	Attempt
}

// VersionResult is one handshake limited to one TLS version.
type VersionResult struct {
	Version  string `json:"version"`
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
}

// Status grades a finding.
type Status string

// The statuses.
const (
	StatusOK   Status = "ok"
	StatusWarn Status = "warn" // works here, but not for every client or set-up
	StatusFail Status = "fail" // clients doing this fail
	StatusSkip Status = "skip" // not checked; the message says why
)

// Finding is one line of the diagnosis.
type Finding struct {
	// Check names what was looked at; see the Check constants.
	Check string `json:"check"`
	// Status grades it.
	Status Status `json:"status"`
	// Message says in plain words what the probe saw.
	Message string `json:"message"`
	// Fix suggests what to change, naming the setting of the server that
	// answered where it is known. Empty when nothing needs doing.
	Fix string `json:"fix,omitempty"`
}

// The checks, in the order findings are reported. Names are part of the
// JSON interface.
const (
	CheckConnect      = "connect"
	CheckLogin        = "login"
	CheckAuthTLS      = "auth-tls"
	CheckTLSCert      = "tls-cert"
	CheckTLSVersions  = "tls-versions"
	CheckPROTPData    = "prot-p-data"
	CheckTLSReuse     = "tls-session-reuse"
	CheckPASV         = "pasv"
	CheckPASVAddress  = "pasv-address"
	CheckPASVPort     = "pasv-port"
	CheckPASVData     = "pasv-data"
	CheckPASVIgnoring = "pasv-control-address"
	CheckEPSV         = "epsv"
	CheckEPSVPort     = "epsv-port"
	CheckEPSVData     = "epsv-data"
	CheckPORT         = "port"
	CheckEPRT         = "eprt"
)

// Verdict is the overall answer: would passive FTP work for a client that
// trusts the address the server advertises?
type Verdict string

// The verdicts.
const (
	// VerdictWorks: the PASV data connection to the advertised address
	// (EPSV's, when the control connection is IPv6) opened and a listing
	// came through.
	VerdictWorks Verdict = "works"
	// VerdictFails: logged in, but that data connection or listing failed.
	VerdictFails Verdict = "fails"
	// VerdictNoConnect: no FTP control connection (refused, timed out, or
	// no 220 greeting).
	VerdictNoConnect Verdict = "no-connection"
	// VerdictNoLogin: connected, but the login was refused.
	VerdictNoLogin Verdict = "no-login"
)

// WriteJSON writes r as indented JSON and a newline.
func WriteJSON(w io.Writer, r Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding report: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes r for a person: a short header, one finding per line
// (with its fix indented on the line after), and the verdict.
func WriteText(w io.Writer, r Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "probe %s\n", r.Target)
	if r.Connected {
		fmt.Fprintf(&b, "control connection: %s (from %s)\n", r.ControlAddress, r.LocalAddress)
		server := serverName(r.Server)
		if r.Server == ServerUnknown {
			server = "unknown"
		}
		if r.ServerVersion != "" {
			server += " " + r.ServerVersion
		}
		fmt.Fprintf(&b, "server: %s, greeting %q\n", server, r.Banner)
	}
	b.WriteString("\n")
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "%-4s  %-20s %s\n", statusLabel(f.Status), f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(&b, "      %-20s fix: %s\n", "", f.Fix)
		}
	}
	fmt.Fprintf(&b, "\nresult: %s\n", verdictText(r.Verdict))
	_, err := io.WriteString(w, b.String())
	return err
}

// statusLabel makes problems stand out in a column of "ok".
func statusLabel(s Status) string {
	switch s {
	case StatusWarn:
		return "WARN"
	case StatusFail:
		return "FAIL"
	case StatusSkip:
		return "skip"
	}
	return "ok"
}

func verdictText(v Verdict) string {
	switch v {
	case VerdictWorks:
		return "passive FTP works for clients that trust the server's address"
	case VerdictFails:
		return "passive FTP fails for clients that trust the server's address"
	case VerdictNoConnect:
		return "no FTP control connection"
	case VerdictNoLogin:
		return "could not log in"
	}
	return string(v)
}
