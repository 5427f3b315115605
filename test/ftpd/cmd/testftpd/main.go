// Command testftpd runs the test/ftpd server on its own, for the netns lab
// (inside the server namespace) and for trying pasvgate by hand. It prints
// "listening on ADDR" on stdout once the control port is bound, logs to
// stderr, and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/pasvgate/pasvgate/test/ftpd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testftpd:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg             ftpd.Config
		ports           string
		debug           bool
		tlsCert, tlsKey string
	)
	flag.StringVar(&cfg.Listen, "listen", ftpd.DefaultListen, "control listener `host:port`")
	flag.StringVar(&cfg.PublicHost, "public-host", "", "IPv4 `address` advertised in 227 replies (default: the address the client connected to)")
	flag.StringVar(&ports, "passive-ports", fmt.Sprintf("%d-%d", ftpd.DefaultPassivePortLow, ftpd.DefaultPassivePortHigh), "inclusive passive port range `LOW-HIGH`")
	flag.StringVar(&cfg.Root, "root", "", "`directory` served read/write (default: an empty in-memory filesystem)")
	flag.StringVar(&cfg.User, "user", "", "account name, besides anonymous")
	flag.StringVar(&cfg.Password, "password", "", "account password")
	flag.BoolVar(&cfg.DisableActive, "disable-active", false, "refuse PORT and EPRT")
	flag.BoolVar(&cfg.ProxyProtocol, "proxy-protocol", false, "require a PROXY protocol header (v1 or v2) on every control connection and take its source as the client's address; LOCAL/UNKNOWN headers use the connection's own")
	flag.BoolVar(&cfg.PasvSameIP, "pasv-same-ip", false, "refuse passive data connections from another address than the control connection's client (with --proxy-protocol: the header's source)")
	flag.BoolVar(&debug, "debug", false, "log at debug level")
	flag.StringVar(&tlsCert, "tls-cert", "", "PEM `file` of the certificate (with its chain) for AUTH TLS; with it, TLS is required on the control channel (data may stay clear)")
	flag.StringVar(&tlsKey, "tls-key", "", "PEM `file` of the --tls-cert's private key")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	var err error
	if cfg.PassivePorts, err = parsePorts(ports); err != nil {
		return err
	}
	if tlsCert != "" || tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
		if err != nil {
			return fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		cfg.RequireTLS = true
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := ftpd.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", srv.Addr())
	<-ctx.Done()
	return srv.Close()
}

func parsePorts(s string) ([2]int, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return [2]int{}, errors.New("--passive-ports: want LOW-HIGH")
	}
	low, err1 := strconv.Atoi(lo)
	high, err2 := strconv.Atoi(hi)
	if err := errors.Join(err1, err2); err != nil {
		return [2]int{}, fmt.Errorf("--passive-ports: %w", err)
	}
	return [2]int{low, high}, nil
}
