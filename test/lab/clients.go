package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Op is what a client does in one run.
type Op string

// Operations every client driver supports.
const (
	Get  Op = "get"  // download Remote to Local
	Put  Op = "put"  // upload Local to Remote
	List Op = "list" // LIST the login directory; the listing is Result.Output
)

// Ops lists every operation, in the order reports use.
var Ops = []Op{Get, Put, List}

// Transfer is one client run.
type Transfer struct {
	// NS is the namespace the client runs in.
	NS string
	// Host is the IP address (IPv4 or IPv6) the client dials on port 21.
	Host string
	// User and Password log in.
	User, Password string
	// EPSV selects the extended commands of RFC 2428: in passive mode
	// EPSV (229) instead of PASV (227), in active mode EPRT instead of
	// PORT. Some clients fall back from a refused EPSV or EPRT on their
	// own, so a caller that cares which command ran reads the control
	// channel (see Stream).
	EPSV bool
	// Active selects active mode: the client listens on its control
	// connection's local address and sends PORT or EPRT, and the server
	// connects to it. False is passive mode.
	Active bool
	// IgnorePASVAddr keeps the client's own default of ignoring the
	// address of a 227 reply: it connects its passive data connection to
	// the address it dialed, with the 227's port (curl since 7.74, Python
	// ftplib; lftp with ftp:ignore-pasv-address). For the clients of the
	// gateway cells that must stay the exception (see Client). A client
	// that cannot do it returns ErrUnsupported.
	IgnorePASVAddr bool
	// Op is the operation.
	Op Op
	// Remote is the path on the server, relative to the login directory
	// (Get, Put).
	Remote string
	// Local is the file on the client's side (Get: written, Put: read).
	Local string
	// Timeout bounds the whole run; 0 means 60 s.
	Timeout time.Duration
}

// Result is what a client run printed.
type Result struct {
	// Output is the client's standard output (the listing, for List).
	Output string
	// Log is the client's diagnostics (standard error).
	Log string
}

// Client drives one FTP client program. Every driver makes its client trust
// the address in a 227 reply (see shared/FACTS.md), unless
// Transfer.IgnorePASVAddr asks otherwise: a client that substitutes the
// control connection's address would make a test of 227 rewriting pass
// without proving anything.
type Client interface {
	// Name is a short name for reports.
	Name() string
	// Available returns nil, or an error wrapping ErrMissing that says
	// what is not installed.
	Available() error
	// Run performs tr inside the lab and returns what the client printed.
	// A client failure (non-zero exit) is an error.
	Run(ctx context.Context, l *Lab, tr Transfer) (Result, error)
}

// ErrUnsupported wraps the error of a client driver asked for something its
// client cannot do, such as EPRT over IPv4 from lftp (which sends EPRT only
// for IPv6) or PORT over IPv6 (which cannot carry an IPv6 address), so
// that a test can skip the cell with the reason instead of failing it.
var ErrUnsupported = errors.New("not supported by this client")

// is6 reports whether tr dials an IPv6 address.
func (tr Transfer) is6() bool {
	a, err := netip.ParseAddr(tr.Host)
	return err == nil && a.Is6() && !a.Is4In6()
}

// command is the data-connection command tr asks for: PASV, EPSV, PORT or
// EPRT.
func (tr Transfer) command() string {
	switch {
	case tr.Active && tr.EPSV:
		return "EPRT"
	case tr.Active:
		return "PORT"
	case tr.EPSV:
		return "EPSV"
	}
	return "PASV"
}

// checkFamily refuses what no client can do: PASV and PORT carry only
// IPv4 addresses (RFC 2428 replaces them with EPSV and EPRT for IPv6).
func (tr Transfer) checkFamily(client string) error {
	if tr.is6() && !tr.EPSV {
		return fmt.Errorf("%s: %s over IPv6: the command carries IPv4 only: %w", client, tr.command(), ErrUnsupported)
	}
	return nil
}

// urlHost is tr.Host as the host part of a URL: an IPv6 address in
// brackets.
func (tr Transfer) urlHost() string {
	if tr.is6() {
		return "[" + tr.Host + "]"
	}
	return tr.Host
}

func (tr Transfer) timeout() time.Duration {
	if tr.Timeout > 0 {
		return tr.Timeout
	}
	return 60 * time.Second
}

// run executes a client program inside tr.NS, bounded by tr's timeout.
func run(ctx context.Context, l *Lab, tr Transfer, name string, args ...string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, tr.timeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", tr.NS, name}, args...)...)
	var stdout, stderr lockedBuffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	res := Result{Output: stdout.String(), Log: stderr.String()}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (timeout %v)", err, tr.timeout())
		}
		return res, fmt.Errorf("%s %s: %w: %s", name, tr.Op, err, tail(res.Log, 1500))
	}
	return res, nil
}

