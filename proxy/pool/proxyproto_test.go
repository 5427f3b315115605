package pool

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// header waits for the next PROXY header f received.
func header(t *testing.T, f *fakeServer) *proxyproto.Header {
	t.Helper()
	select {
	case h := <-f.headers:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no connection reached the server")
		return nil
	}
}

func TestSessionHeader(t *testing.T) {
	for _, tc := range []struct {
		client, local     string // as the proxy's listener sees them
		wantSrc, wantDest string // as the server must see them
		wantProto         proxyproto.AddressFamilyAndProtocol
	}{
		{"203.0.113.7:40001", "198.51.100.1:21", "203.0.113.7:40001", "198.51.100.1:21", proxyproto.TCPv4},
		{"[::ffff:203.0.113.7]:40001", "[::ffff:198.51.100.1]:21", "203.0.113.7:40001", "198.51.100.1:21", proxyproto.TCPv4},
		{"[2001:db8::7]:40001", "[2001:db8:ff::1]:990", "[2001:db8::7]:40001", "[2001:db8:ff::1]:990", proxyproto.TCPv6},
		{"[fe80::7%eth0]:40001", "[fe80::1%eth0]:21", "[fe80::7]:40001", "[fe80::1]:21", proxyproto.TCPv6},
	} {
		for _, pp := range []ProxyProtocol{ProxyV1, ProxyV2} {
			f := newFake(t, "f", true)
			p, _ := newPool(Config{Members: members(f.addr), ProxyProtocol: pp})
			k := Key{Client: netip.MustParseAddrPort(tc.client), Local: netip.MustParseAddrPort(tc.local)}
			c := dial(t, p, k)
			h := header(t, f)
			if h == nil {
				t.Fatalf("%v %s: the server could not read the header", pp, tc.client)
			}
			if int(h.Version) != int(pp) || !h.Command.IsProxy() || h.TransportProtocol != tc.wantProto {
				t.Errorf("%v %s: header version %d command %x protocol %x", pp, tc.client, h.Version, h.Command, h.TransportProtocol)
			}
			if h.SourceAddr.String() != tc.wantSrc || h.DestinationAddr.String() != tc.wantDest {
				t.Errorf("%v: server saw %v -> %v, want %s -> %s", pp, h.SourceAddr, h.DestinationAddr, tc.wantSrc, tc.wantDest)
			}
			// The FTP conversation follows the header untouched.
			if got := greeting(t, c); got != "220 f ready" {
				t.Errorf("%v: client read %q after the header", pp, got)
			}
			c.Close()
			f.close()
		}
	}
}

func TestSessionHeaderNeedsAddrs(t *testing.T) {
	f := newFake(t, "f", true)
	p, _ := newPool(Config{Members: members(f.addr), ProxyProtocol: ProxyV2})
	for _, k := range []Key{{}, {Client: netip.MustParseAddrPort("203.0.113.7:1")}, {Local: netip.MustParseAddrPort("198.51.100.1:21")}} {
		if _, err := p.Dial(context.Background(), nil, k); !errors.Is(err, errNoAddrs) {
			t.Errorf("Dial(%+v) = %v, want errNoAddrs", k, err)
		}
	}
	if n := f.accepted.Load(); n != 0 {
		t.Errorf("the server got %d connections without a header to send", n)
	}
	if st := p.Status()[0]; st.State != Up {
		t.Errorf("the caller's mistake marked the server %v", st.State)
	}
	p.mu.Lock()
	if d := p.members[0].dialing; d != 0 {
		t.Errorf("%d connects still counted", d)
	}
	p.mu.Unlock()
}

func TestCheckHeader(t *testing.T) {
	for _, pp := range []ProxyProtocol{ProxyV1, ProxyV2} {
		f := newFake(t, "f", true)
		if err := check(context.Background(), f.addr, 5*time.Second, pp); err != nil {
			t.Errorf("%v: check against a server requiring the header: %v", pp, err)
		}
		h := header(t, f)
		if h == nil {
			t.Fatalf("%v: the server refused the check's header", pp)
		}
		if int(h.Version) != int(pp) || !h.Command.IsLocal() || h.TransportProtocol != proxyproto.UNSPEC {
			t.Errorf("%v: check header version %d command %x protocol %x; want LOCAL/UNKNOWN", pp, h.Version, h.Command, h.TransportProtocol)
		}
		f.close()
	}
	b, err := checkHeader(ProxyV1)
	if err != nil || string(b) != "PROXY UNKNOWN\r\n" {
		t.Errorf("v1 check header %q, %v", b, err)
	}
}

func TestCheckHeaderInRun(t *testing.T) {
	// Through Run: with the header, a server requiring it stays Up; without
	// it, the same server goes Down (so the header is what made it pass).
	f := newFake(t, "f", true)
	p, rec := newPool(Config{Members: members(f.addr), ProxyProtocol: ProxyV2, Health: quickChecks})
	runPool(t, p)
	waitFor(t, "checks", func() bool { return f.accepted.Load() >= 4 })
	if p.Status()[0].State != Up || len(rec.find("upstream server down", f.addr)) != 0 {
		t.Fatalf("a server requiring PROXY failed checks that send it: %+v", p.Status()[0])
	}
	p.Update(Config{Members: members(f.addr), Health: quickChecks})
	waitFor(t, "checks without the header to fail", func() bool { return p.Status()[0].State == Down })
}
