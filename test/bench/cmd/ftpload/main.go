// Command ftpload is the benchmark's FTP client. The orchestrator in
// test/bench runs it inside the client namespace (ip netns exec) against
// each gateway in turn; it runs the workload its flags name (see
// test/bench/load) and prints one JSON object (load.Result) on stdout.
// Errors go to stderr with exit status 1; a run that exceeds -deadline
// exits with status 3, so a hung transfer can never hang the benchmark.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/pasvgate/pasvgate/test/bench/load"
)

func main() {
	var (
		cfg      load.Config
		addr     string
		pasvHost string
		deadline time.Duration
		tlsCA    string
		tlsName  string
		prot     string
	)
	flag.StringVar(&addr, "addr", "", "control `address:port` to dial")
	flag.StringVar(&pasvHost, "pasv-host", "", "connect PASV data connections to this `IP` instead of the 227's host (the floor's relay does not rewrite 227)")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "bound on each step (connect, reply, transfer)")
	flag.DurationVar(&deadline, "deadline", 5*time.Minute, "bound on the whole run")
	flag.IntVar(&cfg.Noops, "noops", 0, "NOOP round trips in one session")
	flag.IntVar(&cfg.Gets, "gets", 0, "sequential small downloads in one session, with PASV and again with EPSV")
	flag.IntVar(&cfg.Sessions, "sessions", 0, "whole sessions (connect, login, one small download, QUIT)")
	flag.IntVar(&cfg.Bulk, "bulk", 0, "big downloads and uploads")
	flag.IntVar(&cfg.Profile, "profile", 0, "single small downloads to time phase by phase")
	flag.DurationVar(&cfg.ProfileGap, "profile-gap", 200*time.Millisecond, "pause after each profiled download")
	flag.StringVar(&cfg.SmallFile, "small", "small.bin", "small file to download")
	flag.Int64Var(&cfg.SmallSize, "small-size", 1024, "its size in bytes")
	flag.StringVar(&cfg.BigFile, "big", "big.bin", "big file to download")
	flag.Int64Var(&cfg.BigSize, "big-size", 256<<20, "its size in bytes")
	flag.StringVar(&cfg.UploadFile, "upload", "up/upload.bin", "where to upload")
	flag.Int64Var(&cfg.UploadSize, "upload-size", 256<<20, "upload size in bytes")
	flag.BoolVar(&cfg.SessionRetr, "session-retr", true, "each whole session downloads the small file once")
	flag.StringVar(&cfg.SmallSHA256, "small-sha256", "", "check every small download against this hex SHA-256")
	flag.StringVar(&cfg.BigSHA256, "big-sha256", "", "check every big download against this hex SHA-256")
	flag.BoolVar(&cfg.KeepUploads, "keep-uploads", false, "leave each upload on the server as UPLOAD.N, listed in the result, instead of SIZE and DELE")
	flag.StringVar(&tlsCA, "tls-ca", "", "speak FTPS (AUTH TLS), trusting the CA certificates in this PEM `file`")
	flag.StringVar(&tlsName, "tls-name", "", "the `name` to verify the certificate against, the SNI, and the key of the TLS session cache")
	flag.StringVar(&cfg.TLS.Leaf, "tls-leaf", "", "a DNS `name` every certificate shown must carry (default: -tls-name)")
	flag.StringVar(&prot, "prot", "P", "data protection with FTPS: P (every data connection TLS, resuming the control session) or C")
	flag.Parse()

	ap, err := netip.ParseAddrPort(addr)
	if err != nil || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "ftpload: need -addr IP:PORT and no arguments")
		os.Exit(2)
	}
	cfg.Addr = ap
	if tlsCA != "" {
		pem, err := os.ReadFile(tlsCA)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) || tlsName == "" || (prot != "P" && prot != "C") {
			fmt.Fprintln(os.Stderr, "ftpload: -tls-ca needs a PEM file of CA certificates, -tls-name, and -prot P or C:", err)
			os.Exit(2)
		}
		cfg.TLS.Config = &tls.Config{RootCAs: pool, ServerName: tlsName}
		cfg.TLS.Private = prot == "P"
	}
	if pasvHost != "" {
		if cfg.PASVHost, err = netip.ParseAddr(pasvHost); err != nil {
			fmt.Fprintln(os.Stderr, "ftpload: -pasv-host:", err)
			os.Exit(2)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	// Steps are bounded by socket deadlines; this is the backstop for
	// anything that is not.
	time.AfterFunc(deadline+5*time.Second, func() {
		fmt.Fprintf(os.Stderr, "ftpload: still running after %v\n", deadline)
		os.Exit(3)
	})
	res, err := load.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(os.Stderr, "ftpload: deadline %v exceeded: %v\n", deadline, err)
			os.Exit(3)
		}
		fmt.Fprintln(os.Stderr, "ftpload:", err)
		os.Exit(1)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		res.ClientCPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "ftpload:", err)
		os.Exit(1)
	}
}