func lookPath(name string) error {
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%s: %w (run test/install-deps.sh)", name, ErrMissing)
	}
	return nil
}

// Curl drives curl. PASV: --disable-epsv --no-ftp-skip-pasv-ip (curl
// ignores the 227 address by default since 7.74). EPSV: curl's default
// passive mode, EPSV first. Active: --ftp-port - (listen on the control
// connection's local address), EPRT first unless --disable-eprt, which
// selects PORT. curl falls back from a refused EPSV to PASV, and from a
// refused EPRT to PORT, by itself; the caller sees that in the control
// channel. An IPv6 host goes into the URL in brackets, with --globoff so
// that curl does not read them as a glob. With TLS set, the control
// channel is FTPS, and the data too with TLS.ProtectData (see
// curlTLSArgs).
type Curl struct {
	// TLS, if set, makes the control channel FTPS; nil is plain FTP.
	TLS *ClientTLS
}

// Name implements Client.
func (Curl) Name() string { return "curl" }

// Available implements Client.
func (Curl) Available() error { return lookPath("curl") }

// Run implements Client.
func (c Curl) Run(ctx context.Context, l *Lab, tr Transfer) (Result, error) {
	if err := tr.checkFamily("curl"); err != nil {
		return Result{}, err
	}
	tlsArgs, url, err := curlTLSArgs(c.TLS, tr)
	if err != nil {
		return Result{}, err
	}
	args := []string{
		"--silent", "--show-error", "--globoff",
		"--max-time", strconv.Itoa(int(tr.timeout().Seconds())),
		"--connect-timeout", "5",
		"--user", tr.User + ":" + tr.Password,
	}
	switch {
	case tr.Active:
		args = append(args, "--ftp-port", "-")
		if !tr.EPSV {
			args = append(args, "--disable-eprt")
		}
	case tr.IgnorePASVAddr:
		// curl's default since 7.74, spelt out.
		args = append(args, "--ftp-pasv", "--ftp-skip-pasv-ip")
		if !tr.EPSV {
			args = append(args, "--disable-epsv")
		}
	default:
		args = append(args, "--ftp-pasv", "--no-ftp-skip-pasv-ip")
		if !tr.EPSV {
			args = append(args, "--disable-epsv")
		}
	}
	args = append(args, tlsArgs...)
	switch tr.Op {
	case Get:
		args = append(args, "--output", tr.Local, url+tr.Remote)
	case Put:
		args = append(args, "--upload-file", tr.Local, url+tr.Remote)
	case List:
		// A URL ending in "/" makes curl send LIST.
		args = append(args, url)
	default:
		return Result{}, fmt.Errorf("curl: unknown op %q", tr.Op)
	}
	return run(ctx, l, tr, "curl", args...)
}

// Lftp drives lftp with ftp:fix-pasv-address and ftp:ignore-pasv-address
// off (by default lftp swaps a private 227 address for the control
// connection's; Transfer.IgnorePASVAddr turns ignore-pasv-address on) and ftp:prefer-epsv chosen by the mode. TLS is off unless Lftp.TLS
// says otherwise: the servers in the lab speak plain FTP, and lftp would
// otherwise try AUTH TLS.
//
// Active mode is ftp:passive-mode no (and ftp:auto-passive-mode no, so a
// failed active transfer is not retried passively). lftp has no setting
// for the active command: it sends PORT for an IPv4 data socket and EPRT
// for an IPv6 one, so EPRT over IPv4 is ErrUnsupported.
//
// With TLS set, lftp speaks FTPS (see lftpTLSSettings) and prints its
// debug output on standard error (-d: the control channel as lftp sees
// it, inside TLS), for failure messages.
type Lftp struct {
	// TLS, if set, makes the control channel FTPS; nil is plain FTP.
	TLS *ClientTLS
}

// Name implements Client.
func (Lftp) Name() string { return "lftp" }

// Available implements Client.
func (Lftp) Available() error { return lookPath("lftp") }

