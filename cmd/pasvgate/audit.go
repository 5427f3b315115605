package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/proxy/sniff"
)

const auditUsage = `usage: pasvgate audit [flags] FILE
       pasvgate audit [flags] --iface IFACE --duration D

Reports every FTP control session in a capture: each data address the two
sides announced (227, 229, PORT, EPRT), whether it is one the other side can
use, whether a data connection to it was tried and answered; and which
servers advertise bad addresses. FILE is a pcap file (gzip-compressed or
not) or pcapng; "-" reads standard input. A live capture needs CAP_NET_RAW
and runs in the network namespace it is started in.

Exit status: 0 the capture shows no problem; 1 it shows problems (the
report says which), or it could not be read; 2 bad usage; 3 the capture
holds no FTP control session.

flags:
`

// Exit statuses of `pasvgate audit`, in step with probe's: 1 for what is
// broken, 3 for nothing to judge (a capture on the wrong interface or
// ports), which a monitoring check needs to tell apart.
const (
	auditExitProblems  = 1 // the report lists problems; also: the capture could not be read
	auditExitNoSession = 3 // no FTP control session in the capture
)

// maxAuditPorts bounds --ports: each port costs two instructions of the
// live capture's filter, whose jumps reach 255 instructions.
const maxAuditPorts = 16

// cmdAudit is `pasvgate audit`: it reads a capture, from a file or live,
// and prints what sniff reports. Interrupting a live capture ends it
// early and still prints the report.
func cmdAudit(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runAudit(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

// runAudit is cmdAudit with its streams given, for tests.
func runAudit(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), auditUsage)
		fs.PrintDefaults()
	}
	iface := fs.String("iface", "", "capture live on `IFACE` instead of reading a file")
	duration := fs.Duration("duration", 0, "with --iface: how long to capture (required; an interrupt ends it early)")
	portList := fs.String("ports", "21", "FTP control `PORTS`, comma-separated")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	write := fs.String("write", "", "with --iface: also save the captured frames to `FILE` (pcap)")
	maxSessions := fs.Int("max-sessions", 10000, "sessions listed in full; the rest are only counted in the summary")
	maxOpen := fs.Int("max-open", 1024, "control connections followed at once; segments of more are counted and dropped")

	files, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err}
	}
	ports, err := parsePorts(*portList)
	if err != nil {
		return usageError{fmt.Errorf("--ports: %w", err)}
	}
	switch {
	case *maxSessions < 1:
		return usageError{errors.New("--max-sessions must be at least 1")}
	case *maxOpen < 1:
		return usageError{errors.New("--max-open must be at least 1")}
	case *iface == "" && len(files) != 1:
		return usageError{errors.New("audit: give one capture FILE, or --iface and --duration (see pasvgate audit -h)")}
	case *iface != "" && len(files) > 0:
		return usageError{fmt.Errorf("audit: --iface and a FILE (%q) exclude each other", files[0])}
	case *iface != "" && *duration <= 0:
		return usageError{errors.New("--duration: a live capture needs a positive duration, such as 30s")}
	case *iface == "" && *duration != 0:
		return usageError{errors.New("--duration applies only with --iface")}
	case *iface == "" && *write != "":
		return usageError{errors.New("--write applies only with --iface")}
	}
	cfg := sniff.Config{Ports: ports, Limits: sniff.Limits{MaxSessions: *maxSessions, MaxOpen: *maxOpen}}

	var rep *sniff.Report
	var runErr error
	if *iface != "" {
		rep, runErr = auditLive(ctx, *iface, *duration, *write, cfg, stderr)
		if rep == nil {
			return runErr
		}
	} else {
		rep, err = auditFile(files[0], stdin, cfg)
		if err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return fmt.Errorf("audit: writing the report: %w", err)
	}
	switch {
	case runErr != nil:
		return runErr
	case len(rep.Sessions)+rep.SessionsOmitted == 0:
		return exitError{code: auditExitNoSession, err: fmt.Errorf("audit: no FTP control session on ports %s", joinUint16(ports))}
	case rep.Problems == 1:
		return exitError{code: auditExitProblems, err: errors.New("audit: 1 problem found")}
	case rep.Problems > 1:
		return exitError{code: auditExitProblems, err: fmt.Errorf("audit: %d problems found", rep.Problems)}
	}
	return nil
}

// auditFile reads the capture file name ("-": stdin).
func auditFile(name string, stdin io.Reader, cfg sniff.Config) (*sniff.Report, error) {
	r, source := stdin, "standard input"
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		defer f.Close()
		r, source = f, name
	}
	rep, err := sniff.ReadPcap(r, cfg)
	if err != nil {
		return nil, fmt.Errorf("audit: %s: %w", source, err)
	}
	rep.Source = source
	return rep, nil
}

// auditLive captures on iface for d. A failure part-way still returns the
// report of what was captured, with the error.
func auditLive(ctx context.Context, iface string, d time.Duration, write string, cfg sniff.Config, stderr io.Writer) (*sniff.Report, error) {
	c, err := sniff.OpenLive(iface, cfg)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer c.Close()
	var out *os.File
	if write != "" {
		if out, err = os.Create(write); err != nil {
			return nil, fmt.Errorf("audit: --write: %w", err)
		}
		c.Save = out
	}
	fmt.Fprintf(stderr, "pasvgate audit: capturing on %s for %s (control ports %s)\n", iface, d, joinUint16(cfg.Ports))
	rep, err := c.Run(ctx, d)
	if out != nil {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("--write: %w", cerr)
		}
	}
	if err != nil {
		err = fmt.Errorf("audit: %w", err)
	}
	return rep, err
}

// parseInterleaved parses flags wherever they stand among the arguments
// ("audit x.pcap --json" as well as "audit --json x.pcap"), which the flag
// package alone stops at the first argument that is not a flag.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

// parsePorts reads "21,2121": distinct ports 1-65535, at most
// maxAuditPorts of them.
func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port (1-65535)", f)
		}
		if !slices.Contains(ports, uint16(n)) {
			ports = append(ports, uint16(n))
		}
	}
	if len(ports) > maxAuditPorts {
		return nil, fmt.Errorf("at most %d ports", maxAuditPorts)
	}
	return ports, nil
}

func joinUint16(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}
