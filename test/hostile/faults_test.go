package hostile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Faults: what pasvgate's clients get when its process, its server, its
// kernel rules or its public address fail under it, and that it recovers
// with nothing left behind.

func faultEntries() []entry {
	return []entry{
		{id: "F01", side: "fault", input: "kill -9 under load (3 transfers mid-way)", want: "control closed; restart sweeps, serves",
			inv: "leftovers gone before the restart serves", fault: true, run: kill9UnderLoad,
			ref: "also TestFaultKill9DuringDownload (test/interop), TestNftSIGKILL1000 (test/lifecycle)"},
		{id: "F02", side: "fault", input: "server down (process killed) with a session open", want: "421 for it and for a new session",
			fault: true, run: serverDown, ref: "also TestFaultServerStopped (test/interop)"},
		{id: "F03", side: "fault", input: "server stalling (SIGSTOP) under a PASV", want: "421 at idle-timeout, closed",
			fault: true, run: serverStalling},
		{id: "F04", side: "fault", input: "xtables lock held (iptables-legacy, --rule-timeout 1s)", want: "425, then 227 once free",
			fault: true, run: xtablesLockHeld, ref: "also TestLockHeld (rules/iptables)"},
		{id: "F05", side: "fault", input: "nftables batch refused (a foreign element holds the key)", want: "425, session goes on, then 227",
			inv: "refusal logged", fault: true, run: nftBatchRefused, ref: "also TestNftInstallRefusedGives425 (test/lifecycle)"},
		{id: "F06", side: "fault", input: "nft flush ruleset mid-transfer", want: "next transfer ok (in flight: cut by the kernel)",
			fault: true, run: nftFlushMidTransfer},
		{id: "F07", side: "fault", input: "iptables -F, -t nat -F mid-transfer (iptables-nft)", want: "transfer byte-exact; next transfer ok",
			fault: true, run: iptablesFlushMidTransfer},
		{id: "F08", side: "fault", input: "public address changed mid-transfer (--public-iface)", want: "transfer byte-exact; next 227 new address",
			fault: true, run: publicAddrChanged},
		{id: "F09", side: "fault", input: "10 SIGHUPs under load (3 clients x 3 transfers)", want: "every transfer byte-exact",
			fault: true, run: sighupUnderLoad},
	}
}

// downloadsPaused starts n downloads from from, each pausing after its
// first 64 KiB; fault runs once all are paused, then they go on. It
// returns each download's error.
func (h *harness) downloadsPaused(from string, n int, fault func()) []error {
	var wg sync.WaitGroup
	paused := make(chan struct{}, n)
	release := make(chan struct{})
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.download(from, func() {
				paused <- struct{}{}
				select {
				case <-release:
				case <-time.After(30 * time.Second):
				}
			})
		}()
	}
	got := 0
	timeout := time.After(15 * time.Second)
wait:
	for got < n {
		select {
		case <-paused:
			got++
		case <-timeout:
			break wait
		}
	}
	fault()
	close(release)
	wg.Wait()
	return errs
}

func kill9UnderLoad(h *harness, e *env) (string, error) {
	var leftovers int
	var restartErr error
	errs := h.downloadsPaused(e.from, 3, func() {
		// No canary transfer during the kill and restart: a mapping it
		// opened at once on the new process would look like a leftover.
		if h.canary != nil {
			h.canary.hold.Lock()
			defer h.canary.hold.Unlock()
		}
		p := h.proc()
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if l, err := h.rules(); err == nil {
			leftovers = len(l)
		}
		h.startPasvgate(nil, h.baseArgs()...)
		// Right after "started", before any client: the sweep is done.
		if l, err := h.rules(); err != nil || len(l) != 0 {
			restartErr = fmt.Errorf("after the restart, before any client: %v %v", l, err)
		}
	})
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	got := fmt.Sprintf("%d/3 transfers cut, %d leftovers swept", failed, leftovers)
	if leftovers == 0 {
		return got, errors.New("SIGKILL left no mapping: the entry proves nothing")
	}
	return got, restartErr
}

func serverDown(h *harness, e *env) (string, error) {
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	if _, err := c.expect("PASV", "227"); err != nil {
		return "", err
	}
	h.ftpd.kill()
	defer h.startFTPD()
	last, err := c.untilClosed(5 * time.Second)
	if err != nil || !strings.HasPrefix(last, "421") {
		return last, fmt.Errorf("the open session: %q, %v; want 421", last, err)
	}
	c2, err := h.dialFrom(e.from)
	if err != nil {
		return last, err
	}
	defer c2.close()
	last2, err := c2.untilClosed(5 * time.Second)
	if err != nil || !strings.HasPrefix(last2, "421") {
		return last, fmt.Errorf("a new session: %q, %v; want 421", last2, err)
	}
	return "421, 421 (new session)", nil
}

