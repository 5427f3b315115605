#!/usr/bin/env bash
# install-deps.sh installs the real FTP servers and clients that the netns lab
# (test/lab) and the interop matrix (test/interop) drive. Run it as root on
# Debian 12; it is idempotent, so CI and developers can run it every time.
#
# vsftpd comes as a normal package. pure-ftpd and proftpd-core conflict with it
# (all three provide ftp-server), so their .debs are only unpacked with
# `dpkg -x` under $PASVGATE_TEST_CACHE (default /var/cache/pasvgate-test) and
# run from there; their shared libraries are installed as normal packages.
# proftpd-mod-proxy (the bench's userspace peer, mod_proxy as a reverse
# proxy) and proftpd-mod-crypto (mod_tls, for the interop suite's FTPS
# cells) depend on proftpd-core, so they are unpacked the same way and
# loaded from there.
#
# No FTP service may run on the host itself: the tests start every server
# inside a network namespace. So maintainer scripts are kept from starting
# daemons (policy-rc.d), the boot-time start of vsftpd, keepalived and
# conntrackd is disabled, and the script
# fails if anything listens on port 21 of the host afterwards.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: must run as root" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
CACHE=${PASVGATE_TEST_CACHE:-/var/cache/pasvgate-test}

# Packages installed normally. python3 is Debian's (/usr/bin/python3): the
# interop suite calls it by that path so a pyenv or venv on PATH cannot change
# which ftplib runs.
# keepalived and conntrackd are for test/ha (an active/backup pair of
# gateways): the tests start both inside namespaces, never on the host.
PKGS=(iptables nftables conntrack curl lftp vsftpd python3 tcpdump iproute2 strace libcap2-bin util-linux
	keepalived conntrackd)

# Runtime libraries of the unpacked pure-ftpd, proftpd-core and mod_proxy (their
# Depends lines, less the packaging helpers they only need to install).
LIBS=(libc6 libcap2 libcrypt1 libpam0g libssl3 libsodium23
	libacl1 libhiredis0.14 libidn2-0 libmemcached11 libmemcachedutil2
	libncursesw6 libpcre2-8-0 libpcre2-posix3 libtinfo6 zlib1g libsqlite3-0)

# Unpacked packages: name and the binary that must run from the unpacked tree.
UNPACK=(pure-ftpd:usr/sbin/pure-ftpd proftpd-core:usr/sbin/proftpd
	proftpd-mod-proxy:usr/lib/proftpd/mod_proxy.so
	proftpd-mod-crypto:usr/lib/proftpd/mod_tls.so)

missing=()
for p in "${PKGS[@]}" "${LIBS[@]}"; do
	if ! dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed; then
		missing+=("$p")
	fi
done

need_download=0
for u in "${UNPACK[@]}"; do
	[ -e "$CACHE/${u%%:*}/${u#*:}" ] || need_download=1
done

# apt-get update only when something has to come from the archive and the
# package lists are missing or do not know a wanted package.
if [ "${#missing[@]}" -gt 0 ] || [ "$need_download" = 1 ]; then
	update=0
	if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
		update=1
	else
		for p in "${missing[@]}" pure-ftpd proftpd-core proftpd-mod-proxy proftpd-mod-crypto; do
			if ! apt-cache show "$p" >/dev/null 2>&1; then
				update=1
				break
			fi
		done
	fi
	if [ "$update" = 1 ]; then
		apt-get update -q
	fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
	# A policy-rc.d that answers 101 forbids maintainer scripts to start
	# services. Installed only for this run unless one is already there.
	created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The postinsts of vsftpd, keepalived and conntrackd enable their services
# for the next boot. The host must not serve FTP, and must not speak VRRP or
# sync its connection table with anyone either (the tests run their own
# instances in namespaces), so turn that off (both init systems; harmless
# when already off).
for svc in vsftpd keepalived conntrackd; do
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper disable "$svc.service" >/dev/null 2>&1 || true
	fi
	if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ]; then
		update-rc.d "$svc" disable >/dev/null 2>&1 || true
	fi
done

mkdir -p "$CACHE"
for u in "${UNPACK[@]}"; do
	pkg=${u%%:*}
	bin=${u#*:}
	dest=$CACHE/$pkg
	if [ -e "$dest/$bin" ]; then
		continue
	fi
	tmp=$(mktemp -d)
	# apt fetches as the unprivileged _apt user when it can write there.
	if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
	(cd "$tmp" && apt-get download -q "$pkg")
	rm -rf "$dest.new"
	mkdir -p "$dest.new"
	dpkg -x "$tmp"/"$pkg"_*.deb "$dest.new"
	rm -rf "$tmp" "$dest"
	# Renamed into place only when complete, so a half-unpacked tree is
	# never mistaken for an installed one on the next run.
	mv "$dest.new" "$dest"
done

# The unpacked binaries must find every shared library.
for u in "${UNPACK[@]}"; do
	b=$CACHE/${u%%:*}/${u#*:}
	if ldd "$b" | grep -q 'not found'; then
		echo "install-deps.sh: $b misses libraries:" >&2
		ldd "$b" | grep 'not found' >&2
		exit 1
	fi
done
"$CACHE/pure-ftpd/usr/sbin/pure-ftpd" --help >/dev/null 2>&1 || true
"$CACHE/proftpd-core/usr/sbin/proftpd" -v >/dev/null

# Nothing may serve FTP on the host's own network.
if ss -Hltn 'sport = :21' | grep -q .; then
	echo "install-deps.sh: something listens on port 21 of the host:" >&2
	ss -Hltnp 'sport = :21' >&2
	exit 1
fi

echo "install-deps.sh: ok (unpacked servers under $CACHE)"
