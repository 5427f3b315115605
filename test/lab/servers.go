package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Server kinds understood by StartServer.
const (
	Vsftpd   = "vsftpd"
	PureFTPd = "pure-ftpd"
	ProFTPD  = "proftpd"
	BuiltIn  = "ftpd" // test/ftpd (fclairamb/ftpserverlib)
)

// Servers lists every server kind, in the order reports use.
var Servers = []string{Vsftpd, PureFTPd, ProFTPD, BuiltIn}

// Test account and served files, the same for every server so that client
// drivers need no per-server knowledge beyond Server.User/Password.
const (
	TestUser     = "pgtest"
	TestPassword = "pgtest-pass"
	// testPasswordCrypt is crypt(3) SHA-512 of TestPassword (openssl passwd
	// -6 -salt pglabsalt0123456), for servers that read a passwd file. A
	// fixed hash keeps openssl out of the test run.
	testPasswordCrypt = "$6$pglabsalt0123456$hkJhYG3GBGDQY3Ji2pp8BOVPPM6XeOBlIBbYv08iVhws8sn.mdjafCjORbB3Ybzt/x8m48zCe3/ICgaxZk.Gd1"

	// DataFile is the name of the random file every server offers.
	DataFile = "data.bin"
	// DataSize is its size: big enough to span many segments and windows.
	DataSize = 1 << 20
	// UploadDir is the directory, below the root, where uploads may go.
	UploadDir = "upload"
)

// Unprivileged account that servers which drop privileges map the test user
// to. nobody exists on every Debian system, so no account is created.
const (
	nobodyUID  = 65534
	nogroupGID = 65534
)

// ErrMissing wraps the error for a server or client whose program is not
// installed, so that a test can skip its cells with the reason instead of
// failing them.
var ErrMissing = errors.New("not installed")