func serverStalling(h *harness, e *env) (string, error) {
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	pid := h.ftpd.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return "", err
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	t0 := time.Now()
	if err := c.send("PASV\r\n"); err != nil {
		return "", err
	}
	last, err := c.untilClosed(idleTimeout + replyGrace + 3*time.Second)
	if err != nil {
		return last, err
	}
	if !strings.HasPrefix(last, "421") {
		return last, fmt.Errorf("closed with %q, want 421", last)
	}
	return fmt.Sprintf("421 after %.1fs, closed", time.Since(t0).Seconds()), nil
}

// withArgs replaces one flag's value in args, or adds it.
func withArgs(args []string, kv ...string) []string {
	out := append([]string{}, args...)
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for j := range out {
			if out[j] == kv[i] && j+1 < len(out) {
				out[j+1], found = kv[i+1], true
			}
		}
		if !found {
			out = append(out, kv[i], kv[i+1])
		}
	}
	return out
}

func xtablesLockHeld(h *harness, e *env) (string, error) {
	if _, err := os.Stat("/usr/sbin/iptables-legacy"); err != nil {
		return "", errors.New("iptables-legacy not installed")
	}
	lock := filepath.Join(h.t.TempDir(), "xtables.lock")
	h.startPasvgate([]string{"XTABLES_LOCKFILE=" + lock}, withArgs(h.baseArgs(),
		"--backend", "iptables", "--iptables-path", "iptables-legacy", "--rule-timeout", "1s")...)
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	f, err := os.OpenFile(lock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	t0 := time.Now()
	r, err := c.replyWithinCmd("PASV", 10*time.Second)
	took := time.Since(t0)
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if err != nil || !strings.HasPrefix(r, "425") {
		return r, fmt.Errorf("PASV with the lock held: %q, %v; want 425", r, err)
	}
	got := fmt.Sprintf("425 after %.1fs", took.Seconds())
	if _, err := c.expect("PASV", "227"); err != nil {
		return got, fmt.Errorf("once the lock is free: %w", err)
	}
	return got + ", then 227", nil
}

func nftFlushMidTransfer(h *harness, e *env) (string, error) {
	var ferr error
	errs := h.downloadsPaused(e.from, 1, func() {
		_, ferr = h.lab.GW.Run(context.Background(), "nft", "flush", "ruleset")
	})
	if ferr != nil {
		return "", ferr
	}
	// The NAT hooks go with the last nat chain, so the kernel stops
	// translating the flow in flight: nothing pasvgate can keep. What it
	// must do is build its table again for the next transfer.
	inFlight := "in flight ok"
	if errs[0] != nil {
		inFlight = "in flight cut"
	}
	if err := h.download(e.from, nil); err != nil {
		return inFlight, fmt.Errorf("the next transfer: %w", err)
	}
	return inFlight + ", next ok", nil
}

func iptablesFlushMidTransfer(h *harness, e *env) (string, error) {
	h.startPasvgate(nil, withArgs(h.baseArgs(), "--backend", "iptables", "--iptables-path", "iptables-nft")...)
	var ferr error
	errs := h.downloadsPaused(e.from, 1, func() {
		for _, t := range []string{"filter", "nat"} {
			if _, err := h.lab.GW.Run(context.Background(), "iptables-nft", "-t", t, "-F"); err != nil {
				ferr = err
			}
		}
	})
	if ferr != nil {
		return "", ferr
	}
	if errs[0] != nil {
		return "transfer cut", fmt.Errorf("the transfer in flight: %w", errs[0])
	}
	if err := h.download(e.from, nil); err != nil {
		return "transfer ok", fmt.Errorf("the next transfer: %w", err)
	}
	return "transfer ok, next ok", nil
}

func publicAddrChanged(h *harness, e *env) (string, error) {
	gw := h.lab.GW
	if _, err := gw.Run(context.Background(), "ip", "link", "show", "wan0"); err != nil {
		for _, args := range [][]string{
			{"ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p"},
			{"ip", "link", "set", "wan0", "up"}, {"ip", "link", "set", "wan0p", "up"},
			{"ip", "addr", "add", "203.0.113.60/32", "dev", "wan0"},
		} {
			if _, err := gw.Run(context.Background(), args[0], args[1:]...); err != nil {
				return "", err
			}
		}
	}
	h.startPasvgate(nil, withArgs(h.baseArgs(), "--public-iface", "wan0")...)
	var ferr error
	errs := h.downloadsPaused(e.from, 1, func() {
		for _, args := range [][]string{
			{"ip", "addr", "add", "203.0.113.61/32", "dev", "wan0"},
			{"ip", "addr", "del", "203.0.113.60/32", "dev", "wan0"},
		} {
			if _, err := gw.Run(context.Background(), args[0], args[1:]...); err != nil {
				ferr = err
			}
		}
	})
	if ferr != nil {
		return "", ferr
	}
	if errs[0] != nil {
		return "transfer cut", fmt.Errorf("the transfer in flight: %w", errs[0])
	}
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	var r string
	for i := 0; i < 50; i++ {
		if r, err = c.cmd("PASV"); err == nil && strings.Contains(r, "(203,0,113,61,") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(r, "(203,0,113,61,") {
		return "transfer ok", fmt.Errorf("the next 227 %q, want 203.0.113.61", r)
	}
	if err := h.download(e.from, nil); err != nil {
		return "transfer ok", fmt.Errorf("a transfer on the new address: %w", err)
	}
	return "transfer ok, next 227 .61", nil
}

func sighupUnderLoad(h *harness, e *env) (string, error) {
	conf := filepath.Join(h.t.TempDir(), "pasvgate.yaml")
	write := func(level string) error {
		body := fmt.Sprintf("listen: [%s]\nupstream: %s:21\nbackend: nftables\ndata-ports: %s\nmetrics: 127.0.0.1:9121\n"+
			"idle-timeout: %s\nlogin-timeout: %s\nlog-level: %s\n", pgListen, serverAddr, dataPorts, idleTimeout, loginTimeout, level)
		return os.WriteFile(conf, []byte(body), 0o600)
	}
	if err := write("info"); err != nil {
		return "", err
	}
	p := h.startPasvgate(nil, "run", "--config", conf)
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 3; j++ {
				errs <- h.download(e.from, nil)
			}
		}()
	}
	for i := 0; i < 10; i++ {
		_ = write([]string{"info", "debug"}[i%2])
		_ = p.cmd.Process.Signal(syscall.SIGHUP)
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	failed := 0
	var first error
	for err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	reloads := strings.Count(p.output(), "msg=reloaded")
	got := fmt.Sprintf("%d/9 ok, %d reloads", 9-failed, reloads)
	if first != nil {
		return got, first
	}
	if reloads == 0 {
		return got, errors.New("no reload was logged")
	}
	return got, nil
}

// nftBatchRefused makes the kernel refuse pasvgate's install batch: with
// one public data port, an element of another process already holds the
// dnat_map key the client's mapping needs.
func nftBatchRefused(h *harness, e *env) (string, error) {
	// The one data port is the entry's alone while it runs.
	if h.canary != nil {
		h.canary.hold.Lock()
		defer h.canary.hold.Unlock()
	}
	p := h.startPasvgate(nil, withArgs(h.baseArgs(), "--data-ports", "40000-40000")...)
	key := e.from + " . " + publicAddr + " . 40000"
	if _, err := h.lab.GW.Run(context.Background(), "nft", "add", "element", "ip", "pasvgate", "dnat_map",
		"{ "+key+` timeout 1h comment "not pasvgate's" : 192.0.2.99 . 21 }`); err != nil {
		return "", err
	}
	deleted := false
	del := func() {
		if !deleted {
			deleted = true
			_, _ = h.lab.GW.Run(context.Background(), "nft", "delete", "element", "ip", "pasvgate", "dnat_map", "{ "+key+" }")
		}
	}
	defer del()
	c, err := loggedIn(h, e)
	if err != nil {
		return "", err
	}
	defer c.close()
	r, err := c.cmd("PASV")
	if err != nil || !strings.HasPrefix(r, "425") {
		return r, fmt.Errorf("PASV with the key taken: %q, %v; want 425", r, err)
	}
	logged := false
	for i := 0; i < 100 && !logged; i++ {
		logged = strings.Contains(p.output(), "mapping install failed")
		time.Sleep(20 * time.Millisecond)
	}
	if !logged {
		return "425", errors.New("the refused install was not logged")
	}
	if _, err := c.expect("NOOP", "200"); err != nil {
		return "425", err
	}
	del()
	// The port comes back once the refused install is rolled back.
	for i := 0; i < 100; i++ {
		if r, err = c.cmd("PASV"); err != nil || strings.HasPrefix(r, "227") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || isPublic227(r) != nil {
		return "425", fmt.Errorf("PASV once the key is free: %q, %v", r, err)
	}
	return "425, 200, then 227", nil
}
