package lab

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// The FTPS side of the lab: a test PKI made at run time, the servers'
// TLS settings (ServerOptions.TLS) and the clients' (ClientTLS), and
// readers of what a TLS client and a capture show.

// Names in the test certificates. The gateway's and the server's
// certificates have different subjects, so that a client's report of the
// certificate it saw tells which of the two it talked to.
const (
	// GWTLSName is the gateway's DNS name; its certificate also names
	// GWPublicAddr and GWPublicAddr2, which is what clients dial.
	GWTLSName = "gw.pasvgate.test"
	// ServerTLSName is the server's DNS name; its certificate also names
	// ServerAddr. A gateway that checks the server's certificate is told
	// this name (its default would be the address of --upstream).
	ServerTLSName = "ftp.server.test"
	// ImplicitPort is where implicit FTPS (TLS from the first byte)
	// listens, the IANA port of ftps.
	ImplicitPort = 990
)

// Cert is one leaf certificate of a PKI, as files.
type Cert struct {
	// CertFile holds the leaf, then the intermediate CA: the chain a
	// server sends.
	CertFile string
	// LeafFile holds the leaf alone, ChainFile the intermediate alone,
	// for servers that read them apart (ProFTPD).
	LeafFile, ChainFile string
	// KeyFile holds the private key (PKCS #8).
	KeyFile string
	// BundleFile holds the chain of CertFile and then the key, for
	// servers that read one file (pure-ftpd).
	BundleFile string
	// CommonName is the subject's CN.
	CommonName string
	// SHA256 is the hex SHA-256 of the leaf's DER: its fingerprint.
	SHA256 string
}

// PKI is a throw-away certificate authority and the two leaves the FTPS
// cells use: a root (the one trust anchor, CAFile), an intermediate that
// signs both leaves, so that every peer must send its chain, and the
// gateway's and the server's certificates.
type PKI struct {
	// CAFile is the root certificate, PEM: what clients and the gateway
	// trust.
	CAFile string
	// GW is the certificate the gateway presents to clients.
	GW Cert
	// Server is the certificate the FTP servers present to the gateway.
	Server Cert

	// The intermediate CA, which IssueGateway signs with.
	interKey  crypto.Signer
	interCert *x509.Certificate
	interDER  []byte
	now       time.Time
}

// Common names of the PKI's leaves.
const (
	gwCommonName     = "pasvgate test gateway"
	serverCommonName = "pasvgate test FTP server"
)

// NewPKI makes a PKI and writes its files into dir. The certificates are
// valid from an hour ago for a day: long enough for any run, and no run's
// files can be mistaken for another's.
func NewPKI(dir string) (*PKI, error) {
	now := time.Now()
	ca := func(cn string) *x509.Certificate {
		return &x509.Certificate{
			Subject:               pkix.Name{CommonName: cn},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
	}
	rootKey, err := newECKey()
	if err != nil {
		return nil, err
	}
	root := ca("pasvgate test root CA")
	rootDER, rootCert, err := signCert(root, root, rootKey.Public(), rootKey, now)
	if err != nil {
		return nil, fmt.Errorf("lab: root CA: %w", err)
	}
	interKey, err := newECKey()
	if err != nil {
		return nil, err
	}
	inter := ca("pasvgate test intermediate CA")
	inter.MaxPathLenZero = true
	interDER, interCert, err := signCert(inter, rootCert, interKey.Public(), rootKey, now)
	if err != nil {
		return nil, fmt.Errorf("lab: intermediate CA: %w", err)
	}
	p := &PKI{CAFile: filepath.Join(dir, "ca.pem"), interKey: interKey, interCert: interCert, interDER: interDER, now: now}
	if err := os.WriteFile(p.CAFile, pemBlock("CERTIFICATE", rootDER), 0o644); err != nil {
		return nil, err
	}
	if p.GW, err = p.IssueGateway(dir, gwCommonName); err != nil {
		return nil, err
	}
	// The gateway's key is ECDSA, the server's RSA: ProFTPD reads an RSA
	// key with TLSRSACertificateFile, and both kinds get exercised.
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if p.Server, err = p.issue(dir, "server", serverCommonName, srvKey, ServerTLSName, ServerAddr); err != nil {
		return nil, err
	}
	return p, nil
}

func newECKey() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// IssueGateway issues a gateway certificate with a new key and the
// subject cn, naming GWTLSName, GWPublicAddr and GWPublicAddr2 like p.GW,
// and writes its files into dir, made if need be (over any there: a
// renewal). p.GW is not changed.
func (p *PKI) IssueGateway(dir, cn string) (Cert, error) {
	key, err := newECKey()
	if err != nil {
		return Cert{}, err
	}
	return p.issue(dir, "gw", cn, key, GWTLSName, GWPublicAddr, GWPublicAddr2)
}

// issue signs a server certificate for key with the intermediate CA and
// writes the files of Cert into dir, named after name. Each file is
// written whole and renamed into place, so that a program that reads it
// meanwhile (a renewal under a running gateway) never sees half of it.
func (p *PKI) issue(dir, name, cn string, key crypto.Signer, dns string, addrs ...string) (Cert, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    []string{dns},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(a))
	}
	der, _, err := signCert(tmpl, p.interCert, key.Public(), p.interKey, p.now)
	if err != nil {
		return Cert{}, fmt.Errorf("lab: %s certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Cert{}, err
	}
	sum := sha256.Sum256(der)
	c := Cert{
		CertFile:   filepath.Join(dir, name+".pem"),
		LeafFile:   filepath.Join(dir, name+"-leaf.pem"),
		ChainFile:  filepath.Join(dir, name+"-chain.pem"),
		KeyFile:    filepath.Join(dir, name+".key"),
		BundleFile: filepath.Join(dir, name+"-bundle.pem"),
		CommonName: cn,
		SHA256:     hex.EncodeToString(sum[:]),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Cert{}, err
	}
	leaf, chain, keyPEM := pemBlock("CERTIFICATE", der), pemBlock("CERTIFICATE", p.interDER), pemBlock("PRIVATE KEY", keyDER)
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{c.CertFile, concat(leaf, chain), 0o644},
		{c.LeafFile, leaf, 0o644},
		{c.ChainFile, chain, 0o644},
		{c.KeyFile, keyPEM, 0o600},
		{c.BundleFile, concat(leaf, chain, keyPEM), 0o600},
	} {
		tmp := f.path + ".new"
		if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
			return Cert{}, err
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return Cert{}, err
		}
	}
	return c, nil
}

