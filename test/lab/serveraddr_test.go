package lab

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

// TestServerAddr checks ServerOptions.Addr and AddServerAddr: two servers
// run side by side on port 21 of the server namespace, each on its own
// address, and each one's passive download comes from itself (its own
// file, its own address in the 227), as a pool behind a gateway needs.
func TestServerAddr(t *testing.T) {
	l := New(t, Options{})
	const second = "192.0.2.12"
	if err := l.AddServerAddr(t.Context(), second); err != nil {
		t.Fatal(err)
	}
	first, err := l.StartServer(t.Context(), Vsftpd, ServerOptions{})
	if errors.Is(err, ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	other, err := l.StartServer(t.Context(), ProFTPD, ServerOptions{Addr: second, PassivePorts: [2]int{30100, 30199}})
	if errors.Is(err, ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := net.JoinHostPort(second, "21"); other.Addr != want || other.Addr6 != "" {
		t.Errorf("Server.Addr %q, Addr6 %q: want %q and none", other.Addr, other.Addr6, want)
	}
	for _, s := range []*Server{first, other} {
		host, _, _ := net.SplitHostPort(s.Addr)
		var announced netip.AddrPort
		sum, err := l.RawPassiveRetr(t.Context(), RawSession{NS: l.GW, Host: host, User: s.User, Password: s.Password}, false,
			func(a netip.AddrPort) (net.Conn, error) { announced = a; return nil, nil })
		if err != nil {
			t.Errorf("%s at %s: %v", s.Kind, s.Addr, err)
			continue
		}
		if sum != s.DataSHA256 {
			t.Errorf("%s at %s: downloaded sha256 %s, want its own file's %s", s.Kind, s.Addr, sum, s.DataSHA256)
		}
		if announced.Addr().String() != host {
			t.Errorf("%s at %s announced %v", s.Kind, s.Addr, announced)
		}
	}
	if first.DataSHA256 == other.DataSHA256 {
		t.Error("both servers serve the same file: a download cannot tell them apart")
	}
}
