package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Files the server serves, relative to its root.
const (
	smallFile  = "small.bin"
	bigFile    = "big.bin"
	uploadFile = "up/upload.bin"
)

// serverFiles writes the small and the big file and the upload directory
// under dir/root, a tmpfs directory, so that the disk is never the
// bottleneck. The root is owned by root and not writable: vsftpd refuses
// to serve a writable anonymous root; the upload directory belongs to the
// anonymous user.
func serverFiles(dir string, smallSize, bigSize int64) (string, error) {
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "up"), 0o755); err != nil {
		return "", err
	}
	// MkdirTemp made dir 0700; vsftpd's session runs as the ftp user.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	if u, err := user.Lookup("ftp"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(filepath.Join(root, "up"), uid, gid); err != nil {
			return "", err
		}
	}
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	for name, size := range map[string]int64{smallFile: smallSize, bigFile: bigSize} {
		f, err := os.OpenFile(filepath.Join(root, name), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			return "", err
		}
		for left := size; left > 0; {
			p := block
			if int64(len(p)) > left {
				p = p[:left]
			}
			// Each MiB starts with its offset, so that no two are alike:
			// a relay that dropped one and repeated another would change
			// the file's hash.
			if len(p) >= 8 {
				binary.BigEndian.PutUint64(p, uint64(size-left))
			}
			n, err := f.Write(p)
			left -= int64(n)
			if err != nil {
				f.Close()
				return "", err
			}
		}
		if err := f.Close(); err != nil {
			return "", err
		}
	}
	return root, nil
}

// vsftpdConfig is vsftpd's configuration for the bench. Anonymous users
// download, upload and delete their uploads; the server listens on the
// server address only, advertises that address in 227 replies (it is the
// control connection's local address, the default), and keeps its
// same-IP data check (pasv_promiscuous=NO, the default), which every
// gateway of the bench passes: pasvgate SNATs the data connection to the
// address its control connection comes from, and the kernel helper and
// plain routing leave the client's address on both.
//
// Anonymous users are asked for a password (no_anon_password=NO), as
// most servers do: mod_proxy (column M) relays the USER and waits for a
// PASS, and does not take a 230 to USER for a login.
//
// isolate and isolate_network are off: with them vsftpd makes new PID and
// network namespaces for every session, which would make the server, not
// the gateway, what a sessions-per-second number measures.
const vsftpdConfig = `listen=YES
listen_ipv6=NO
listen_address=` + serverAddr + `
listen_port=21
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=NO
anon_root=%s
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
anon_mkdir_write_enable=NO
anon_umask=022
pasv_enable=YES
pasv_promiscuous=NO
pasv_min_port=%s
pasv_max_port=%s
port_enable=NO
connect_from_port_20=NO
use_sendfile=YES
xferlog_enable=NO
syslog_enable=NO
dirmessage_enable=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
secure_chroot_dir=/var/run/vsftpd/empty
nopriv_user=nobody
ftp_username=ftp
max_clients=0
max_per_ip=0
idle_session_timeout=120
data_connection_timeout=60
accept_timeout=30
connect_timeout=30
`

// startServer starts the FTP server in the server namespace and waits for
// its greeting. extra is more of vsftpd's configuration (the FTPS bench's).
func startServer(ctx context.Context, l *lab, kind, testftpd, dir, root, extra string) (*proc, error) {
	var p *proc
	var err error
	lo, hi, _ := strings.Cut(serverPorts, "-")
	switch kind {
	case "vsftpd":
		conf := filepath.Join(dir, "vsftpd.conf")
		if err := os.WriteFile(conf, fmt.Appendf(nil, vsftpdConfig+extra, root, lo, hi), 0o600); err != nil {
			return nil, err
		}
		p, err = startProc(l.server, "/usr/sbin/vsftpd", conf)
	case "testftpd":
		if extra != "" {
			return nil, errors.New("the built-in server takes no vsftpd configuration")
		}
		// The built-in server has no same-IP data check; it advertises the
		// server address like vsftpd does.
		p, err = startProc(l.server, testftpd, "--listen", serverAddr+":21", "--public-host", serverAddr,
			"--passive-ports", serverPorts, "--root", root)
	default:
		return nil, fmt.Errorf("unknown server %q: want vsftpd or testftpd", kind)
	}
	if err != nil {
		return nil, err
	}
	if err := waitBanner(ctx, l.server, serverAddr+":21", p); err != nil {
		_ = p.stop(5 * time.Second)
		return nil, err
	}
	return p, nil
}
