// Command jlclient is the github.com/jlaffaye/ftp client of the interop
// matrix: one login, one operation (get, put or list), then QUIT. The lab's
// JLFTP driver runs it inside the client namespace.
//
// jlaffaye/ftp v0.2.4 connects to the control connection's host unless
// DialWithTrustPasvIP(true) is given, and even then falls back to that host
// when the 227 address looks bogus (isBogusDataIP: multicast, or private
// while the control address is not, or loopback likewise). The lab's
// documentation addresses are neither private nor loopback in Go's sense,
// so with trust on it dials exactly the 227 address. Every dial is printed
// on standard error ("dial control ADDR" for the first, "dial data ADDR"
// for the others), so a failed run shows where it went; the interop matrix
// checks where every client connected from a capture.
//
// With --tls-ca it speaks explicit FTPS (DialWithExplicitTLS: AUTH TLS,
// then PBSZ 0 and PROT P after the login), verifying the peer against
// that CA file and the address it dials, with a client session cache, so
// that each data connection resumes the control connection's TLS session
// as servers that require reuse want. It prints the certificate it was
// shown ("pglab peer certificate sha256=... subject=...", as the lab's
// ftplib driver does) and, for each data connection's handshake, whether
// it resumed ("pglab data tls resumed=true"). A data connection made
// through DialWithDialFunc is not wrapped in TLS by jlaffaye/ftp, so the
// dial function does it.
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/jlaffaye/ftp"
)

func main() {
	var (
		addr     = flag.String("addr", "", "control `host:port`")
		user     = flag.String("user", "anonymous", "login name")
		password = flag.String("password", "anonymous@", "password")
		epsv     = flag.Bool("epsv", false, "use EPSV (229); default PASV (227)")
		op       = flag.String("op", "list", "`get`, put or list")
		remote   = flag.String("remote", "", "remote path (get, put)")
		local    = flag.String("local", "", "local file (get: written, put: read)")
		timeout  = flag.Duration("timeout", time.Minute, "bound on the whole run")
		caFile   = flag.String("tls-ca", "", "explicit FTPS with PROT P, trusting the CA certificates in this PEM `file`")
		tls12    = flag.Bool("tls12", false, "with --tls-ca, TLS 1.2 at most")
	)
	flag.Parse()
	// A hard bound: a hung data connection must end the run, not the test.
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "jlclient: timeout after %v\n", *timeout)
		os.Exit(3)
	})
	var cfg *tls.Config
	if *caFile != "" {
		var err error
		if cfg, err = tlsConfig(*addr, *caFile, *tls12); err != nil {
			fmt.Fprintln(os.Stderr, "jlclient:", err)
			os.Exit(1)
		}
	}
	if err := run(*addr, *user, *password, *epsv, *op, *remote, *local, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "jlclient:", err)
		os.Exit(1)
	}
}

// tlsConfig is the client's TLS configuration for the control
// connection to addr and its data connections: the CA's certificates, the
// address as the name to verify, a session cache to resume from, and a
// report of each handshake on standard error.
func tlsConfig(addr, caFile string, tls12 bool) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", caFile)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var handshakes atomic.Int32
	cfg := &tls.Config{
		RootCAs:            roots,
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(8),
		// Called after the chain verified, on every handshake: the first
		// is the control connection's.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if handshakes.Add(1) == 1 {
				if len(cs.PeerCertificates) > 0 {
					leaf := cs.PeerCertificates[0]
					sum := sha256.Sum256(leaf.Raw)
					fmt.Fprintf(os.Stderr, "pglab peer certificate sha256=%s subject=%s\n", hex.EncodeToString(sum[:]), leaf.Subject)
				}
				return nil
			}
			fmt.Fprintf(os.Stderr, "pglab data tls resumed=%t\n", cs.DidResume)
			return nil
		},
	}
	if tls12 {
		cfg.MaxVersion = tls.VersionTLS12
	}
	return cfg, nil
}

func run(addr, user, password string, epsv bool, op, remote, local string, cfg *tls.Config) error {
	var dials atomic.Int32
	dialer := net.Dialer{Timeout: 5 * time.Second}
	opts := []ftp.DialOption{
		ftp.DialWithDisabledEPSV(!epsv),
		ftp.DialWithTrustPasvIP(true),
		// LIST, not MLSD, so every client in the matrix lists the same way.
		ftp.DialWithDisabledMLSD(true),
		ftp.DialWithDialFunc(func(network, address string) (net.Conn, error) {
			kind := "data"
			if dials.Add(1) == 1 {
				kind = "control"
			}
			fmt.Fprintf(os.Stderr, "dial %s %s\n", kind, address)
			conn, err := dialer.Dial(network, address)
			if err != nil || kind == "control" || cfg == nil {
				return conn, err
			}
			// The handshake comes with the first read or write, as
			// jlaffaye/ftp's own data connections do it: some servers
			// make theirs only after the 150.
			return tls.Client(conn, cfg), nil
		}),
	}
	if cfg != nil {
		opts = append(opts, ftp.DialWithExplicitTLS(cfg))
	}
	c, err := ftp.Dial(addr, opts...)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Quit()
	if err := c.Login(user, password); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	switch op {
	case "get":
		f, err := os.Create(local)
		if err != nil {
			return err
		}
		r, err := c.Retr(remote)
		if err != nil {
			f.Close()
			return fmt.Errorf("retr: %w", err)
		}
		_, cerr := io.Copy(f, r)
		// Close reads the final reply (226): an error there is a failed
		// transfer even when the bytes arrived.
		return errors.Join(cerr, r.Close(), f.Close())
	case "put":
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := c.Stor(remote, f); err != nil {
			return fmt.Errorf("stor: %w", err)
		}
		return nil
	case "list":
		entries, err := c.List("")
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		for _, e := range entries {
			fmt.Println(e.Name)
		}
		return nil
	default:
		return fmt.Errorf("unknown op %q", op)
	}
}
