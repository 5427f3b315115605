// Package probetest is a scripted FTP server for tests of the probe: each
// reply that matters is set by a Script, so a test can make the server
// healthy, misconfigured or hostile at will, without root and without a
// real server. It parses commands with proxy/ftp like the rest of
// pasvgate. It serves one fixed listing and nothing else; it is not for
// use outside tests.
package probetest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pasvgate/pasvgate/proxy/ftp"
)

// Listing is the directory listing the server sends for LIST.
const Listing = "-rw-r--r--   1 ftp      ftp             4 Jan 01  2026 hello.txt\r\n"

// dataTimeout bounds the server's own waits for a data connection, so a
// test whose probe never connects still ends.
const dataTimeout = 5 * time.Second

// Script says how the server answers. The zero value is a healthy server:
// anonymous login, PASV advertising the address the client connected to,
// EPSV, PORT and EPRT, no FEAT and no AUTH.
type Script struct {
	// Greeting is the greeting, whole lines without CRLF. Default
	// "220 probetest ready".
	Greeting []string
	// Feat lists features for FEAT (" " is put before each); nil answers
	// FEAT with 502.
	Feat []string
	// AuthReply answers AUTH. Default "502 AUTH not implemented.".
	AuthReply string
	// PassReply answers PASS. Default "230 Logged in.".
	PassReply string
	// Advertise is the address written into 227 replies. Default: the
	// local address of the control connection. The data listener is
	// always on that local address, whatever is advertised.
	Advertise string
	// AdvertiseTLS, if set, replaces Advertise once the control
	// connection is TLS: a NAT helper's work, which rewrites the 227s it
	// can read, and cannot read those inside TLS.
	AdvertiseTLS string
	// PASVReply and EPSVReply, if set, answer PASV and EPSV instead of
	// opening a data listener.
	PASVReply, EPSVReply string
	// PORTReply, if set, answers PORT and EPRT instead of accepting them.
	PORTReply string
	// NoConnectBack makes the server accept PORT and EPRT, and then answer
	// LIST with 425 without connecting.
	NoConnectBack bool
	// Silent makes the server read commands and never answer any after
	// the greeting: a control channel that hangs.
	Silent bool

	// TLS, if set, makes AUTH TLS (unless AuthReply says otherwise)
	// answer 234 and upgrade the control connection, and PROT P protect
	// the data connections, with this configuration. Its session tickets,
	// on unless SessionTicketsDisabled, let a data connection resume the
	// control connection's session.
	TLS *tls.Config
	// PROTReply, if set, answers PROT P instead of accepting it.
	PROTReply string
	// AuthStall makes the server answer AUTH with 234 and then neither
	// read nor write: a handshake that hangs.
	AuthStall bool
	// RequireReuse refuses a PROT P data connection whose TLS session
	// does not resume one, as vsftpd's require_ssl_reuse=YES does: the
	// handshake completes, then the data connection is closed and LIST
	// answered "522 SSL connection failed: session reuse required.".
	RequireReuse bool
}

// Server is a running scripted server.
type Server struct {
	ln     net.Listener
	script Script

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	done   chan struct{} // closed by Close
	// Commands counts the commands received, by verb name, for tests
	// that check what the probe sent.
	commands map[string]int
}

// Start serves script on addr ("127.0.0.2:0").
func Start(addr string, script Script) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, script: script, conns: map[net.Conn]struct{}{}, commands: map[string]int{}, done: make(chan struct{})}
	s.wg.Go(s.serve)
	return s, nil
}

// Addr is the control address, "127.0.0.2:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Count returns how many commands with this verb name ("AUTH", "PASV")
// the server has received.
func (s *Server) Count(verb string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commands[verb]
}

// Close stops the server, closes its connections and waits for its
// goroutines.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	if !s.closed {
		close(s.done)
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.session(c)
		})
	}
}

