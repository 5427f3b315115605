package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/pasvgate/pasvgate/proxy"
)

const sessionsUsage = `usage: pasvgate sessions [--metrics ADDR:PORT | --config FILE] [--json] [--timeout D]

Prints the sessions a running pasvgate has open, oldest first, read from
the /sessions endpoint of its admin listener (pasvgate run --metrics):
the address given, or the metrics key of the config file. A wildcard
address (":9121", "0.0.0.0:9121", "[::]:9121") is read on loopback.
Prints nothing when no session is open (with --json: []).

flags:
`

// sessionsMaxBody bounds the answer read: far above what max-sessions
// sessions of half a KiB each take, and still a bound if the address is
// not pasvgate's.
const sessionsMaxBody = 64 << 20

// cmdSessions runs `pasvgate sessions`.
func cmdSessions(args []string) error {
	return runSessions(context.Background(), args, os.Stdout, os.Stderr)
}

// runSessions is cmdSessions with its streams exposed for tests.
func runSessions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sessions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, sessionsUsage)
		fs.PrintDefaults()
	}
	metrics := fs.String("metrics", "", "pasvgate's admin listener, as given to pasvgate run --metrics")
	config := fs.String("config", "", "pasvgate's config file, whose metrics key names the admin listener")
	asJSON := fs.Bool("json", false, "print the JSON as received")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on the whole request")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	addr := *metrics
	switch {
	case addr != "" && *config != "":
		return usageError{errors.New("give --metrics or --config, not both")}
	case *config != "":
		cfg, err := readConfig([]string{"--config", *config})
		if err != nil {
			return err
		}
		if cfg.Metrics == "" {
			return usageError{fmt.Errorf("--config %s: no metrics address: pasvgate serves /sessions only on its admin listener (metrics: ADDR:PORT)", *config)}
		}
		addr = cfg.Metrics
	case addr == "":
		return usageError{errors.New("give --metrics ADDR:PORT (the admin listener of pasvgate run) or --config FILE")}
	}
	u, err := sessionsURL(addr)
	if err != nil {
		return usageError{fmt.Errorf("--metrics %s: %w", addr, err)}
	}
	body, err := fetchSessions(ctx, u, *timeout)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var list []proxy.SessionInfo
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("reading %s: %w", u, err)
	}
	// Nothing at all when there is nothing, as `rules list`, so that
	// scripts can test for it.
	if len(list) == 0 {
		return nil
	}
	return writeSessions(stdout, list)
}

// sessionsURL is the /sessions URL of an admin listener given as
// --metrics reads it. A wildcard address is dialed on loopback of its
// family; a bare ":P" listens on IPv4 in any case, so it is 127.0.0.1.
func sessionsURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("port %q: %w", port, err)
	}
	if host == "" {
		host = "127.0.0.1"
	} else if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if a.Is6() {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/sessions", nil
}

// fetchSessions GETs u and returns its body, bounded.
func fetchSessions(ctx context.Context, u string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking pasvgate for its sessions: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, sessionsMaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		// A pasvgate older than /sessions answers 404.
		return nil, fmt.Errorf("%s: %s", u, resp.Status)
	}
	if len(body) > sessionsMaxBody {
		return nil, fmt.Errorf("%s: answer longer than %d bytes", u, sessionsMaxBody)
	}
	return body, nil
}

// writeSessions prints the table. Every column but the last is one word,
// so that scripts can split lines on blanks; the last, DETAIL, says what
// a transfer or a command awaits, with the file name quoted.
func writeSessions(w io.Writer, list []proxy.SessionInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROUTE\tCLIENT\tSERVER\tUSER\tSTATE\tMAPPING\tBYTES\tAGE\tDETAIL")
	for _, si := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			word(si.ID), word(si.Route), word(si.Client), word(si.Server), word(clipRunes(si.User, 32)), word(si.State),
			mappingCell(si.Mapping), bytesCell(si.Bytes), age(si.AgeSeconds), detail(si))
	}
	return tw.Flush()
}

// word makes a peer's string one printable word: each blank or
// non-printable character becomes '?', so that no user name can break
// the columns or send the terminal an escape sequence; "" is "-".
func word(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
			return '?'
		}
		return r
	}, s)
}

// clipRunes cuts s to n characters, marking the cut.
func clipRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-3]) + "..."
}

// mappingCell is PUBLIC->TARGET,PATH,claimed|unclaimed,AGE, or "-".
func mappingCell(m *proxy.MappingInfo) string {
	if m == nil {
		return "-"
	}
	claimed := "unclaimed"
	if m.Claimed {
		claimed = "claimed"
	}
	return fmt.Sprintf("%s->%s,%s,%s,%s", word(m.Public), word(m.Target), word(m.Path), claimed, age(m.AgeSeconds))
}

// bytesCell is the control bytes from the client and from the server,
// then the relayed data bytes: IN/OUT,DATA.
func bytesCell(b proxy.ByteInfo) string {
	return human(b.FromClient) + "/" + human(b.FromServer) + "," + human(b.Relayed)
}

// human writes n bytes in binary units, one decimal, from 10 KiB up.
func human(n uint64) string {
	if n < 10<<10 {
		return strconv.FormatUint(n, 10)
	}
	const units = "KMGT"
	f, i := float64(n)/1024, 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[i:i+1]
}

// age writes seconds as a Go duration, to the second.
func age(sec float64) string {
	return (time.Duration(sec * float64(time.Second))).Truncate(time.Second).String()
}

// detail is the DETAIL column: what a transfer or a command awaits, or
// "-" (not "", which would leave blanks at the line's end).
func detail(si proxy.SessionInfo) string {
	if tr := si.Transfer; tr != nil {
		data := "no 150 yet"
		if tr.Started {
			data = "data open"
		}
		return fmt.Sprintf("%s %s for %s, %s", word(tr.Command), strconv.QuoteToGraphic(tr.Arg), age(tr.Seconds), data)
	}
	switch {
	case si.State != proxy.StateCommand && si.State != proxy.StateLogin, si.Awaiting == "":
		return "-"
	case si.Awaiting == "OTHER":
		return "awaiting a reply"
	}
	return "awaiting " + word(si.Awaiting)
}
