package interop

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// revSuite is one run of reverse-mode cells: a gateway lab per server,
// pasvgate started with args, and the cells of each side (family) and
// command.
type revSuite struct {
	title string
	ipv6  bool // the lab has IPv6
	// pgArgs are pasvgate's arguments after "run", waitOn the addresses
	// its greeting must come from before cells run.
	pgArgs, waitOn []string
	// parts are the cells: a side and the commands run on it.
	parts []revPart
	// extra are server names run besides the selected ones (see
	// serverSpec), with the clients extraClients only.
	extra, extraClients []string
}

// vsftpdPort20 names vsftpd with connect_from_port_20=YES, Debian's
// packaged setting: its active-mode data connections come from port 20.
const vsftpdPort20 = "vsftpd-port20"

// serverSpec turns a server name of these suites into a kind and options.
func serverSpec(name string) (string, lab.ServerOptions) {
	if name == vsftpdPort20 {
		return lab.Vsftpd, lab.ServerOptions{DataFromPort20: true}
	}
	return name, lab.ServerOptions{}
}

// servers lists the server names of the suite: the selected ones and,
// where their kind is selected, the extra ones.
func (s revSuite) servers() []string {
	out := lab.SplitList(*flagActiveServers)
	for _, x := range s.extra {
		if kind, _ := serverSpec(x); slices.Contains(out, kind) {
			out = append(out, x)
		}
	}
	return out
}

type revPart struct {
	side side
	cmds []string
	// clients, if not nil, replaces the selected clients for this part.
	clients []string
	// ops, if not nil, limits the operations of this part's clients.
	ops []lab.Op
	// ignore: the part's clients ignore the 227's address (rcell.ignore).
	ignore bool
}

// opsOf lists what client does in this part.
func (p revPart) opsOf(client string) []lab.Op {
	ops := opsOf(client)
	if p.ops != nil {
		ops = slices.DeleteFunc(slices.Clone(ops), func(op lab.Op) bool { return !slices.Contains(p.ops, op) })
	}
	return ops
}

var gridHead = []string{"family", "server", "client", "cmd"}

// opsOf lists what a client of these suites does: the raw drivers only
// download (their point is the probe between the command and the data
// connection).
func opsOf(client string) []lab.Op {
	if client == "raw" {
		return []lab.Op{lab.Get}
	}
	return lab.Ops
}

// run runs the suite and prints its table. Suites run in parallel with
// each other: their labs share nothing, and most of their time is spent
// waiting on shaped links.
func (s revSuite) run(t *testing.T) {
	lab.RequireRoot(t)
	requirePasvgateMode(t)
	t.Parallel()
	start := time.Now()
	servers := s.servers()
	tl := buildSome(t, slices.Contains(servers, lab.BuiltIn), false)
	g := lab.NewGrid(fmt.Sprintf("%s (%s)", s.title, *flagIPTables), gridHead, []string{"get", "put", "list"})
	for _, p := range s.parts {
		for _, kind := range servers {
			for _, cl := range s.clientsOf(p, kind) {
				for _, cmd := range p.cmds {
					c := rcell{side: p.side, server: kind, client: cl, cmd: cmd, ignore: p.ignore}
					g.Row(c.row()...)
					for _, op := range lab.Ops {
						if !slices.Contains(p.opsOf(cl), op) {
							g.Set(c.row(), string(op), lab.StatusNone, "", 0)
						}
					}
				}
			}
		}
	}
	t.Run("servers", func(t *testing.T) {
		for _, kind := range servers {
			t.Run(kind, func(t *testing.T) {
				t.Parallel()
				s.runServer(t, kind, tl, g)
			})
		}
	})
	g.Print(os.Stdout, time.Since(start))
}

// buildSome builds what buildTools does, less what the suite does not
// use: testftpd only when ftpd is one of its servers, jlclient only when
// the suite has its cells. Builds are mostly linking, which adds up on a
// loaded 2-core machine.
func buildSome(t *testing.T, testftpd, jlclient bool) tools {
	dir := t.TempDir()
	var tl tools
	var wg sync.WaitGroup
	if testftpd {
		wg.Go(func() { tl.testftpd, tl.testftpdErr = lab.BuildGo(t.Context(), dir, "./test/ftpd/cmd/testftpd") })
	} else {
		tl.testftpdErr = errors.New("testftpd not built: ftpd not selected")
	}
	if jlclient {
		wg.Go(func() { tl.jlclient, tl.jlclientErr = lab.BuildGo(t.Context(), dir, "./test/interop/cmd/jlclient") })
	} else {
		tl.jlclientErr = errors.New("jlclient not built: not used here")
	}
	wg.Go(func() { tl.pasvgate, tl.pasvgateErr = pasvgateBin(t.Context(), dir) })
	wg.Wait()
	return tl
}

// startServerOf starts a server of kind in l, or ends t: skipped when
// the server is not installed, failed when it did not start, each with
// rows told why.
func startServerOf(t *testing.T, l *lab.Lab, kind string, opt lab.ServerOptions, rows func(status, why string)) *lab.Server {
	t.Helper()
	srv, err := l.StartServer(t.Context(), kind, opt)
	if err != nil {
		if errors.Is(err, lab.ErrMissing) {
			rows(lab.StatusSkip, oneLine(err.Error()))
			t.Skip(err)
		}
		rows(lab.StatusFail, "server did not start: "+oneLine(err.Error()))
		t.Fatal(err)
	}
	return srv
}

