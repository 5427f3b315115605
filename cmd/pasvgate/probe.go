package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pasvgate/pasvgate/proxy/probe"
)

// Exit statuses of `pasvgate probe`. 0, 1 and 2 mean what they mean for
// every command; 3 separates "the server is not there or will not let us
// in" from "the server is there and passive FTP is broken", which is what
// a monitoring check needs to tell apart.
const (
	probeExitWorks     = 0 // passive FTP works for clients that trust the server's address
	probeExitFails     = 1 // logged in, but that data connection or listing failed
	probeExitUsage     = 2 // bad flags or URL
	probeExitNoSession = 3 // no control connection, no greeting, or login refused
)

const probeUsage = `usage: pasvgate probe [flags] ftp://[user[:pass]@]host[:port]

Logs in (anonymously unless the URL names a user), asks for PASV and EPSV
(and PORT and EPRT with --active), opens each data connection, lists the
root directory, and reports what it found, with fixes.

When the server offers AUTH TLS it also checks FTPS: the certificate (for
the URL's host, or --server-name, against the system roots or --ca), the
TLS versions accepted, a PROT P listing whose data connection resumes the
control connection's TLS session, and whether the server requires that.

The password can also come from a file (--password-file) or from the
environment variable PASVGATE_PASSWORD, so that it is not in the process
list, where every user of the host can read a URL's password.

Exit status: 0 passive FTP works for clients that trust the server's
address; 1 it does not; 2 bad usage; 3 no connection, or login refused.
The FTPS findings do not change it: read them in the report.

flags:
`

// probeArgs is what the command line says.
type probeArgs struct {
	opt  probe.Options
	json bool
}

// cmdProbe runs `pasvgate probe`. The report goes to standard output, as
// text or (--json) JSON, whatever the outcome.
func cmdProbe(args []string) error {
	code, err := runProbe(context.Background(), args, os.Stdout, os.Stderr)
	if code == probeExitNoSession {
		return exitError{code: code, err: err}
	}
	return err
}

// runProbe is cmdProbe with its streams and exit status exposed for
// tests. The error goes with every status but 0: a usageError for 2,
// flag.ErrHelp for -h.
func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	pa, err := parseProbeArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return probeExitWorks, err
	}
	if err != nil {
		return probeExitUsage, err
	}
	rep, err := probe.Run(ctx, pa.opt)
	if err != nil {
		return probeExitUsage, usageError{err}
	}
	if pa.json {
		err = probe.WriteJSON(stdout, rep)
	} else {
		err = probe.WriteText(stdout, rep)
	}
	if err != nil {
		return probeExitFails, fmt.Errorf("probe: writing the report: %w", err)
	}
	switch rep.Verdict {
	case probe.VerdictWorks:
		return probeExitWorks, nil
	case probe.VerdictNoConnect:
		return probeExitNoSession, errors.New("probe: could not open an FTP control connection")
	case probe.VerdictNoLogin:
		return probeExitNoSession, errors.New("probe: could not log in")
	}
	return probeExitFails, errors.New("probe: passive FTP fails for clients that trust the server's address")
}

// parseProbeArgs reads the flags and the one URL, in any order: the flag
// package stops at the first argument that is not a flag, and
// "pasvgate probe ftp://host --json" is how people type it.
func parseProbeArgs(args []string, stderr io.Writer) (probeArgs, error) {
	var pa probeArgs
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), probeUsage)
		fs.PrintDefaults()
	}
	fs.DurationVar(&pa.opt.Timeout, "timeout", probe.DefaultTimeout, "bound on each step: connecting, each reply, each data connection")
	fs.BoolVar(&pa.opt.Active, "active", false, "also try active mode (PORT and EPRT): the server connects back to this host")
	fs.BoolVar(&pa.json, "json", false, "print the report as JSON")
	fs.StringVar(&pa.opt.CAFile, "ca", "", "check the server's TLS certificate against the CA certificates in this PEM `FILE` instead of the system roots")
	fs.StringVar(&pa.opt.ServerName, "server-name", "", "check the server's TLS certificate for this `NAME`, and send it as SNI (default: the URL's host)")
	var passFile string
	fs.StringVar(&passFile, "password-file", "", "read the password from the first line of this `FILE` (- for standard input) instead of the URL")
	var urls []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return pa, err
			}
			return pa, usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		urls = append(urls, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(urls) != 1 {
		return pa, usageError{errors.New("probe: give one ftp://[user[:pass]@]host[:port] URL")}
	}
	if pa.opt.Timeout <= 0 || pa.opt.Timeout > time.Minute {
		return pa, usageError{fmt.Errorf("probe: --timeout %s: want more than 0 and at most 1m", pa.opt.Timeout)}
	}
	addr, user, pass, err := parseFTPURL(urls[0])
	if err != nil {
		return pa, usageError{fmt.Errorf("probe: %w", err)}
	}
	if pass, err = probePassword(user, pass, passFile, os.Getenv(passwordEnv)); err != nil {
		return pa, usageError{fmt.Errorf("probe: %w", err)}
	}
	pa.opt.Addr, pa.opt.User, pa.opt.Password = addr, user, pass
	return pa, nil
}