// Run implements Client.
func (lf Lftp) Run(ctx context.Context, l *Lab, tr Transfer) (Result, error) {
	if err := tr.checkFamily("lftp"); err != nil {
		return Result{}, err
	}
	if tr.Active && tr.EPSV && !tr.is6() {
		return Result{}, fmt.Errorf("lftp: EPRT over IPv4: lftp sends EPRT only for IPv6: %w", ErrUnsupported)
	}
	epsv := "no"
	if tr.EPSV {
		epsv = "yes"
	}
	passive := "yes"
	if tr.Active {
		passive = "no"
	}
	ignore := "no"
	if tr.IgnorePASVAddr {
		ignore = "yes"
	}
	settings := []string{
		"set cmd:fail-exit yes",
		// One attempt, short waits: a failing cell must fail, not retry
		// until the timeout.
		"set net:max-retries 1",
		"set net:timeout 10",
		"set net:reconnect-interval-base 1",
		"set ftp:passive-mode " + passive,
		"set ftp:auto-passive-mode no",
		"set ftp:fix-pasv-address no",
		"set ftp:ignore-pasv-address " + ignore,
		"set ftp:prefer-epsv " + epsv,
		"set xfer:clobber yes",
	}
	tlsSettings, url := lftpTLSSettings(lf.TLS, tr)
	settings = append(settings, tlsSettings...)
	settings = append(settings, fmt.Sprintf("open -u %s,%s %s", tr.User, tr.Password, url))
	switch tr.Op {
	case Get:
		settings = append(settings, fmt.Sprintf("get %s -o %s", tr.Remote, tr.Local))
	case Put:
		settings = append(settings, fmt.Sprintf("put %s -o %s", tr.Local, tr.Remote))
	case List:
		settings = append(settings, "ls")
	default:
		return Result{}, fmt.Errorf("lftp: unknown op %q", tr.Op)
	}
	// -n would skip ~/.lftprc but not /etc/lftp.conf; settings here come
	// after both, so they win either way.
	args := []string{"-c", strings.Join(settings, "; ")}
	if lf.TLS != nil {
		args = append([]string{"-d"}, args...)
	}
	return run(ctx, l, tr, "lftp", args...)
}

// Ftplib drives Python's ftplib, with trust_server_pasv_ipv4_address set.
// ftplib sends EPSV only on IPv6 control connections; for EPSV mode the
// script overrides makepasv to send EPSV and parse the 229 with ftplib's own
// parse229, so the rest of ftplib's data path is unchanged. Active mode is
// set_pasv(False): ftplib listens on the control connection's local
// address and sends PORT over IPv4 and EPRT over IPv6; for EPRT over IPv4
// the script sends ftplib's own sendeprt instead of sendport.
//
// With TLS set it is ftplib.FTP_TLS: AUTH TLS before the login, PROT C
// after it (PROT P with TLS.ProtectData: stock ftplib, whose data
// connections make full handshakes, never resuming the control
// connection's session), and a line on standard error with the
// certificate it was shown (see PeerCertOf).
type Ftplib struct {
	// Python is the interpreter; empty means Debian's /usr/bin/python3,
	// so a pyenv or venv on PATH cannot change which ftplib runs.
	Python string
	// TLS, if set, makes the control channel FTPS; nil is plain FTP.
	// Implicit FTPS is ErrUnsupported.
	TLS *ClientTLS
}

// Name implements Client.
func (Ftplib) Name() string { return "ftplib" }

func (f Ftplib) python() string {
	if f.Python != "" {
		return f.Python
	}
	return "/usr/bin/python3"
}

// Available implements Client.
func (f Ftplib) Available() error {
	if _, err := os.Stat(f.python()); err != nil {
		return fmt.Errorf("%s: %w (run test/install-deps.sh)", f.python(), ErrMissing)
	}
	return nil
}

// ftplibScript is the client program. Arguments: host user password
// pasv|epsv|port|eprt get|put|list remote local timeout trust|ignore
// clear|explicit|explicit-tls12 cafile C|P.
const ftplibScript = `
import ftplib, hashlib, ssl, sys
host, user, password, mode, op, remote, local, timeout, pasvaddr, tls, cafile, prot = sys.argv[1:]

class FTP(ftplib.FTP_TLS if tls != "clear" else ftplib.FTP):
    # By default ftplib connects to the control peer, not to the 227 address.
    trust_server_pasv_ipv4_address = pasvaddr == "trust"

    def makepasv(self):
        if mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def sendport(self, host, port):
        if mode == "eprt":
            return self.sendeprt(host, port)
        return super().sendport(host, port)

if tls != "clear":
    context = ssl.create_default_context(cafile=cafile)
    if tls == "explicit-tls12":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = FTP(timeout=float(timeout), context=context)
else:
    ftp = FTP(timeout=float(timeout))
ftp.connect(host, 21)
if tls != "clear":
    ftp.auth()
    der = ftp.sock.getpeercert(binary_form=True)
    subject = ",".join("%s=%s" % rdn[0] for rdn in ftp.sock.getpeercert()["subject"])
    print("pglab peer certificate sha256=%s subject=%s" % (hashlib.sha256(der).hexdigest(), subject), file=sys.stderr)
ftp.login(user, password)
if tls != "clear":
    if prot == "P":
        ftp.prot_p()
    else:
        ftp.prot_c()
ftp.set_pasv(mode in ("pasv", "epsv"))
if op == "get":
    with open(local, "wb") as f:
        ftp.retrbinary("RETR " + remote, f.write)
elif op == "put":
    with open(local, "rb") as f:
        ftp.storbinary("STOR " + remote, f)
elif op == "list":
    ftp.retrlines("LIST", print)
else:
    sys.exit("unknown op " + op)
ftp.quit()
`

