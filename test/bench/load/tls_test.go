package load

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"sync"
	"testing"
	"time"
)

// A data connection must resume the control connection's session, as
// ftplib's do and as servers that tie the two together expect, not the
// session the data connection before it was given. The server here labels
// every ticket with the connection it was issued on and records which one
// each resumption used.
func TestDataCacheResumesControlSession(t *testing.T) {
	cert, pool := selfSigned(t, "gw.example")
	var mu sync.Mutex
	issued := 0           // tickets issued so far
	used := map[int]int{} // connection number -> the one its ticket came from
	conn := 0             // connections accepted
	srvConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srvConf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		conn++
		n := conn
		mu.Unlock()
		c := srvConf.Clone()
		c.GetConfigForClient = nil
		c.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			mu.Lock()
			issued++
			mu.Unlock()
			b, err := srvConf.EncryptTicket(cs, ss)
			return append([]byte{byte(n)}, b...), err
		}
		c.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			mu.Lock()
			used[n] = int(identity[0])
			mu.Unlock()
			return srvConf.DecryptTicket(identity[1:], cs)
		}
		return c, nil
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvConf)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after the Close below, which ends the Accept loop
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Say something after the handshake, so that the client reads
			// the tickets sent behind it; then close.
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte("x"))
			_ = c.Close()
		}
	}()

	ctrlConf := &tls.Config{RootCAs: pool, ServerName: "gw.example", ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	dataConf := ctrlConf.Clone()
	dataConf.ClientSessionCache = dataCache{ctrlConf.ClientSessionCache}
	dial := func(conf *tls.Config) *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), conf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := dial(ctrlConf); c.ConnectionState().DidResume {
		t.Fatal("the control connection resumed a session it cannot have")
	}
	for i := 2; i <= 3; i++ {
		if c := dial(dataConf); !c.ConnectionState().DidResume {
			t.Fatalf("data connection %d did not resume", i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if issued < 3 {
		t.Fatalf("the server issued %d tickets, want one at least on each connection", issued)
	}
	if used[2] != 1 || used[3] != 1 {
		t.Fatalf("the data connections resumed the sessions of connections %d and %d, want the control connection's (1)", used[2], used[3])
	}
}

func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(fmt.Errorf("parsing: %w", err))
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