// passwordEnv names the environment variable probe reads a password from.
const passwordEnv = "PASVGATE_PASSWORD"

// maxPasswordFile bounds what probe reads of a --password-file: a password
// is one short line, and the file could be anything.
const maxPasswordFile = 4096

// probePassword picks the login password from the URL, a file or the
// environment, and refuses more than one: which one would win is a guess
// a user should not have to make. Without a user in the URL, a password
// from anywhere is an error: an anonymous login would not use it.
func probePassword(user, fromURL, file, fromEnv string) (string, error) {
	var sources []string
	pass := fromURL
	if fromURL != "" {
		sources = append(sources, "the URL")
	}
	if file != "" {
		sources = append(sources, "--password-file")
		var r io.Reader = os.Stdin
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return "", fmt.Errorf("--password-file: %w", err)
			}
			defer f.Close()
			r = f
		}
		b, err := io.ReadAll(io.LimitReader(r, maxPasswordFile))
		if err != nil {
			return "", fmt.Errorf("--password-file: %w", err)
		}
		pass, _, _ = strings.Cut(string(b), "\n")
		pass = strings.TrimSuffix(pass, "\r")
	}
	if fromEnv != "" {
		sources = append(sources, passwordEnv)
		pass = fromEnv
	}
	switch {
	case len(sources) > 1:
		return "", fmt.Errorf("a password from %s: give it one way only", strings.Join(sources, " and "))
	case len(sources) == 1 && user == "":
		return "", fmt.Errorf("a password from %s but no user in the URL (ftp://USER@host)", sources[0])
	case strings.ContainsAny(pass, "\r\n\x00"):
		// It would make PASS two commands.
		return "", errors.New("line break or NUL in the password")
	}
	return pass, nil
}

// parseFTPURL takes ftp://[user[:pass]@]host[:port][/], or the same
// without "ftp://". It returns the control address host:port (port 21
// unless given) and the login; an empty user means anonymous. A path
// other than "/" is refused rather than ignored: the probe lists the
// root, and should not let anyone believe it checked another directory.
func parseFTPURL(s string) (addr, user, pass string, err error) {
	if !strings.Contains(s, "://") {
		s = "ftp://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", "", "", fmt.Errorf("bad URL: %w", err)
	}
	switch {
	case u.Scheme == "ftps":
		return "", "", "", fmt.Errorf("bad URL %q: the probe does not speak implicit FTPS; give ftp://: it checks explicit FTPS (AUTH TLS) there", s)
	case u.Scheme != "ftp":
		return "", "", "", fmt.Errorf("bad URL %q: scheme %q, want ftp", s, u.Scheme)
	case u.Opaque != "" || u.Hostname() == "":
		return "", "", "", fmt.Errorf("bad URL %q: no host", s)
	case u.Path != "" && u.Path != "/":
		return "", "", "", fmt.Errorf("bad URL %q: a path (%s); the probe lists the root directory only", s, u.Path)
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", "", "", fmt.Errorf("bad URL %q: a query or fragment", s)
	}
	port := u.Port()
	if port == "" {
		port = "21"
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", "", fmt.Errorf("bad URL %q: port %q, want 1-65535", s, port)
	}
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
		if user == "" {
			return "", "", "", fmt.Errorf("bad URL %q: empty user name", s)
		}
		// Percent-encoding can smuggle a line break into the USER or PASS
		// command, which would make it two commands.
		if strings.ContainsAny(user+pass, "\r\n\x00") {
			return "", "", "", fmt.Errorf("bad URL %q: line break or NUL in the user or password", s)
		}
	}
	return net.JoinHostPort(u.Hostname(), port), user, pass, nil
}
