package audit

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/pasvgate/pasvgate/proxy/sniff"
	"github.com/pasvgate/pasvgate/test/lab"
)

// updateGolden rewrites the golden reports from the fixtures as they are,
// without root: for a change in how reports are printed.
const updateGolden = "PASVGATE_UPDATE_GOLDEN"

// TestGolden reads each fixture and compares its reports with the golden
// ones; then it checks what each fixture must show, so that a fixture
// recorded wrong (or a report that changed its mind) fails here rather
// than being blessed with the goldens.
func TestGolden(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			r := readFixture(t, f.name)
			if os.Getenv(updateGolden) == "1" {
				writeGolden(t, f.name, r)
			}
			text, js := render(t, f.name, r)
			for ext, got := range map[string][]byte{".txt": text, ".json": js} {
				want, err := os.ReadFile(filepath.Join(testdata, f.name+ext))
				if err != nil {
					t.Fatalf("%v (record the fixtures: %s=1 go test ./test/audit as root)", err, updateFixtures)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s%s differs from the golden report (%s=1 rewrites it):\ngot\n%s\nwant\n%s", f.name, ext, updateGolden, got, want)
				}
			}
			if size := len(readFile(t, f.name+".pcap")); size > 16<<10 {
				t.Errorf("%s.pcap is %d bytes: fixtures stay small", f.name, size)
			}
			if check := expectations[f.name]; check != nil {
				check(t, r)
			} else {
				t.Errorf("no expectations for %s", f.name)
			}
		})
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatalf("%v (record the fixtures: %s=1 go test ./test/audit as root)", err, updateFixtures)
	}
	return b
}

