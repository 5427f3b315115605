package interop

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pasvgate/pasvgate/test/lab"
)

// TestAsyncAbort aborts a download through pasvgate the way RFC 959 4.1.3
// says and lftp does: Telnet IP, then the Synch (IAC, and the DM as TCP
// urgent data), then ABOR, on a control connection to vsftpd with
// async_abor_enable=YES. Such a vsftpd reads the control connection during
// a transfer only on the urgent signal, so the abort works only if
// pasvgate sends the DM on as urgent data: the client then gets 426 for
// the transfer and 226 for the ABOR. The client stops reading the data
// connection, so the transfer stays in progress until the abort (a sparse
// file far bigger than the socket buffers). Before the fix pasvgate sent
// the DM as a plain byte: vsftpd never saw the abort and the client got
// no reply at all (issue 12, low items).
func TestAsyncAbort(t *testing.T) {
	lab.RequireRoot(t)
	requirePasvgateMode(t)
	tl := buildSome(t, false, false)
	if tl.pasvgateErr != nil {
		t.Skipf("pasvgate binary: %v", tl.pasvgateErr)
	}
	l := lab.New(t, labOptions(0, false))
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	srv, err := l.StartServer(ctx, lab.Vsftpd, lab.ServerOptions{AsyncAbor: true})
	if err != nil {
		if strings.Contains(err.Error(), lab.ErrMissing.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	defer srv.Proc.Stop()
	const big = "big.bin"
	f, err := os.OpenFile(filepath.Join(srv.Root, big), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 << 30); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	f.Close()
	p, err := startPasvgate(t, l, tl.pasvgate)
	if err != nil {
		t.Fatal(err)
	}
	defer p.proc.Stop()

	c, nc, err := l.RawLogin(ctx, lab.RawSession{NS: l.Client, Host: lab.GWPublicAddr, User: srv.User, Password: srv.Password})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msg, err := lab.RawCmd(c, 227, "PASV")
	if err != nil {
		t.Fatal(err)
	}
	addrs := lab.Parse227s("227 " + msg)
	if len(addrs) != 1 {
		t.Fatalf("PASV: cannot parse %q", msg)
	}
	data, err := l.Dial(ctx, l.Client, "", addrs[0].String())
	if err != nil {
		t.Fatalf("dial data %v: %v", addrs[0], err)
	}
	defer data.Close()
	_ = data.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := lab.RawCmd(c, 150, "RETR %s", big); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(data, make([]byte, 256<<10)); err != nil {
		t.Fatalf("reading the start of the download: %v", err)
	}
	// The client reads no more data: the transfer is in progress, and
	// vsftpd blocked writing it, until the abort.
	if err := sendSynch(nc); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	var got []string
	if _, err := c.Cmd("ABOR"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{426, 226} {
		code, msg, err := c.ReadResponse(want)
		got = append(got, fmt.Sprintf("%d %s", code, msg))
		if err != nil {
			t.Fatalf("after IP, Synch and ABOR mid-download the client got %q (%v), want 426 then 226", got, err)
		}
	}
	t.Logf("after IP, Synch and ABOR mid-download the client got %q", got)
	if _, err := lab.RawCmd(c, 2, "NOOP"); err != nil {
		t.Fatalf("the session after the abort: %v", err)
	}
}

// sendSynch sends Telnet IP and IAC as plain bytes and then the DM as
// urgent data (MSG_OOB), as lftp does before ABOR.
func sendSynch(c net.Conn) error {
	if _, err := c.Write([]byte{0xff, 0xf4, 0xff}); err != nil {
		return fmt.Errorf("sending IAC IP IAC: %w", err)
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return fmt.Errorf("sending the DM urgent: %w", err)
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		_, serr = syscall.SendmsgN(int(fd), []byte{0xf2}, nil, nil, syscall.MSG_OOB)
		return serr != syscall.EAGAIN
	}); err != nil {
		return fmt.Errorf("sending the DM urgent: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("sending the DM urgent: %w", serr)
	}
	return nil
}
