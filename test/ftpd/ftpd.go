// Package ftpd is test infrastructure: the small FTP server that advertises
// a chosen address in its 227 replies and hands out passive ports from a
// chosen range. The in-process tests use it as the upstream behind the
// proxy, and the netns lab runs it (through cmd/testftpd) inside its server
// namespace.
//
// The server itself is cmd/pasvgate/demoftpd, which `pasvgate demo` starts
// too: the binary may not import anything under test/, so the code lives
// there and this package only gives the tests its names.
package ftpd

import (
	"context"

	"github.com/pasvgate/pasvgate/cmd/pasvgate/demoftpd"
)

// Defaults applied to a zero Config.
const (
	DefaultListen          = demoftpd.DefaultListen
	DefaultPassivePortLow  = demoftpd.DefaultPassivePortLow
	DefaultPassivePortHigh = demoftpd.DefaultPassivePortHigh
)

// Config describes a server; see demoftpd.Config.
type Config = demoftpd.Config

// Server is a running FTP server made by Start; see demoftpd.Server.
type Server = demoftpd.Server

// Start starts a server; see demoftpd.Start.
func Start(ctx context.Context, cfg Config) (*Server, error) { return demoftpd.Start(ctx, cfg) }