func readFixture(t *testing.T, name string) *sniff.Report {
	t.Helper()
	r, err := sniff.ReadPcap(bytes.NewReader(readFile(t, name+".pcap")), sniff.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var (
	serverAP  = netip.AddrPortFrom(netip.MustParseAddr(lab.ServerAddr), 21)
	clientIP  = netip.MustParseAddr(lab.ClientAddr)
	serverIP  = netip.MustParseAddr(lab.ServerAddr)
	elsewhere = netip.MustParseAddr("192.0.2.99")
)

// expectations say what each fixture is about.
var expectations = map[string]func(t *testing.T, r *sniff.Report){
	"healthy": func(t *testing.T, r *sniff.Report) {
		s := session(t, r, 1)
		kinds := []string{}
		for _, ev := range s.DataAddrs {
			kinds = append(kinds, ev.Kind)
			if !ev.Own || !ev.Data.SYNACK || len(ev.Problems) != 0 || ev.TransferReply != 226 {
				t.Errorf("%s: %+v", ev.Kind, ev)
			}
		}
		if !slices.Equal(kinds, []string{sniff.KindPASV, sniff.KindEPSV, sniff.KindPORT}) {
			t.Errorf("data addresses %v", kinds)
		}
		if s.Banner == "" || s.Ended != sniff.EndFIN || !s.FromStart {
			t.Errorf("session %+v", s)
		}
		verdict(t, r, sniff.VerdictOK)
	},
	"misconfigured": func(t *testing.T, r *sniff.Report) {
		if len(r.Sessions) != 2 {
			t.Fatalf("%d sessions", len(r.Sessions))
		}
		trusting, ignoring := r.Sessions[0].DataAddrs[0], r.Sessions[1].DataAddrs[0]
		if trusting.Addr.Addr() != elsewhere || trusting.Own || trusting.Data.SYNs == 0 || trusting.Data.SYNACK ||
			!hasProblem(trusting, sniff.ProblemOtherHost) || !hasProblem(trusting, sniff.ProblemNoAnswer) {
			t.Errorf("trusting client: %+v", trusting)
		}
		if !ignoring.Data.ToControlAddress || !ignoring.Data.SYNACK || ignoring.Data.To.Addr() != serverIP ||
			!hasProblem(ignoring, sniff.ProblemOtherHost) || hasProblem(ignoring, sniff.ProblemNoAnswer) {
			t.Errorf("ignoring client: %+v", ignoring)
		}
		sum := verdict(t, r, sniff.VerdictBadAddress)
		if !slices.Equal(sum.Advertised, []netip.Addr{elsewhere}) || sum.BadAddress != 2 {
			t.Errorf("summary %+v", sum)
		}
	},
	"split227": func(t *testing.T, r *sniff.Report) {
		// The fixture is only worth having if the 227 really is split.
		if !segmentEndsWith(t, "split227", "227 Entering Pass") {
			t.Error("no segment ends with \"227 Entering Pass\": the 227 was not split")
		}
		passiveOK(t, r)
	},
	"multiline227": func(t *testing.T, r *sniff.Report) {
		ev := passiveOK(t, r)
		if !strings.HasPrefix(ev.Line, "227-Entering Passive Mode / 227 (") {
			t.Errorf("line %q", ev.Line)
		}
	},
	"authtls": func(t *testing.T, r *sniff.Report) {
		s := session(t, r, 1)
		if s.TLS == nil || s.TLS.Command != "AUTH TLS" || len(s.DataAddrs) != 0 {
			t.Errorf("session %+v, TLS %+v", s, s.TLS)
		}
		verdict(t, r, sniff.VerdictEncrypted)
	},
	"blocked": func(t *testing.T, r *sniff.Report) {
		ev := session(t, r, 1).DataAddrs[0]
		if !ev.Own || ev.Data.SYNs == 0 || ev.Data.SYNACK || !hasProblem(ev, sniff.ProblemNoAnswer) || hasProblem(ev, sniff.ProblemOtherHost) {
			t.Errorf("%+v", ev)
		}
		verdict(t, r, sniff.VerdictDataUnreachable)
	},
}

func session(t *testing.T, r *sniff.Report, n int) *sniff.Session {
	t.Helper()
	if len(r.Sessions) != n {
		t.Fatalf("%d sessions, want %d", len(r.Sessions), n)
	}
	s := r.Sessions[0]
	if s.Server != serverAP || s.Client.Addr() != clientIP {
		t.Errorf("session %v -> %v", s.Client, s.Server)
	}
	return s
}

func verdict(t *testing.T, r *sniff.Report, want string) *sniff.ServerSummary {
	t.Helper()
	if len(r.Servers) != 1 || r.Servers[0].Server != serverAP || r.Servers[0].Verdict != want {
		t.Fatalf("servers %+v, want one with verdict %s", r.Servers, want)
	}
	return r.Servers[0]
}

// passiveOK checks the one 227 of the only session: the server's own
// address, connected to.
func passiveOK(t *testing.T, r *sniff.Report) *sniff.DataAddr {
	t.Helper()
	s := session(t, r, 1)
	if len(s.DataAddrs) != 1 {
		t.Fatalf("data addresses %+v", s.DataAddrs)
	}
	ev := s.DataAddrs[0]
	if ev.Kind != sniff.KindPASV || ev.Command != "PASV" || ev.Addr.Addr() != serverIP || !ev.Own ||
		!ev.Data.SYNACK || ev.TransferReply != 226 || len(ev.Problems) != 0 {
		t.Errorf("%+v", ev)
	}
	return ev
}

func hasProblem(ev *sniff.DataAddr, code sniff.ProblemCode) bool {
	return slices.ContainsFunc(ev.Problems, func(p sniff.Problem) bool { return p.Code == code })
}

// segmentEndsWith reports whether some TCP segment of the fixture has a
// payload ending in suffix.
func segmentEndsWith(t *testing.T, name, suffix string) bool {
	t.Helper()
	pr, err := pcapgo.NewReader(bytes.NewReader(readFile(t, name+".pcap")))
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, _, err := pr.ReadPacketData()
		if err != nil {
			return false
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && bytes.HasSuffix(tcp.Payload, []byte(suffix)) {
			return true
		}
	}
}