// signCert signs tmpl with parent's key and returns the DER and the parsed
// certificate.
func signCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, now time.Time) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return der, c, err
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// vsftpdTLS is the vsftpd.conf addition for ServerOptions.TLS. The lab's
// vsftpd login is anonymous, so the anon_ settings are the ones that
// apply: TLS is required for the login (force_anon_logins_ssl), and for
// data (force_anon_data_ssl) only with requireData: otherwise PROT C is
// allowed. The local_ ones are set the same way for completeness, and
// require_ssl_reuse stays at its default (YES: a protected data
// connection must resume the control connection's TLS session).
func vsftpdTLS(c *Cert, requireData bool) string {
	if c == nil {
		return ""
	}
	data := "NO"
	if requireData {
		data = "YES"
	}
	return strings.Join([]string{
		"ssl_enable=YES",
		"allow_anon_ssl=YES",
		"force_anon_logins_ssl=YES",
		"force_anon_data_ssl=" + data,
		"force_local_logins_ssl=YES",
		"force_local_data_ssl=" + data,
		"rsa_cert_file=" + c.CertFile,
		"rsa_private_key_file=" + c.KeyFile,
		// vsftpd 3.0.3's compiled-in list is DES-CBC3-SHA alone.
		"ssl_ciphers=HIGH",
	}, "\n") + "\n"
}

// proFTPDTLS is the proftpd.conf addition for ServerOptions.TLS: mod_tls,
// from the unpacked proftpd-mod-crypto, with TLS required on the control
// channel only (TLSRequired ctrl), or with requireData on data
// connections too (TLSRequired on). No TLSOptions: so not
// NoSessionReuseRequired, and a protected data connection must resume the
// control connection's session (mod_tls's default).
func proFTPDTLS(c *Cert, dir string, requireData bool) (string, error) {
	if c == nil {
		return "", nil
	}
	required := "ctrl"
	if requireData {
		required = "on"
	}
	mods := filepath.Join(CacheDir(), "proftpd-mod-crypto/usr/lib/proftpd")
	if _, err := os.Stat(filepath.Join(mods, "mod_tls.so")); err != nil {
		return "", fmt.Errorf("mod_tls: %w (run test/install-deps.sh)", ErrMissing)
	}
	return strings.Join([]string{
		`ModulePath ` + mods,
		`LoadModule mod_tls.c`,
		`<IfModule mod_tls.c>`,
		`  TLSEngine on`,
		`  TLSLog ` + filepath.Join(dir, "proftpd-tls.log"),
		`  TLSProtocol TLSv1.2 TLSv1.3`,
		`  TLSRSACertificateFile ` + c.LeafFile,
		`  TLSRSACertificateKeyFile ` + c.KeyFile,
		`  TLSCertificateChainFile ` + c.ChainFile,
		`  TLSVerifyClient off`,
		`  TLSRequired ` + required,
		`</IfModule>`,
	}, "\n") + "\n", nil
}

