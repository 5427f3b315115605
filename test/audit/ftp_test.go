package audit

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
	"github.com/pasvgate/pasvgate/test/lab"
)

// The scripted server: a tiny FTP server for the reply shapes real
// servers do not send on demand. It listens on the lab's server address,
// port 21, and serves one passive data port for its whole life.

// Reply shapes of the scripted server's 227.
const (
	shapePlain     = "plain"     // one line, one write
	shapeSplit     = "split"     // "227 Entering Pass" and the rest in two segments
	shapeMultiLine = "multiline" // "227-Entering Passive Mode" then "227 (h,h,h,h,p,p)"
)

type scriptedServer struct {
	shape string
	tls   *tls.Config // answers AUTH TLS with 234 and a handshake when set
	ln    *net.TCPListener
	data  *net.TCPListener
	wg    sync.WaitGroup
}

// startScripted starts a scripted server in the lab's server namespace;
// it stops at the end of the test.
func startScripted(t *testing.T, l *lab.Lab, shape string, tlsConf *tls.Config) *scriptedServer {
	t.Helper()
	ln, err := l.Listen(l.Server, net.JoinHostPort(lab.ServerAddr, "21"))
	if err != nil {
		t.Fatalf("scripted server: %v", err)
	}
	data, err := l.Listen(l.Server, net.JoinHostPort(lab.ServerAddr, "0"))
	if err != nil {
		ln.Close()
		t.Fatalf("scripted server: %v", err)
	}
	s := &scriptedServer{shape: shape, tls: tlsConf, ln: ln, data: data}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		data.Close()
		s.wg.Wait()
	})
	return s
}

func (s *scriptedServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.session(c)
		}()
	}
}

// session answers one client. Go sets TCP_NODELAY, so every write is a
// segment of its own.
func (s *scriptedServer) session(c *net.TCPConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var rw io.ReadWriter = c
	br := bufio.NewReader(rw)
	write := func(text string) { _, _ = io.WriteString(rw, text) }
	write("220 pasvgate audit fixture (scripted)\r\n")
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "USER":
			write("331 Password, please.\r\n")
		case "PASS":
			write("230 Logged in.\r\n")
		case "TYPE", "PBSZ", "PROT":
			write("200 OK.\r\n")
		case "AUTH":
			if s.tls == nil {
				write("502 No TLS here.\r\n")
				continue
			}
			write("234 Proceed with negotiation.\r\n")
			tc := tls.Server(c, s.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			rw, br = tc, bufio.NewReader(tc)
		case "PASV":
			p := s.data.Addr().(*net.TCPAddr).Port
			addr := fmt.Sprintf("%s,%d,%d", strings.ReplaceAll(lab.ServerAddr, ".", ","), p>>8, p&0xff)
			switch s.shape {
			case shapeSplit:
				write("227 Entering Pass")
				// Long enough for the first part to leave alone, as a
				// server flushing mid-line does.
				time.Sleep(150 * time.Millisecond)
				write("ive Mode (" + addr + ").\r\n")
			case shapeMultiLine:
				write("227-Entering Passive Mode\r\n227 (" + addr + ")\r\n")
			default:
				write("227 Entering Passive Mode (" + addr + ").\r\n")
			}
		case "LIST":
			write("150 Here comes the listing.\r\n")
			_ = s.data.SetDeadline(time.Now().Add(5 * time.Second))
			d, err := s.data.Accept()
			if err != nil {
				write("425 Can't open data connection.\r\n")
				continue
			}
			_, _ = io.WriteString(d, "-rw-r--r-- 1 ftp ftp 5 Nov 22 01:02 hello.txt\r\n")
			d.Close()
			write("226 Listing sent.\r\n")
		case "QUIT":
			write("221 Goodbye.\r\n")
			return
		default:
			write("502 Not implemented.\r\n")
		}
	}
}