// session is one control connection, handled in order: every command is
// answered before the next is read, as a real server does.
func (s *Server) session(c net.Conn) {
	sc := s.script
	w := func(lines ...string) bool {
		var b []byte
		for _, l := range lines {
			b = append(b, l...)
			b = append(b, '\r', '\n')
		}
		_, err := c.Write(b)
		return err == nil
	}
	greeting := sc.Greeting
	if greeting == nil {
		greeting = []string{"220 probetest ready"}
	}
	if !w(greeting...) {
		return
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	var (
		pasv    net.Listener   // the pending passive listener
		active  netip.AddrPort // the pending PORT/EPRT address
		r       = ftp.NewReader(c, 0)
		private bool // PROT P
	)
	defer func() {
		if pasv != nil {
			pasv.Close()
		}
	}()
	for {
		_, text, err := r.ReadLine()
		if err != nil {
			return
		}
		verb, arg := ftp.ParseCommand(text)
		s.mu.Lock()
		s.commands[verb.String()]++
		s.mu.Unlock()
		if sc.Silent {
			continue
		}
		ok := true
		switch verb {
		case ftp.VerbUSER:
			ok = w("331 Password, please.")
		case ftp.VerbPASS:
			ok = w(or(sc.PassReply, "230 Logged in."))
		case ftp.VerbFEAT:
			if sc.Feat == nil {
				ok = w("502 FEAT not implemented.")
				break
			}
			lines := []string{"211-Features:"}
			for _, f := range sc.Feat {
				lines = append(lines, " "+f)
			}
			ok = w(append(lines, "211 End")...)
		case ftp.VerbAUTH:
			if sc.AuthStall {
				w("234 Proceed with negotiation.")
				<-s.done
				return
			}
			if sc.TLS == nil || sc.AuthReply != "" {
				ok = w(or(sc.AuthReply, "502 AUTH not implemented."))
				break
			}
			if !w("234 Proceed with negotiation.") {
				return
			}
			tc := tls.Server(c, sc.TLS)
			_ = tc.SetDeadline(time.Now().Add(dataTimeout))
			if tc.Handshake() != nil {
				return
			}
			_ = tc.SetDeadline(time.Time{})
			// The rest of the session is over TLS, c included: it is
			// what w writes to.
			c, r = tc, ftp.NewReader(tc, 0)
		case ftp.VerbPBSZ:
			ok = w("200 PBSZ=0")
		case ftp.VerbPROT:
			switch {
			case sc.PROTReply != "":
				ok = w(sc.PROTReply)
			case sc.TLS == nil:
				ok = w("503 PROT needs AUTH first.")
			default:
				private = len(arg) > 0 && arg[0]|0x20 == 'p'
				ok = w("200 PROT now " + map[bool]string{true: "Private", false: "Clear"}[private] + ".")
			}
		case ftp.VerbPASV, ftp.VerbEPSV:
			if pasv != nil {
				pasv.Close()
				pasv = nil
			}
			if verb == ftp.VerbPASV && sc.PASVReply != "" {
				ok = w(sc.PASVReply)
				break
			}
			if verb == ftp.VerbEPSV && sc.EPSVReply != "" {
				ok = w(sc.EPSVReply)
				break
			}
			var err error
			if pasv, err = net.Listen("tcp", netip.AddrPortFrom(local.Addr(), 0).String()); err != nil {
				ok = w("425 Cannot listen.")
				break
			}
			port := pasv.Addr().(*net.TCPAddr).AddrPort().Port()
			if verb == ftp.VerbEPSV {
				_, err = c.Write(ftp.AppendEPSV(nil, port))
			} else {
				adv := local.Addr()
				if sc.Advertise != "" {
					adv = netip.MustParseAddr(sc.Advertise)
				}
				if _, isTLS := c.(*tls.Conn); isTLS && sc.AdvertiseTLS != "" {
					adv = netip.MustParseAddr(sc.AdvertiseTLS)
				}
				_, err = c.Write(ftp.AppendPASV(nil, netip.AddrPortFrom(adv, port)))
			}
			ok = err == nil
		case ftp.VerbPORT, ftp.VerbEPRT:
			if sc.PORTReply != "" {
				ok = w(sc.PORTReply)
				break
			}
			var err error
			if verb == ftp.VerbPORT {
				active, err = ftp.ParsePORT(arg)
			} else {
				active, err = ftp.ParseEPRT(arg)
			}
			if err != nil {
				ok = w("501 Bad address.")
				break
			}
			ok = w("200 Command okay.")
		case ftp.VerbLIST:
			var tc *tls.Config
			if private {
				tc = sc.TLS
			}
			ok = s.list(w, &pasv, &active, tc)
		case ftp.VerbQUIT:
			w("221 Goodbye.")
			return
		default:
			ok = w("502 Command not implemented.")
		}
		if !ok {
			return
		}
	}
}

// list opens the data connection the last PASV, EPSV, PORT or EPRT set up
// and sends the listing over it, in TLS if tc is set (PROT P). The TLS
// handshake comes after the 150, as vsftpd has it.
func (s *Server) list(w func(...string) bool, pasv *net.Listener, active *netip.AddrPort, tc *tls.Config) bool {
	var data net.Conn
	var err error
	switch {
	case *pasv != nil:
		ln := (*pasv).(*net.TCPListener)
		_ = ln.SetDeadline(time.Now().Add(dataTimeout))
		data, err = ln.Accept()
		ln.Close()
		*pasv = nil
	case active.IsValid() && s.script.NoConnectBack:
		*active = netip.AddrPort{}
		return w("425 Can't open data connection.")
	case active.IsValid():
		data, err = net.DialTimeout("tcp", active.String(), dataTimeout)
		*active = netip.AddrPort{}
	default:
		return w("425 Use PORT or PASV first.")
	}
	if err != nil {
		return w("425 Can't open data connection.")
	}
	if !w("150 Here comes the directory listing.") {
		data.Close()
		return false
	}
	if tc != nil {
		td := tls.Server(data, tc)
		_ = td.SetDeadline(time.Now().Add(dataTimeout))
		if err := td.Handshake(); err != nil {
			data.Close()
			return w("522 SSL connection failed.")
		}
		if s.script.RequireReuse && !td.ConnectionState().DidResume {
			data.Close()
			return w("522 SSL connection failed: session reuse required.")
		}
		data = td
	}
	_, err = io.WriteString(data, Listing)
	if cerr := data.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return w(fmt.Sprintf("426 Transfer aborted: %v", err))
	}
	return w("226 Directory send OK.")
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}
