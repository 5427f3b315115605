// Command pasvgate is a transparent FTP control-channel proxy for Linux
// gateways: it rewrites the data addresses in 227/229 replies and installs
// a kernel DNAT entry for each data connection, so FTP works through NAT.
//
// Subcommands: run, rules, demo, version. README.md documents them all.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: pasvgate <command> [flags]

commands:
  run       run the proxy (see pasvgate run -h)
  rules     list or flush pasvgate's kernel rules: pasvgate rules list|flush
  sessions  print the sessions a running pasvgate has open: pasvgate sessions [--metrics ADDR:PORT | --config FILE] [--json]
  probe     check an FTP server's passive set-up: pasvgate probe ftp://[user[:pass]@]host[:port]
  audit     report FTP control sessions in a capture: pasvgate audit FILE.pcap | --iface IFACE --duration D
  demo      run the built-in demonstration
  version   print the version
`

// exitError carries an exit status other than 0, 1 and 2, for commands
// whose statuses mean more (probe's 3: no session at all).
type exitError struct {
	code int
	err  error
}

// Error implements error.
func (e exitError) Error() string { return e.err.Error() }

// Unwrap gives errors.Is and errors.As the cause.
func (e exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(realMain(os.Args[1:]))
}

// realMain returns the exit status: 0 ok, 1 failure, 2 bad usage or config.
func realMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:])
	case "rules":
		err = cmdRules(args[1:])
	case "sessions":
		err = cmdSessions(args[1:])
	case "demo":
		err = cmdDemo(args[1:])
	case "probe":
		err = cmdProbe(args[1:])
	case "audit":
		err = cmdAudit(args[1:])
	case "version", "-version", "--version":
		fmt.Println("pasvgate", version)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "pasvgate: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		fmt.Fprintln(os.Stderr, "pasvgate:", err)
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "pasvgate:", err)
		return 2
	default:
		fmt.Fprintln(os.Stderr, "pasvgate:", err)
		return 1
	}
}