// selfSigned returns a server configuration with a fresh self-signed
// certificate for "ftp.test", and a client configuration that trusts it.
func selfSigned(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ftp.test"},
		DNSNames:     []string{"ftp.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{RootCAs: pool, ServerName: "ftp.test", MinVersion: tls.VersionTLS12}
	return server, client
}

// The client: a Go FTP client in the lab's client namespace that trusts
// the 227 address (or, when told, ignores it as curl does by default).

type ftpClient struct {
	l  *lab.Lab
	nc net.Conn
	tp *textproto.Conn
}

// dataDialTimeout bounds a data connection attempt: long enough for one
// SYN retransmission (after 1 s), short enough to keep fixtures small.
const dataDialTimeout = 2500 * time.Millisecond

// dialFTP connects from the client to the server's port 21 and reads the
// greeting.
func dialFTP(ctx context.Context, l *lab.Lab) (*ftpClient, error) {
	nc, err := l.Dial(ctx, l.Client, lab.ClientAddr, net.JoinHostPort(lab.ServerAddr, "21"))
	if err != nil {
		return nil, fmt.Errorf("dial control: %w", err)
	}
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &ftpClient{l: l, nc: nc, tp: textproto.NewConn(nc)}
	if _, err := c.cmd(220, ""); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *ftpClient) cmd(expect int, format string, args ...any) (string, error) {
	return lab.RawCmd(c.tp, expect, format, args...)
}

func (c *ftpClient) login(user, password string) error {
	if _, err := c.cmd(331, "USER %s", user); err != nil {
		return err
	}
	_, err := c.cmd(230, "PASS %s", password)
	return err
}

// startTLS sends AUTH TLS and does the client's handshake.
func (c *ftpClient) startTLS(conf *tls.Config) error {
	if _, err := c.cmd(234, "AUTH TLS"); err != nil {
		return err
	}
	tc := tls.Client(c.nc, conf)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.tp = textproto.NewConn(tc)
	return nil
}

// pasv sends PASV and connects to the announced address, or with
// useControl to the control connection's address and the announced port.
func (c *ftpClient) pasv(ctx context.Context, useControl bool) (net.Conn, error) {
	msg, err := c.cmd(227, "PASV")
	if err != nil {
		return nil, err
	}
	ap, err := ftp.ParsePASV([]byte(msg))
	if err != nil {
		return nil, err
	}
	if useControl {
		ap = netip.AddrPortFrom(netip.MustParseAddr(lab.ServerAddr), ap.Port())
	}
	return c.dialData(ctx, ap)
}

// epsv sends EPSV and connects to the control address with its port.
func (c *ftpClient) epsv(ctx context.Context) (net.Conn, error) {
	msg, err := c.cmd(229, "EPSV")
	if err != nil {
		return nil, err
	}
	port, err := ftp.ParseEPSV([]byte(msg))
	if err != nil {
		return nil, err
	}
	return c.dialData(ctx, netip.AddrPortFrom(netip.MustParseAddr(lab.ServerAddr), port))
}

func (c *ftpClient) dialData(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dataDialTimeout)
	defer cancel()
	d, err := c.l.Dial(ctx, c.l.Client, lab.ClientAddr, ap.String())
	if err != nil {
		return nil, fmt.Errorf("data connection to %v: %w", ap, err)
	}
	_ = d.SetDeadline(time.Now().Add(10 * time.Second))
	return d, nil
}

// list sends LIST over the data connection d and reads the listing.
func (c *ftpClient) list(d net.Conn) error {
	defer d.Close()
	if _, err := c.cmd(1, "LIST"); err != nil {
		return err
	}
	if _, err := io.ReadAll(d); err != nil {
		return fmt.Errorf("reading the listing: %w", err)
	}
	_, err := c.cmd(2, "")
	return err
}

// activeList sends PORT for a listener of the client's and LIST, and
// accepts the server's data connection.
func (c *ftpClient) activeList() error {
	ln, err := c.l.Listen(c.l.Client, net.JoinHostPort(lab.ClientAddr, "0"))
	if err != nil {
		return err
	}
	defer ln.Close()
	_ = ln.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.cmd(200, "%s", lab.ActiveCommandFor(ln.Addr().(*net.TCPAddr).AddrPort(), false)); err != nil {
		return err
	}
	if _, err := c.cmd(1, "LIST"); err != nil {
		return err
	}
	d, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accepting the data connection: %w", err)
	}
	defer d.Close()
	if _, err := io.ReadAll(d); err != nil {
		return err
	}
	_, err = c.cmd(2, "")
	return err
}

// quit says goodbye and closes.
func (c *ftpClient) quit() error {
	defer c.nc.Close()
	_, err := c.cmd(221, "QUIT")
	return err
}