// pureFTPdTLS is pure-ftpd's arguments for ServerOptions.TLS: -Y 2 refuses
// a session that does not secure its control channel, -Y 3 (requireData)
// also refuses clear data connections, with the chain and key in one
// file. pure-ftpd has no setting that requires a data connection to
// resume the control connection's session.
func pureFTPdTLS(c *Cert, requireData bool) []string {
	if c == nil {
		return nil
	}
	level := "2"
	if requireData {
		level = "3"
	}
	return []string{"-Y", level, "-2", c.BundleFile}
}

// testftpdTLS is testftpd's arguments for ServerOptions.TLS: with a
// certificate it requires TLS for the login and allows clear data, and
// protected data (PROT P) too; it has no setting that requires it, so
// ServerOptions.TLSRequireData changes nothing there.
func testftpdTLS(c *Cert) []string {
	if c == nil {
		return nil
	}
	return []string{"--tls-cert", c.CertFile, "--tls-key", c.KeyFile}
}

// ClientTLS makes a client driver (Curl, Lftp, Ftplib, JLFTP) speak FTPS:
// the control channel in TLS, the data connections in clear (PROT C), as
// the kernel path of a gateway needs them, or protected too (PROT P,
// ProtectData), which a gateway must relay itself.
type ClientTLS struct {
	// CAFile is the PEM file of the certificates the client trusts; the
	// peer's certificate must verify against it and name the address
	// the client dials.
	CAFile string
	// Implicit selects implicit FTPS: TLS from the first byte, on
	// ImplicitPort. Lftp supports it, and Curl with ProtectData (its
	// ftps:// always protects data). False is explicit FTPS (AUTH TLS on
	// port 21).
	Implicit bool
	// TLS12 caps the client at TLS 1.2, whose handshake shows the
	// server's certificate in clear (see WireCertificate); TLS 1.3
	// encrypts it. False lets the client choose, which is TLS 1.3 with
	// every peer of the lab.
	TLS12 bool
	// ProtectData makes the data connections (listings too) TLS: PBSZ 0
	// and PROT P. curl --ssl-reqd, lftp ftp:ssl-protect-data, ftplib
	// prot_p(), jlaffaye/ftp's explicit TLS (which has no PROT C). Curl,
	// Lftp and JLFTP resume the control connection's TLS session on each
	// data connection; Python's stock ftplib does not.
	ProtectData bool
}

// peerCertLine is how Ftplib reports the certificate it was shown, on
// standard error.
var peerCertLine = regexp.MustCompile(`(?m)^pglab peer certificate sha256=([0-9a-f]{64}) subject=(.*)$`)

// curlCertLeaf is the first certificate of curl's --write-out %{certs}
// (the leaf), and curlSubject the subject curl --verbose prints.
var (
	curlCertLeaf = regexp.MustCompile(`(?s)-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----`)
	curlSubject  = regexp.MustCompile(`(?m)^\*\s+subject: (.*)$`)
)

// PeerCert is what a TLS client reported of the certificate it was shown.
type PeerCert struct {
	// SHA256 is the hex fingerprint of the leaf, where the client shows
	// the certificate itself (curl, ftplib); "" otherwise.
	SHA256 string
	// Subject is the leaf's subject as the client printed it.
	Subject string
}

// PeerCertOf reads the certificate a TLS client driver reported in res:
// curl's --write-out %{certs} and --verbose subject, or the line ftplib
// (and a test's own client) prints. lftp, as Debian builds it (GnuTLS),
// reports none: read its certificate off the wire (WireCertificate). An
// error says nothing was found.
func PeerCertOf(res Result) (PeerCert, error) {
	var pc PeerCert
	if m := peerCertLine.FindStringSubmatch(res.Log); m != nil {
		return PeerCert{SHA256: m[1], Subject: m[2]}, nil
	}
	if m := curlCertLeaf.FindString(res.Output); m != "" {
		// curl prints the PEM with its lines as they came; decode it
		// leniently.
		b, _ := pem.Decode([]byte(strings.ReplaceAll(m, "\r", "")))
		if b == nil {
			return pc, errors.New("curl's certificate does not decode as PEM")
		}
		sum := sha256.Sum256(b.Bytes)
		pc.SHA256 = hex.EncodeToString(sum[:])
	}
	if m := curlSubject.FindStringSubmatch(res.Log); m != nil {
		pc.Subject = strings.TrimSpace(m[1])
	}
	if pc == (PeerCert{}) {
		return pc, errors.New("the client reported no peer certificate")
	}
	return pc, nil
}