func (s revSuite) clientsOf(p revPart, server string) []string {
	var out []string
	for _, cl := range lab.SplitList(*flagActiveClients) {
		if (p.clients == nil || slices.Contains(p.clients, cl)) &&
			(!slices.Contains(s.extra, server) || slices.Contains(s.extraClients, cl)) {
			out = append(out, cl)
		}
	}
	return out
}

// runServer runs every cell of one server in a lab of its own.
func (s revSuite) runServer(t *testing.T, name string, tl tools, g *lab.Grid) {
	kind, opt := serverSpec(name)
	rows := func(status, why string) {
		for _, p := range s.parts {
			for _, cl := range s.clientsOf(p, name) {
				for _, cmd := range p.cmds {
					c := rcell{side: p.side, server: name, client: cl, cmd: cmd, ignore: p.ignore}
					for _, op := range p.opsOf(cl) {
						g.Set(c.row(), string(op), status, why, 0)
					}
				}
			}
		}
	}
	if tl.pasvgateErr != nil {
		rows(lab.StatusSkip, "pasvgate binary: "+oneLine(tl.pasvgateErr.Error()))
		t.Skip(tl.pasvgateErr)
	}
	if kind == lab.BuiltIn && tl.testftpdErr != nil {
		rows(lab.StatusSkip, oneLine(tl.testftpdErr.Error()))
		t.Skip(tl.testftpdErr)
	}
	l := lab.New(t, labOptions(*flagActiveRate, s.ipv6))
	opt.Binary = tl.testftpd
	srv := startServerOf(t, l, kind, opt, rows)
	defer srv.Proc.Stop()
	args := append(append([]string{}, s.pgArgs...),
		"--data-ports", pasvgateDataPorts,
		"--log-format", "json")
	args = append(args, backendArgs(l)...)
	var waitOn []string
	for _, w := range s.waitOn {
		// A server that is IPv4-only here leaves pasvgate's IPv6
		// listener without an upstream to greet from.
		if ap, err := netip.ParseAddrPort(w); err == nil && ap.Addr().Is6() && srv.Addr6 == "" {
			continue
		}
		waitOn = append(waitOn, w)
	}
	pg, err := startPasvgateArgs(t, l, tl.pasvgate, waitOn, args...)
	if err != nil {
		rows(lab.StatusFail, "pasvgate did not start: "+oneLine(err.Error()))
		t.Fatal(err)
	}
	defer pg.stop(t)
	e := &revEnv{l: l, srv: srv, pg: pg, probe: *flagActiveRate > 0, port20: opt.DataFromPort20}
	for _, p := range s.parts {
		for _, cl := range s.clientsOf(p, name) {
			for _, cmd := range p.cmds {
				for _, op := range p.opsOf(cl) {
					c := rcell{side: p.side, server: name, client: cl, cmd: cmd, op: op, ignore: p.ignore}
					t.Run(p.side.name+"/"+c.clientName()+"/"+cmd+"/"+string(op), func(t *testing.T) {
						if p.side.name == side6.name && srv.Addr6 == "" {
							why := kind + " listens on one address: IPv4 only in the lab"
							g.Set(c.row(), string(op), lab.StatusSkip, why, 0)
							t.Skip(why)
						}
						e.runCell(t, g, c)
					})
				}
			}
		}
	}
}

// TestActive runs reverse-mode active FTP through pasvgate: real clients
// (curl --ftp-port -, lftp ftp:passive-mode no, ftplib set_pasv(False))
// and the raw driver send PORT or EPRT for their own address, against
// servers with their default same-address check (vsftpd
// port_promiscuous=NO: the PORT address must be the control connection's
// source, the gateway), for download, upload and listing; and against
// vsftpd with connect_from_port_20=YES (Debian's packaged setting), whose
// data connections come from port 20, for curl and the raw driver.
//
// Each cell checks the file's SHA-256 (or the listing); that the client
// sent the cell's command and no other; that the server was told the
// gateway's private address and a port Q of the data range, in the same
// command, and connected exactly there; that the client got the data
// connection from the gateway's public address (--public-addr, the SNAT
// of the mapping) at exactly the port it offered; that the client's
// address never reached the server's link and no 192.0.2.x the client's;
// that, while the mapping was open, neither a neighbour of the server
// (192.0.2.11) nor a host on the client's side (203.0.113.11) could
// connect to 192.0.2.1:Q, and, in the raw cells, that the server's own
// address could (the positive control); and that no mapping rule is left
// afterwards.
func TestActive(t *testing.T) {
	revSuite{
		title: "reverse mode, active FTP (IPv4)",
		pgArgs: []string{
			"--listen", lab.GWPublicAddr + ":21",
			"--upstream", lab.ServerAddr + ":21",
			"--public-addr", lab.GWPublicAddr2,
		},
		waitOn:       []string{lab.GWPublicAddr + ":21"},
		parts:        []revPart{{side: side4, cmds: []string{cmdPORT, cmdEPRT}}},
		extra:        []string{vsftpdPort20},
		extraClients: []string{"curl", "raw"},
	}.run(t)
}
