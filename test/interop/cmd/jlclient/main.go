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
package main

import (
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
	)
	flag.Parse()
	// A hard bound: a hung data connection must end the run, not the test.
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "jlclient: timeout after %v\n", *timeout)
		os.Exit(3)
	})
	if err := run(*addr, *user, *password, *epsv, *op, *remote, *local); err != nil {
		fmt.Fprintln(os.Stderr, "jlclient:", err)
		os.Exit(1)
	}
}

func run(addr, user, password string, epsv bool, op, remote, local string) error {
	var dials atomic.Int32
	dialer := net.Dialer{Timeout: 5 * time.Second}
	c, err := ftp.Dial(addr,
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
			return dialer.Dial(network, address)
		}),
	)
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