// TLSRecordsAfter checks that stream (one direction of a control
// connection, as Stream returns it) is, from the end of a line that starts
// with marker onwards (from its start if marker is ""), a sequence of TLS
// records: content type 20 to 23, a 3.x version and a length, each record
// in full but perhaps the last. The line is the first such line after
// which the rest is TLS: a client may try AUTH SSL, be refused, and go on
// with AUTH TLS. It returns the length of the clear prefix (all of stream
// when no line starts with marker), and an error that says where the
// stream stops looking like TLS after the last such line. A stream with
// nothing after the marker is an error: the handshake must have happened.
func TLSRecordsAfter(stream, marker string) (int, error) {
	if marker == "" {
		return 0, tlsRecords(stream)
	}
	var err error
	for i := 0; i < len(stream); {
		j := strings.Index(stream[i:], marker)
		if j < 0 {
			break
		}
		i += j
		if i > 0 && stream[i-1] != '\n' {
			i += len(marker)
			continue
		}
		nl := strings.IndexByte(stream[i:], '\n')
		if nl < 0 {
			return len(stream), fmt.Errorf("line %q has no end", stream[i:])
		}
		start := i + nl + 1
		if err = tlsRecords(stream[start:]); err == nil {
			return start, nil
		}
		err = fmt.Errorf("after %q: %w", strings.TrimSpace(stream[i:start]), err)
		i = start
	}
	if err == nil {
		err = fmt.Errorf("no line starting %q", marker)
	}
	return len(stream), err
}

// tlsRecords checks that rest is a sequence of TLS records (see
// TLSRecordsAfter), and not empty.
func tlsRecords(rest string) error {
	if rest == "" {
		return errors.New("nothing follows")
	}
	for off := 0; off < len(rest); {
		if len(rest)-off < 5 {
			return fmt.Errorf("a short record header at byte %d", off)
		}
		typ, major, length := rest[off], rest[off+1], int(rest[off+3])<<8|int(rest[off+4])
		if typ < 20 || typ > 23 || major != 3 || length > 1<<14+2048 {
			end := min(len(rest), off+40)
			return fmt.Errorf("not a TLS record at byte %d: %q", off, rest[off:end])
		}
		off += 5 + length
	}
	return nil
}

// curlTLSArgs are curl's arguments for c, and the URL to append the path
// to: --ftp-ssl-control (TLS for the login and the whole control channel,
// clear data: curl sends PBSZ 0 and PROT C, and tries AUTH SSL before AUTH
// TLS), or with c.ProtectData --ssl-reqd (PROT P); implicit FTPS is an
// ftps:// URL to ImplicitPort, which protects data; the trust anchors; and
// what makes curl show the certificate it was given: --verbose prints its
// subject on standard error, --write-out %{certs} the chain on standard
// output (after a listing, for List).
func curlTLSArgs(c *ClientTLS, tr Transfer) ([]string, string, error) {
	url := "ftp://" + tr.urlHost() + "/"
	if c == nil {
		return nil, url, nil
	}
	args := []string{"--cacert", c.CAFile, "--verbose", "--write-out", "%{certs}"}
	switch {
	case c.Implicit && !c.ProtectData:
		return nil, "", fmt.Errorf("curl: implicit FTPS (ftps://) protects data, PROT C is not driven here: %w", ErrUnsupported)
	case c.Implicit:
		url = fmt.Sprintf("ftps://%s:%d/", tr.urlHost(), ImplicitPort)
	case c.ProtectData:
		args = append(args, "--ssl-reqd")
	default:
		args = append(args, "--ftp-ssl-control")
	}
	if c.TLS12 {
		args = append(args, "--tls-max", "1.2")
	}
	return args, url, nil
}