// Run implements Client.
func (f Ftplib) Run(ctx context.Context, l *Lab, tr Transfer) (Result, error) {
	if err := tr.checkFamily("ftplib"); err != nil {
		return Result{}, err
	}
	mode := strings.ToLower(tr.command())
	pasvaddr := "trust"
	if tr.IgnorePASVAddr {
		pasvaddr = "ignore"
	}
	tls, cafile, prot, err := ftplibTLSArgs(f.TLS)
	if err != nil {
		return Result{}, err
	}
	return run(ctx, l, tr, f.python(), "-c", ftplibScript,
		tr.Host, tr.User, tr.Password, mode, string(tr.Op), tr.Remote, tr.Local,
		strconv.Itoa(int(tr.timeout().Seconds())), pasvaddr, tls, cafile, prot)
}

// JLFTP drives test/interop/cmd/jlclient, a small program on
// github.com/jlaffaye/ftp with DialWithTrustPasvIP(true). It prints every
// address it dials on standard error ("dial control ADDR", "dial data
// ADDR"), which ends up in Result.Log and in failure messages; the interop
// matrix checks the same thing for every client from the capture.
//
// With TLS set it speaks explicit FTPS with protected data (see
// jlclientTLSArgs), resuming the control connection's TLS session on its
// data connections (a client session cache), and prints the certificate
// it was shown as Ftplib does (see PeerCertOf).
type JLFTP struct {
	// Bin is the built jlclient (see BuildGo).
	Bin string
	// TLS, if set, makes the session FTPS with PROT P; nil is plain FTP.
	TLS *ClientTLS
}

// Name implements Client.
func (JLFTP) Name() string { return "jlaffaye" }

// Available implements Client.
func (j JLFTP) Available() error {
	if j.Bin == "" {
		return fmt.Errorf("jlclient not built: %w", ErrMissing)
	}
	if _, err := os.Stat(j.Bin); err != nil {
		return fmt.Errorf("%s: %w", j.Bin, ErrMissing)
	}
	return nil
}

// Run implements Client. jlaffaye/ftp has no active mode, so Active is
// ErrUnsupported.
func (j JLFTP) Run(ctx context.Context, l *Lab, tr Transfer) (Result, error) {
	if tr.Active {
		return Result{}, fmt.Errorf("jlaffaye/ftp has no active mode: %w", ErrUnsupported)
	}
	if tr.IgnorePASVAddr {
		return Result{}, fmt.Errorf("jlclient always trusts the 227 address: %w", ErrUnsupported)
	}
	if err := tr.checkFamily("jlaffaye"); err != nil {
		return Result{}, err
	}
	tlsArgs, err := jlclientTLSArgs(j.TLS)
	if err != nil {
		return Result{}, err
	}
	return run(ctx, l, tr, j.Bin, append([]string{
		"--addr", net.JoinHostPort(tr.Host, "21"),
		"--user", tr.User,
		"--password", tr.Password,
		"--epsv=" + strconv.FormatBool(tr.EPSV),
		"--op", string(tr.Op),
		"--remote", tr.Remote,
		"--local", tr.Local,
		"--timeout", tr.timeout().String()}, tlsArgs...)...)
}

// ClientByName returns the driver of the real client name (curl, lftp,
// ftplib), nil for "raw" (the suites' own raw client), or an error wrapping
// ErrMissing for a client that is not installed or not known.
func ClientByName(name string) (Client, error) {
	var c Client
	switch name {
	case "raw":
		return nil, nil
	case "curl":
		c = Curl{}
	case "lftp":
		c = Lftp{}
	case "ftplib":
		c = Ftplib{}
	default:
		return nil, fmt.Errorf("client %q is not in these suites: %w", name, ErrMissing)
	}
	return c, c.Available()
}
