package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// instanceSocket is the abstract unix socket a running pasvgate holds. The
// abstract socket namespace belongs to the network namespace, so holding
// it means "pasvgate runs here", and the kernel releases it however the
// process ends, SIGKILL included: there is no stale lock file to remove.
const instanceSocket = "@pasvgate/run"

// claimInstance refuses to start a second pasvgate in this network
// namespace. Its start-up sweep would remove every mapping of the one that
// runs (both own the same chains and tables), cutting off its clients'
// transfers. release gives the namespace back; the process's end does too.
func claimInstance() (release func(), err error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: instanceSocket, Net: "unix"})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("another pasvgate%s runs in this network namespace; its mappings would be swept away: run one pasvgate per network namespace", instanceHolder())
		}
		return nil, fmt.Errorf("claiming this network namespace for pasvgate: %w", err)
	}
	return func() { ln.Close() }, nil
}

// instanceHolder names the process that holds the instance socket, " (pid
// N)", from the credentials the kernel keeps for the listener; empty if it
// cannot be told.
func instanceHolder() string {
	c, err := net.DialTimeout("unix", instanceSocket, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return ""
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", cred.Pid)
}