// lftpTLSSettings are lftp's settings for c, and the URL to open: TLS
// forced on the control channel, data and listings in clear (protected
// with c.ProtectData), SSL allowed for the anonymous login (vsftpd's in
// the lab), the certificate checked against c.CAFile and the host name (an
// IP address, which the certificate must name). Implicit FTPS is an
// ftps:// URL to ImplicitPort. Without c, TLS is off: the servers of the
// plain cells speak plain FTP, and lftp would otherwise try AUTH TLS.
func lftpTLSSettings(c *ClientTLS, tr Transfer) ([]string, string) {
	if c == nil {
		return []string{"set ftp:ssl-allow no"}, "ftp://" + tr.urlHost()
	}
	protect := "no"
	if c.ProtectData {
		protect = "yes"
	}
	s := []string{
		"set ftp:ssl-allow yes",
		"set ftp:ssl-force yes",
		"set ftp:ssl-allow-anonymous yes",
		"set ftp:ssl-protect-data " + protect,
		"set ftp:ssl-protect-list " + protect,
		"set ssl:ca-file " + c.CAFile,
		"set ssl:verify-certificate yes",
		"set ssl:check-hostname yes",
	}
	if c.TLS12 {
		s = append(s, `set ssl:priority "NORMAL:-VERS-TLS1.3"`)
	}
	if c.Implicit {
		return s, fmt.Sprintf("ftps://%s:%d", tr.urlHost(), ImplicitPort)
	}
	return s, "ftp://" + tr.urlHost()
}

// ftplibTLSArgs are the TLS arguments of ftplibScript for c.
func ftplibTLSArgs(c *ClientTLS) (mode, cafile, prot string, err error) {
	switch {
	case c == nil:
		return "clear", "", "C", nil
	case c.Implicit:
		return "", "", "", fmt.Errorf("ftplib has no implicit FTPS: %w", ErrUnsupported)
	}
	prot = "C"
	if c.ProtectData {
		prot = "P"
	}
	if c.TLS12 {
		return "explicit-tls12", c.CAFile, prot, nil
	}
	return "explicit", c.CAFile, prot, nil
}

// jlclientTLSArgs are jlclient's arguments for c: explicit FTPS with data
// protected (jlaffaye/ftp's DialWithExplicitTLS sends PBSZ 0 and PROT P,
// and has no PROT C), verifying the peer against c.CAFile.
func jlclientTLSArgs(c *ClientTLS) ([]string, error) {
	switch {
	case c == nil:
		return nil, nil
	case c.Implicit:
		return nil, fmt.Errorf("jlclient: implicit FTPS is not driven here: %w", ErrUnsupported)
	case !c.ProtectData:
		return nil, fmt.Errorf("jlaffaye/ftp's explicit TLS always sends PROT P: %w", ErrUnsupported)
	}
	args := []string{"--tls-ca", c.CAFile}
	if c.TLS12 {
		args = append(args, "--tls12")
	}
	return args, nil
}

// WireCertificate returns the hex SHA-256 of the first certificate (the
// leaf) of the TLS 1.2 Certificate message in stream, the server's side
// of a control connection, read from the TLS records after the line that
// starts with marker (from the start if marker is ""; see
// TLSRecordsAfter). This is the certificate that crossed the link,
// whatever the client makes of it. TLS 1.3 encrypts the message, so it
// is not found there (see ClientTLS.TLS12).
func WireCertificate(stream, marker string) (string, error) {
	start, err := TLSRecordsAfter(stream, marker)
	if err != nil {
		return "", err
	}
	// The handshake messages, from the handshake records in clear (a
	// message may span records), up to the first encrypted record.
	var hs []byte
	for rest := stream[start:]; len(rest) >= 5; {
		n := int(rest[3])<<8 | int(rest[4])
		if rest[0] == 20 || len(rest) < 5+n {
			break // ChangeCipherSpec: what follows is encrypted
		}
		if rest[0] == 22 {
			hs = append(hs, rest[5:5+n]...)
		}
		rest = rest[5+n:]
	}
	for len(hs) >= 4 {
		typ, n := hs[0], int(hs[1])<<16|int(hs[2])<<8|int(hs[3])
		if len(hs) < 4+n {
			break
		}
		body := hs[4 : 4+n]
		hs = hs[4+n:]
		if typ != 11 {
			continue
		}
		// certificate_list<0..2^24-1>, each ASN.1Cert<1..2^24-1>.
		if len(body) < 6 {
			return "", errors.New("short Certificate message")
		}
		certLen := int(body[3])<<16 | int(body[4])<<8 | int(body[5])
		if len(body) < 6+certLen {
			return "", errors.New("short certificate in the Certificate message")
		}
		sum := sha256.Sum256(body[6 : 6+certLen])
		return hex.EncodeToString(sum[:]), nil
	}
	return "", errors.New("no Certificate message in clear (TLS 1.3?)")
}
