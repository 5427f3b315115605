package interop

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// The PROT P checks of the FTPS suite (TestTLS): where a protected data
// connection went, that it is TLS on both links, and what pasvgate's
// metrics counted.

// pgMetrics is one scrape of pasvgate's /metrics: each sample's value by
// its series, as the text exposition writes it
// (`pasvgate_transfers_total{path="relay"}`).
type pgMetrics map[string]float64

// scrape reads pasvgate's /metrics (--metrics pasvgateMetrics) from
// inside the gateway namespace.
func (p *pasvgate) scrape(ctx context.Context) (pgMetrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	hc := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return p.l.Dial(ctx, p.l.GW, "", addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pasvgateMetrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping pasvgate's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping pasvgate's metrics: %s", resp.Status)
	}
	return parseMetrics(io.LimitReader(resp.Body, 1<<20))
}

// parseMetrics reads the samples of a Prometheus text exposition.
func parseMetrics(r io.Reader) (pgMetrics, error) {
	m := pgMetrics{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics: bad line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: bad line %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// countWant is how much one counter must rise in a cell: at least min,
// at most max.
type countWant struct {
	series   string
	min, max float64
}

// Series of pasvgate's metrics the cells check.
const (
	seriesKernel  = `pasvgate_transfers_total{path="kernel"}`
	seriesRelay   = `pasvgate_transfers_total{path="relay"}`
	seriesRelayed = `pasvgate_relayed_bytes_total`
)

var (
	// kernelTransfer: one transfer whose data took the kernel path.
	kernelTransfer = []countWant{{seriesKernel, 1, 1}, {seriesRelay, 0, 0}, {seriesRelayed, 0, 0}}
	// relayTransfer: one transfer relayed by pasvgate, the file's bytes
	// at least (both directions count: TLS's own records do not).
	relayTransfer = []countWant{{seriesRelay, 1, 1}, {seriesKernel, 0, 0}, {seriesRelayed, lab.DataSize, math.Inf(1)}}
	// foreignRefused: one connection to a relay's port refused for its
	// source address.
	foreignRefused = []countWant{{`pasvgate_refusals_total{reason="relay-foreign-source"}`, 1, 1}}
	// noReuseRefused: one client data handshake refused for not resuming
	// (--tls-require-reuse), and no data relayed.
	noReuseRefused = []countWant{{`pasvgate_tls_failures_total{reason="data-no-reuse"}`, 1, 1}, {seriesRelayed, 0, 0}}
)

// checkCounts checks that each counter of wants rose from before by as
// much as it wants. pasvgate counts a transfer once its final reply is
// forwarded, which the client may have read first: it polls for up to
// 3 s until every minimum is reached.
func (p *pasvgate) checkCounts(ctx context.Context, before pgMetrics, wants []countWant) []string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		after, err := p.scrape(ctx)
		if err != nil {
			return []string{err.Error()}
		}
		var short, fails []string
		for _, w := range wants {
			d := after[w.series] - before[w.series]
			if d < w.min {
				short = append(short, fmt.Sprintf("%s rose by %v, want at least %v", w.series, d, w.min))
			}
			if d > w.max {
				fails = append(fails, fmt.Sprintf("%s rose by %v, want at most %v", w.series, d, w.max))
			}
		}
		if len(short) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return append(short, fails...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkLogged checks that log has a line with msg that also contains
// each of with.
func checkLogged(log, msg string, with ...string) []string {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		if !slices.ContainsFunc(with, func(w string) bool { return !strings.Contains(line, w) }) {
			return nil
		}
	}
	return []string{fmt.Sprintf("pasvgate logged no %q with %q", msg, with)}
}

// checkRefused checks a cell whose protected data connection must be
// refused: the client failed, directly by vsftpd's 522 (session reuse
// required) or ProFTPD's 425 (its TLSLog saying why), through pasvgate
// --tls-require-reuse by pasvgate, which counted and logged a
// data-no-reuse failure and relayed nothing.
func (e *tlsEnv) checkRefused(ctx context.Context, c tcell, runErr error, before pgMetrics, logFrom int) (fails, notes []string) {
	if runErr == nil {
		return []string{fmt.Sprintf("the client's transfer worked: want it refused (%s)", c.want)}, nil
	}
	notes = append(notes, "client failed as it must: "+lastLines(runErr.Error(), 2))
	switch c.want {
	case want522:
		if !strings.Contains(runErr.Error(), "522 SSL connection failed: session reuse required") {
			fails = append(fails, fmt.Sprintf("client failed with %q, want vsftpd's 522 (session reuse required)", lastLines(runErr.Error(), 3)))
		}
	case want425:
		if !strings.Contains(runErr.Error(), "425 ") {
			fails = append(fails, fmt.Sprintf("client failed with %q, want ProFTPD's 425", lastLines(runErr.Error(), 3)))
		}
		const why = "did not reuse TLS session, rejecting data connection"
		if b, err := os.ReadFile(filepath.Join(filepath.Dir(e.srv.Root), "proftpd-tls.log")); err != nil || !strings.Contains(string(b), why) {
			fails = append(fails, fmt.Sprintf("ProFTPD's TLSLog does not say %q (%v)", why, err))
		}
	case wantNoReuse:
		if e.pg == nil {
			return append(fails, "no pasvgate to refuse the data connection"), notes
		}
		fails = append(fails, e.pg.checkCounts(ctx, before, noReuseRefused)...)
		fails = append(fails, checkLogged(e.pg.proc.Settled()[logFrom:],
			"protected data connection refused: TLS handshake with the client failed", `"reason":"data-no-reuse"`)...)
	}
	return fails, notes
}

// dataSYNs returns the SYNs in pkts from an address of from to a port not
// ctl's: the data connections.
func dataSYNs(pkts []lab.Packet, from netip.Addr, ctl netip.AddrPort) []lab.Packet {
	var out []lab.Packet
	for _, p := range pkts {
		if p.SYN && !p.ACK && p.Src.Addr() == from && p.Dst != ctl && p.Dst.Port() != lab.ImplicitPort && p.Dst.Port() != 21 {
			out = append(out, p)
		}
	}
	return out
}

// checkDataTLS checks that the connection between a and b in pkts is TLS
// records from its first byte in each direction: protected data, of
// which nothing can be read on the link.
func checkDataTLS(link string, pkts []lab.Packet, a, b netip.AddrPort) []string {
	var fails []string
	for _, d := range [][2]netip.AddrPort{{a, b}, {b, a}} {
		if _, err := lab.TLSRecordsAfter(lab.StreamOnce(pkts, d[0], d[1]), ""); err != nil {
			fails = append(fails, fmt.Sprintf("%s, data %v->%v: %v", link, d[0], d[1], err))
		}
	}
	return fails
}

// passivePort reports whether a is on the server's passive range
// (lab.ServerOptions' default).
func passivePort(a netip.AddrPort) bool {
	return a.Addr() == addr(lab.ServerAddr) && a.Port() >= 30000 && a.Port() <= 30099
}

// checkRelayPath checks where a passive PROT P cell's data connections
// went, and that they are TLS: from the client (from) to pasvgate's
// --public-addr and a port of its data range, where the gateway itself
// accepted them (their conntrack entry is answered by the address they
// were made to: no DNAT); and from the gateway's private address to the
// server's passive port, as many, made by pasvgate. Direct, the client
// connects to the server's passive port itself.
func (e *tlsEnv) checkRelayPath(ctx context.Context, pkts, spkts []lab.Packet, from netip.Addr, ctl netip.AddrPort, direct, clearClient bool) (fails, notes []string) {
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	data := dataSYNs(pkts, from, ctl)
	if len(data) == 0 {
		return []string{fmt.Sprintf("no data connection from %v on the client's link (SYNs %v)", from, lab.Connects(pkts))}, nil
	}
	low, high := dataPortRange()
	for _, syn := range data {
		to := syn.Dst
		if !clearClient { // a clear client's side of the relay is clear: its bytes are checked whole
			fails = append(fails, checkDataTLS("client's link", pkts, syn.Src, to)...)
		}
		if direct {
			if !passivePort(to) {
				failf("direct data connection to %v, want %s and a passive port of the server", to, lab.ServerAddr)
			}
			continue
		}
		if to.Addr() != addr(lab.GWPublicAddr2) || to.Port() < low || to.Port() > high {
			failf("data connection to %v, want %s (--public-addr) and a port in %s", to, lab.GWPublicAddr2, pasvgateDataPorts)
			continue
		}
		switch reply, err := conntrackReplySource(ctx, e.l, syn.Src, to); {
		case err != nil:
			failf("conntrack: %v", err)
		case reply != to:
			failf("conntrack: the flow to %v is answered by %v: a kernel DNAT, not pasvgate's relay", to, reply)
		default:
			notes = append(notes, fmt.Sprintf("data %v->%v: accepted by the gateway (conntrack)", syn.Src, to))
		}
	}
	if direct {
		return fails, notes
	}
	var up []lab.Packet
	for _, syn := range dataSYNs(spkts, addr(lab.GWPrivateAddr), netip.AddrPortFrom(addr(lab.ServerAddr), 21)) {
		if passivePort(syn.Dst) {
			up = append(up, syn)
			fails = append(fails, checkDataTLS("server's link", spkts, syn.Src, syn.Dst)...)
			notes = append(notes, fmt.Sprintf("relay's data connection %v->%v", syn.Src, syn.Dst))
		}
	}
	if len(up) != len(data) {
		failf("%d data connections from the client, %d from the gateway to the server's passive ports (SYNs %v)", len(data), len(up), lab.Connects(spkts))
	}
	return fails, notes
}

// checkRelayActive checks an active-mode PROT P cell's data connections:
// the server connected to the gateway's private address and a port of
// pasvgate's data range, where the gateway itself accepted it (its
// conntrack entry is answered by that address: no DNAT); the gateway
// connected from its --public-addr to the client, as many times; each is
// TLS on its link.
func (e *tlsEnv) checkRelayActive(ctx context.Context, pkts, spkts []lab.Packet) (fails, notes []string) {
	failf := func(format string, args ...any) { fails = append(fails, fmt.Sprintf(format, args...)) }
	low, high := dataPortRange()
	var in []lab.Packet
	for _, syn := range dataSYNs(spkts, addr(lab.ServerAddr), netip.AddrPort{}) {
		to := syn.Dst
		in = append(in, syn)
		fails = append(fails, checkDataTLS("server's link", spkts, syn.Src, to)...)
		if to.Addr() != addr(lab.GWPrivateAddr) || to.Port() < low || to.Port() > high {
			failf("the server connected to %v, want %s and a port in %s", to, lab.GWPrivateAddr, pasvgateDataPorts)
			continue
		}
		switch reply, err := conntrackReplySource(ctx, e.l, syn.Src, to); {
		case err != nil:
			failf("conntrack: %v", err)
		case reply != to:
			failf("conntrack: the server's flow to %v is answered by %v: a kernel DNAT, not pasvgate's relay", to, reply)
		default:
			notes = append(notes, fmt.Sprintf("data %v->%v: accepted by the gateway (conntrack)", syn.Src, to))
		}
	}
	if len(in) == 0 {
		return []string{fmt.Sprintf("no data connection from the server on its link (SYNs %v)", lab.Connects(spkts))}, nil
	}
	out := dataSYNs(pkts, addr(lab.GWPublicAddr2), netip.AddrPort{})
	for _, syn := range out {
		if syn.Dst.Addr() != addr(lab.ClientAddr) {
			failf("the gateway connected to %v, want the client %s", syn.Dst, lab.ClientAddr)
		}
		fails = append(fails, checkDataTLS("client's link", pkts, syn.Src, syn.Dst)...)
		notes = append(notes, fmt.Sprintf("relay's data connection %v->%v", syn.Src, syn.Dst))
	}
	if len(out) != len(in) {
		failf("%d data connections from the server, %d from %s (--public-addr) to the client (SYNs %v)", len(in), len(out), lab.GWPublicAddr2, lab.Connects(pkts))
	}
	return fails, notes
}

// intruder returns, for a routeIntruder cell, what the raw client calls
// between PASV and its own data connection: a host on the client's
// network (lab.IntruderAddr) connects to the announced address first and
// tries a TLS handshake, which pasvgate must not make. It returns a note,
// or an error if the intruder got a handshake. Other cells get nil.
func (e *tlsEnv) intruder(c tcell) func(context.Context, netip.AddrPort) (string, error) {
	if c.route != routeIntruder {
		return nil
	}
	return func(ctx context.Context, target netip.AddrPort) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, err := e.l.Dial(ctx, e.l.Client, lab.IntruderAddr, target.String())
		if err != nil {
			return fmt.Sprintf("intruder %s -> %v: %s", lab.IntruderAddr, target, shortErr(err)), nil
		}
		defer conn.Close()
		pem, err := os.ReadFile(e.pki.CAFile)
		if err != nil {
			return "", err
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: target.Addr().String(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Sprintf("intruder %s -> %v: connected, no TLS handshake (%v)", lab.IntruderAddr, target, err), nil
		}
		return "", fmt.Errorf("intruder %s got a TLS handshake on the data port %v", lab.IntruderAddr, target)
	}
}

// TestProtPChecks proves that the PROT P checks' readers can fail: a
// metrics exposition is read by series, a malformed one is an error; a log
// line is found only with all its parts; a data connection in clear, or
// in one direction only, is not TLS.
func TestProtPChecks(t *testing.T) {
	m, err := parseMetrics(strings.NewReader("# HELP x\n# TYPE x counter\n" +
		seriesRelay + " 3\n" + seriesRelayed + " 1.048576e+06\npasvgate_sessions_active 0\n"))
	if err != nil || m[seriesRelay] != 3 || m[seriesRelayed] != 1<<20 || m[seriesKernel] != 0 {
		t.Errorf("parseMetrics: %v, %v", m, err)
	}
	if _, err := parseMetrics(strings.NewReader(seriesRelay + " three\n")); err == nil {
		t.Error("parseMetrics took a value that is not a number")
	}

	log := `{"level":"WARN","msg":"protected data connection refused: not from the address it is for","from":"203.0.113.11:4000"}`
	msg := "protected data connection refused: not from the address it is for"
	if f := checkLogged(log, msg, "203.0.113.11"); f != nil {
		t.Errorf("checkLogged: %v", f)
	}
	if f := checkLogged(log, msg, "203.0.113.12"); f == nil {
		t.Error("checkLogged found a line without the address")
	}

	ap := netip.MustParseAddrPort
	cli, srv := ap("203.0.113.10:50000"), ap("203.0.113.2:40000")
	rec := string([]byte{23, 3, 3, 0, 4}) + "abcd"
	conn := func(up, down string) []lab.Packet {
		return []lab.Packet{
			{Src: cli, Dst: srv, SYN: true, Seq: 100},
			{Src: srv, Dst: cli, SYN: true, ACK: true, Seq: 900},
			{Src: cli, Dst: srv, Payload: []byte(up), Seq: 101},
			{Src: srv, Dst: cli, Payload: []byte(down), Seq: 901},
		}
	}
	for _, tc := range []struct {
		name     string
		up, down string
		ok       bool
	}{
		{"TLS both ways", rec, rec + rec, true},
		{"clear data", rec, "the file's bytes in clear", false},
		{"nothing sent", "", rec, false},
	} {
		if f := checkDataTLS("link", conn(tc.up, tc.down), cli, srv); (f == nil) != tc.ok {
			t.Errorf("checkDataTLS, %s: %v", tc.name, f)
		}
	}
}