// CacheDir is where test/install-deps.sh unpacked the servers that conflict
// with vsftpd as packages. PASVGATE_TEST_CACHE overrides it, as it does for
// the script.
func CacheDir() string {
	if d := os.Getenv("PASVGATE_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/pasvgate-test"
}

// ServerOptions tune a server launch.
type ServerOptions struct {
	// PassivePorts is the server's own passive range; zero means
	// 30000-30099. It is the range behind the proxy, unrelated to
	// pasvgate's public data ports.
	PassivePorts [2]int
	// PublicAddr, if set, is the address the server announces in 227
	// replies instead of its own (vsftpd pasv_address, pure-ftpd -P,
	// ProFTPD MasqueradeAddress, testftpd --public-host): the classic
	// set-up behind a static NAT, which the interop suite uses as a
	// reference that needs no proxy.
	PublicAddr string
	// DataFromPort20 makes vsftpd open active-mode data connections from
	// port 20 (connect_from_port_20=YES, as Debian's packaged
	// vsftpd.conf has it) instead of an ephemeral port (vsftpd's
	// compiled-in default, which the lab keeps otherwise). Other kinds
	// ignore it.
	DataFromPort20 bool
	// AsyncAbor makes vsftpd act on a Telnet Synch during a transfer
	// (async_abor_enable=YES): on the urgent signal (SIGURG) it reads the
	// control connection, and an ABOR there stops the transfer (426, then
	// 226). Without it vsftpd reads no command until the transfer ends.
	// Other kinds ignore it.
	AsyncAbor bool
	// Binary is the program to run, for kinds that are built rather than
	// installed (BuiltIn: a testftpd binary, see BuildGo). Empty means the
	// installed location for the other kinds.
	Binary string
	// TLS, if set, turns on explicit FTPS (AUTH TLS) with this
	// certificate, required on the control channel and optional for
	// data (PROT C allowed), in each kind's own terms (see tls.go). The
	// greeting stays clear, so StartServer waits for it as usual.
	TLS *Cert
	// TLSRequireData, with TLS, requires protected data connections
	// (PROT P) as well, and refuses clear ones: vsftpd
	// force_anon_data_ssl, ProFTPD TLSRequired on, pure-ftpd -Y 3.
	// test/ftpd has no such setting and takes either. vsftpd and ProFTPD
	// also require, by their defaults, that a protected data connection
	// resume the control connection's TLS session.
	TLSRequireData bool
	// Addr, if set, is the IPv4 address of the server namespace the
	// server binds instead of the lab's server address (ServerAddr,
	// WANServerAddr), such as "192.0.2.12": several servers then run side
	// by side on port 21, as a pool behind one gateway. Add the address
	// first (Lab.AddServerAddr). Such a server listens on that address
	// only, IPv4 only, even in a lab with IPv6: the other kinds' IPv6
	// socket would take the wildcard address and collide with the
	// lab's usual server.
	Addr string
}

// Server is an FTP server running in the lab's server namespace, on
// ServerAddr:21 (WANServerAddr:21 in a router lab, ServerOptions.Addr:21
// if given), advertising its own address in 227 replies unless
// ServerOptions.PublicAddr says otherwise.
type Server struct {
	// Kind is one of the kind constants.
	Kind string
	// Addr is the control address, "192.0.2.10:21".
	Addr string
	// Addr6 is the IPv6 control address, "[2001:db8:2::10]:21", when the
	// lab has IPv6 and the server listens there too; otherwise "".
	Addr6 string
	// User and Password log in with permission to download DataFile, list,
	// and upload into UploadDir.
	User, Password string
	// Root is the directory served; Root/DataFile is the download and
	// Root/UploadDir receives uploads.
	Root string
	// DataSHA256 is the hex SHA-256 of Root/DataFile.
	DataSHA256 string
	// Proc is the server process.
	Proc *Proc
}

// UploadedSHA256 returns the hex SHA-256 of the file name in the server's
// upload directory, as stored on the server's filesystem.
func (s *Server) UploadedSHA256(name string) (string, error) {
	return fileSHA256(filepath.Join(s.Root, UploadDir, name))
}

// StartServer launches a server of the given kind inside the server
// namespace and waits (up to 15 s) until it sends its 220 greeting on
// ServerAddr:21 (WANServerAddr:21 in a router lab, ServerOptions.Addr:21
// if given). Each kind runs in the
// foreground with a configuration written for this lab and keeps its
// security defaults, in particular the check that a passive data
// connection comes from the control connection's address (vsftpd
// pasv_promiscuous=NO, ProFTPD AllowForeignAddress off, pure-ftpd without
// -w) and its active-mode counterpart, that PORT and EPRT name the control
// connection's address (vsftpd port_promiscuous=NO, and the same options).
// An error wrapping ErrMissing means the program is not installed.
//
// In a lab with IPv6, vsftpd, pure-ftpd and ProFTPD listen on IPv6 too,
// and StartServer waits for both greetings (Server.Addr6). The built-in
// server listens on one address only: it stays IPv4-only there.
func (l *Lab) StartServer(ctx context.Context, kind string, opt ServerOptions) (*Server, error) {
	if opt.PassivePorts == [2]int{} {
		opt.PassivePorts = [2]int{30000, 30099}
	}
	host, host6 := l.serverAddr, l.serverAddr6
	if opt.Addr != "" {
		a, err := netip.ParseAddr(opt.Addr)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("lab: %s: ServerOptions.Addr %q: not an IPv4 address", kind, opt.Addr)
		}
		host, host6 = opt.Addr, ""
	}
	// A directory per launch: a kind started again (with other options)
	// must not meet the previous instance's pid file or user database.
	dir := filepath.Join(l.Dir, fmt.Sprintf("%s-%d", kind, l.seq.Add(1)))
	s := &Server{
		Kind:     kind,
		Addr:     net.JoinHostPort(host, "21"),
		User:     TestUser,
		Password: TestPassword,
		Root:     filepath.Join(dir, "root"),
	}
	if host6 != "" && kind != BuiltIn {
		s.Addr6 = net.JoinHostPort(host6, "21")
	}
	uid, gid := nobodyUID, nogroupGID
	if kind == Vsftpd {
		// vsftpd changes to the anonymous account's home before anon_root,
		// and nobody's home does not exist; Debian's vsftpd package creates
		// the ftp account (home /srv/ftp) for exactly this use.
		u, err := user.Lookup("ftp")
		if err != nil {
			return nil, fmt.Errorf("lab: %s: account ftp: %w (run test/install-deps.sh)", kind, ErrMissing)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	if err := prepareRoot(s, uid, gid); err != nil {
		return nil, fmt.Errorf("lab: %s: %w", kind, err)
	}
	var (
		bin  string
		args []string
		err  error
	)
	switch kind {
	case Vsftpd:
		bin, args, err = vsftpdSetup(s, dir, host, opt)
	case PureFTPd:
		bin, args, err = pureFTPdSetup(ctx, s, dir, host, opt)
	case ProFTPD:
		bin, args, err = proFTPDSetup(s, dir, host, host6, opt)
	case BuiltIn:
		bin = opt.Binary
		if bin == "" {
			return nil, fmt.Errorf("lab: %s: no binary given (build test/ftpd/cmd/testftpd with BuildGo): %w", kind, ErrMissing)
		}
		public := host
		if opt.PublicAddr != "" {
			public = opt.PublicAddr
		}
		args = []string{
			"--listen", s.Addr,
			"--public-host", public,
			"--passive-ports", fmt.Sprintf("%d-%d", opt.PassivePorts[0], opt.PassivePorts[1]),
			"--root", s.Root,
			"--user", s.User,
			"--password", s.Password,
		}
		args = append(args, testftpdTLS(opt.TLS)...)
	default:
		return nil, fmt.Errorf("lab: unknown server kind %q", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w", kind, err)
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("lab: %s: %s: %w (run test/install-deps.sh)", kind, bin, ErrMissing)
	}
	p, err := l.Start(l.Server, bin, args...)
	if err != nil {
		return nil, err
	}
	s.Proc = p
	for _, addr := range []string{s.Addr, s.Addr6} {
		if addr == "" {
			continue
		}
		if err := l.WaitFTP(ctx, p, l.Server, addr); err != nil {
			p.Stop()
			return nil, fmt.Errorf("lab: %s did not come up: %w\n%s", kind, err, tail(p.Output(), 3000))
		}
	}
	return s, nil
}

// prepareRoot lays out the served tree: a root-owned, non-writable root
// (vsftpd refuses a writable chroot), the random download, and an upload
// directory that the unprivileged session user (uid, gid) may write.
func prepareRoot(s *Server, uid, gid int) error {
	if err := os.MkdirAll(filepath.Join(s.Root, UploadDir), 0o755); err != nil {
		return err
	}
	for _, d := range []string{filepath.Dir(s.Root), s.Root} {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.Chown(filepath.Join(s.Root, UploadDir), uid, gid); err != nil {
		return err
	}
	sum, err := WriteRandomFile(filepath.Join(s.Root, DataFile), DataSize)
	if err != nil {
		return err
	}
	s.DataSHA256 = sum
	return nil
}

// vsftpdSetup writes a vsftpd.conf and returns the command line. The test
// login is anonymous (mapped to the ftp account): vsftpd's local users need
// a PAM service and a login account, anonymous needs neither. Everything
// security-related is left at vsftpd's defaults.
//
// vsftpd listens on one socket: an IPv4 one on addr, or with IPv6 (s.Addr6
// set) a dual-stack one on the wildcard address, which takes IPv4 clients
// as IPv4-mapped addresses and handles them as IPv4 (checked: PASV, PORT
// and EPRT |1| work, with the same-address checks). listen_address6 would
// make it IPv6-only.
func vsftpdSetup(s *Server, dir, addr string, opt ServerOptions) (string, []string, error) {
	s.User, s.Password = "anonymous", "pglab@example.com"
	empty := filepath.Join(dir, "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return "", nil, err
	}
	conf := strings.Join([]string{
		// Standalone in the foreground, so the lab owns the process.
		"background=NO",
		"listen_port=21",
		"anonymous_enable=YES",
		"local_enable=NO",
		"write_enable=YES",
		"anon_upload_enable=YES",
		"anon_root=" + s.Root,
		"ftp_username=ftp",
		"nopriv_user=nobody",
		// The packaged /var/run/vsftpd/empty may be gone (tmpfs); a
		// private one also keeps parallel labs apart.
		"secure_chroot_dir=" + empty,
		fmt.Sprintf("pasv_min_port=%d", opt.PassivePorts[0]),
		fmt.Sprintf("pasv_max_port=%d", opt.PassivePorts[1]),
		"xferlog_enable=NO",
		"log_ftp_protocol=NO",
		"use_localtime=NO",
		// pasv_promiscuous and port_promiscuous stay at their default NO,
		// and connect_from_port_20 at its compiled-in NO (Debian's
		// packaged vsftpd.conf says YES): active data connections come
		// from an ephemeral port of the control connection's address.
	}, "\n") + "\n"
	if s.Addr6 != "" {
		conf += "listen=NO\nlisten_ipv6=YES\n"
	} else {
		conf += "listen=YES\nlisten_ipv6=NO\nlisten_address=" + addr + "\n"
	}
	if opt.PublicAddr != "" {
		conf += "pasv_address=" + opt.PublicAddr + "\n"
	}
	if opt.DataFromPort20 {
		conf += "connect_from_port_20=YES\n"
	}
	if opt.AsyncAbor {
		conf += "async_abor_enable=YES\n"
	}
	conf += vsftpdTLS(opt.TLS, opt.TLSRequireData)
	path := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return "", nil, err
	}
	return "/usr/sbin/vsftpd", []string{path}, nil
}

// pureFTPdSetup makes a PureDB with the test user (a virtual user mapped to
// nobody, chrooted to the root) and returns the command line. -P is not
// given, so pure-ftpd advertises the address the client reached it on.
// With IPv6 (s.Addr6 set) it listens on every address of both families:
// its -S takes one address.
func pureFTPdSetup(ctx context.Context, s *Server, dir, addr string, opt ServerOptions) (string, []string, error) {
	base := filepath.Join(CacheDir(), "pure-ftpd")
	bin := filepath.Join(base, "usr/sbin/pure-ftpd")
	pw := filepath.Join(base, "usr/bin/pure-pw")
	if _, err := os.Stat(pw); err != nil {
		return "", nil, fmt.Errorf("%s: %w (run test/install-deps.sh)", pw, ErrMissing)
	}
	// A passwd line written directly with a SHA-512 crypt hash: pure-pw
	// useradd would hash with argon2id at a cost that slows every login.
	// "/./" in the home makes the user chrooted there.
	passwd := filepath.Join(dir, "pureftpd.passwd")
	line := fmt.Sprintf("%s:%s:%d:%d::%s/./::::::::::::\n", s.User, testPasswordCrypt, nobodyUID, nogroupGID, s.Root)
	if err := os.WriteFile(passwd, []byte(line), 0o600); err != nil {
		return "", nil, err
	}
	pdb := filepath.Join(dir, "pureftpd.pdb")
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, pw, "mkdb", pdb, "-f", passwd).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("pure-pw mkdb: %w: %s", err, out)
	}
	bind := addr + ",21"
	if s.Addr6 != "" {
		bind = ",21"
	}
	args := []string{
		"-S", bind,
		"-l", "puredb:" + pdb,
		"-E", // no anonymous logins: the test user only
		"-H", // no reverse DNS: there is none in the lab
		"-A", // chroot everyone
		"-p", fmt.Sprintf("%d:%d", opt.PassivePorts[0], opt.PassivePorts[1]),
		"-g", filepath.Join(dir, "pure-ftpd.pid"),
	}
	if opt.PublicAddr != "" {
		args = append(args, "-P", opt.PublicAddr)
	}
	args = append(args, pureFTPdTLS(opt.TLS, opt.TLSRequireData)...)
	return bin, args, nil
}

// proFTPDSetup writes a proftpd.conf with an AuthUserFile holding the test
// user (mapped to nobody, chrooted to the root) and returns the command line.
// AllowForeignAddress stays at its default (off). With IPv6 (addr6 not
// empty) it binds both addresses.
func proFTPDSetup(s *Server, dir, addr, addr6 string, opt ServerOptions) (string, []string, error) {
	bin := filepath.Join(CacheDir(), "proftpd-core/usr/sbin/proftpd")
	passwd := filepath.Join(dir, "proftpd.passwd")
	group := filepath.Join(dir, "proftpd.group")
	if err := os.WriteFile(passwd, fmt.Appendf(nil, "%s:%s:%d:%d::%s:/bin/sh\n",
		s.User, testPasswordCrypt, nobodyUID, nogroupGID, s.Root), 0o600); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(group, fmt.Appendf(nil, "nogroup:x:%d:\n", nogroupGID), 0o644); err != nil {
		return "", nil, err
	}
	conf := strings.Join([]string{
		`ServerType standalone`,
		`ServerName "pglab proftpd"`,
		// The default greeting names the server's own address; that is
		// configuration, not something a proxy rewrites, so keep it out
		// of what reaches the client and the leak check stays about 227.
		`ServerIdent on "pglab proftpd ready"`,
		`DefaultServer on`,
		`DefaultAddress ` + strings.TrimSpace(addr+" "+addr6),
		`SocketBindTight on`,
		`Port 21`,
		`UseIPv6 ` + onOff(addr6 != ""),
		`User nobody`,
		`Group nogroup`,
		`Umask 022`,
		`PidFile ` + filepath.Join(dir, "proftpd.pid"),
		`ScoreboardFile ` + filepath.Join(dir, "proftpd.scoreboard"),
		`DelayTable none`,
		`DelayEngine off`,
		`WtmpLog off`,
		`UseReverseDNS off`,
		`ControlsEngine off`,
		`SystemLog ` + filepath.Join(dir, "proftpd.log"),
		`TransferLog none`,
		`AuthOrder mod_auth_file.c`,
		`AuthUserFile ` + passwd,
		`AuthGroupFile ` + group,
		`RequireValidShell off`,
		`DefaultRoot ~`,
		fmt.Sprintf(`PassivePorts %d %d`, opt.PassivePorts[0], opt.PassivePorts[1]),
		`AllowOverwrite on`,
		`<Limit SITE_CHMOD>`,
		`  DenyAll`,
		`</Limit>`,
	}, "\n") + "\n"
	if opt.PublicAddr != "" {
		conf += "MasqueradeAddress " + opt.PublicAddr + "\n"
	}
	tlsConf, err := proFTPDTLS(opt.TLS, dir, opt.TLSRequireData)
	if err != nil {
		return "", nil, err
	}
	conf += tlsConf
	path := filepath.Join(dir, "proftpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	// -n: foreground; -q: no start-up banner on stderr.
	return bin, []string{"-n", "-q", "-c", path}, nil
}

// onOff is a boolean in ProFTPD's configuration syntax.
func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// WaitFTP polls addr from inside namespace ns until an FTP 220 greeting
// arrives, the process p (the server or proxy expected to answer) exits, or
// 15 s pass.
func (l *Lab) WaitFTP(ctx context.Context, p *Proc, ns, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var last error
	for {
		if done, err := p.Exited(); done {
			return fmt.Errorf("exited: %v", err)
		}
		last = l.greeting(ctx, ns, addr)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no greeting on %s: %w", addr, last)
		case <-p.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *Lab) greeting(ctx context.Context, ns, addr string) error {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := l.Dial(dctx, ns, "", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	for range 50 {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "220 ") {
			_, _ = io.WriteString(c, "QUIT\r\n")
			return nil
		}
		if !strings.HasPrefix(line, "220-") {
			return fmt.Errorf("greeting %q", line)
		}
	}
	return errors.New("greeting too long")
}

// WriteRandomFile writes size random bytes to path and returns their hex
// SHA-256.
func WriteRandomFile(path string, size int) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, int64(size)); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileSHA256 returns the hex SHA-256 of the file at path.
func FileSHA256(path string) (string, error) { return fileSHA256(path) }

// BuildGo builds the main package pkg (a path relative to the module root,
// such as "./test/ftpd/cmd/testftpd") into dir and returns the binary's
// path. Cgo is off: the lab's own code must not need it either.
func BuildGo(ctx context.Context, dir, pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
		return "", fmt.Errorf("lab: %s: %w", pkg, ErrMissing)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("lab: go build %s: %w\n%s", pkg, err, tail(string(b), 3000))
	}
	return out, nil
}

// ModuleRoot returns the directory of the go.mod of the module that
// contains the working directory (a test's package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 64 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("lab: no go.mod above the working directory")
}

// CheckOutcome judges a client's operation by what the user gets, as every
// cell of the suites does: for Get, the downloaded file (local, or rawSHA
// when the raw client computed the digest of the bytes as they arrived)
// has the server's DataSHA256; for Put, the server stored upload with
// putSHA; for List, the listing names DataFile. It returns what is wrong,
// or "".
func (s *Server) CheckOutcome(op Op, res Result, local, rawSHA, upload, putSHA string) string {
	switch op {
	case Get:
		got, err := rawSHA, error(nil)
		if rawSHA == "" {
			got, err = FileSHA256(local)
		}
		if err != nil || got != s.DataSHA256 {
			return fmt.Sprintf("download: sha256 %s (%v), want %s", got, err, s.DataSHA256)
		}
	case Put:
		got, err := s.UploadedSHA256(upload)
		if err != nil || got != putSHA {
			return fmt.Sprintf("upload: server has sha256 %s (%v), want %s", got, err, putSHA)
		}
	case List:
		if !strings.Contains(res.Output, DataFile) {
			return fmt.Sprintf("listing lacks %s: %q", DataFile, res.Output)
		}
	}
	return ""
}
