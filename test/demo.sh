#!/usr/bin/env bash
# demo.sh is `make demo`: pasvgate's main job on a built-in lab.
#
# It builds three network namespaces (documentation addresses only):
#   client  203.0.113.10            no route to the server's network
#   gw      203.0.113.1, .2 public; 192.0.2.1 private; FORWARD policy DROP
#   server  192.0.2.10              the built-in FTP server, advertising
#                                   its private address in 227 replies
# and runs pasvgate in gw (--public-addr 203.0.113.2, while the client dials
# 203.0.113.1, so a client that ignored the 227 address would fail). curl,
# told to trust the 227 address, downloads a file through it. The demo
# prints the backend --backend auto chose (nftables: pasvgate adds the
# accept for its conntrack mark to the gw's FORWARD itself), the server's
# 227, the rewritten one the client saw, the mapping while it existed, and
# that it is gone afterwards. Then it tears the lab
# down. It changes nothing outside its namespaces.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: run as root (it creates network namespaces)" >&2
	exit 1
fi
for tool in ip iptables-nft curl; do
	if ! command -v "$tool" >/dev/null; then
		echo "demo: installing iptables, iproute2 and curl"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 curl >/dev/null
		break
	fi
done

top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
id=$$
C=pgdemo-$id-c G=pgdemo-$id-g S=pgdemo-$id-s
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for ns in "$C" "$G" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "building pasvgate and the built-in FTP server"
(cd "$top" && CGO_ENABLED=0 go build -o "$work/pasvgate" ./cmd/pasvgate &&
	CGO_ENABLED=0 go build -o "$work/testftpd" ./test/ftpd/cmd/testftpd)

step "building the lab: client -- gw -- server"
for ns in "$C" "$G" "$S"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add pgd$id-c type veth peer name pgd$id-gc
ip link add pgd$id-s type veth peer name pgd$id-gs
ip link set pgd$id-c netns "$C" name eth0
ip link set pgd$id-gc netns "$G" name pub0
ip link set pgd$id-s netns "$S" name eth0
ip link set pgd$id-gs netns "$G" name priv0
ip -n "$C" addr add 203.0.113.10/24 dev eth0
ip -n "$C" link set eth0 up
ip -n "$C" route add default via 203.0.113.1
ip -n "$G" addr add 203.0.113.1/24 dev pub0
ip -n "$G" addr add 203.0.113.2/24 dev pub0
ip -n "$G" addr add 192.0.2.1/24 dev priv0
ip -n "$G" link set pub0 up
ip -n "$G" link set priv0 up
ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$G" iptables-nft -P FORWARD DROP
ip -n "$S" addr add 192.0.2.10/24 dev eth0
ip -n "$S" link set eth0 up
ip -n "$S" route add default via 192.0.2.1
# A slow client link and small TCP buffers (both per namespace) make the
# transfer last, so that the server's final reply, and with it the end of
# the mapping, comes when the data has really crossed: otherwise the server
# hands 1 MiB to its socket buffers and says 226 at once.
ip netns exec "$C" tc qdisc add dev eth0 root tbf rate 2mbit burst 32kbit latency 400ms
ip netns exec "$G" tc qdisc add dev pub0 root tbf rate 2mbit burst 32kbit latency 400ms
for ns in "$C" "$S"; do
	ip netns exec "$ns" sysctl -qw net.ipv4.tcp_rmem="4096 16384 65536" net.ipv4.tcp_wmem="4096 16384 65536"
done

mkdir -p "$work/root"
head -c 1048576 /dev/urandom >"$work/root/demo.bin"

step "starting the built-in FTP server on 192.0.2.10:21 (advertises 192.0.2.10)"
ip netns exec "$S" "$work/testftpd" --listen 192.0.2.10:21 --public-host 192.0.2.10 \
	--passive-ports 30000-30099 --root "$work/root" >"$work/ftpd.log" 2>&1 &
pids+=($!)

step "starting pasvgate on 203.0.113.1:21, public address 203.0.113.2"
ip netns exec "$G" "$work/pasvgate" run --listen 203.0.113.1:21 --upstream 192.0.2.10:21 \
	--public-addr 203.0.113.2 --data-ports 40000-40999 --iptables-path iptables-nft \
	--log-level debug >"$work/pasvgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	grep -q "pasvgate started" "$work/pasvgate.log" && grep -q "listening on" "$work/ftpd.log" && break
	sleep 0.1
done
grep -q "pasvgate started" "$work/pasvgate.log" || { cat "$work/pasvgate.log"; exit 1; }
# --backend auto (the default): the gw's FORWARD policy is DROP, with no rule
# for pasvgate; it takes the nftables backend all the same, and adds the
# accept for its conntrack mark to FORWARD itself (--host-firewall auto).
printf 'backend:                  %s\n' "$(grep -o 'msg="backend chosen".*' "$work/pasvgate.log" | sed 's/^msg="backend chosen" //' | cut -c1-200)"
hostfw=$(ip netns exec "$G" iptables-nft -S FORWARD | grep -- '-j PASVGATE-HOSTFW' || true)
printf 'host firewall:            %s\n' "${hostfw:-(no accept added)}"

step "the client downloads 1 MiB over PASV, trusting the 227 address (over a 2 Mbit/s link, so the rule can be seen)"
ip netns exec "$C" curl -sS -v --disable-epsv --no-ftp-skip-pasv-ip --max-time 40 \
	-o "$work/got.bin" ftp://anonymous:demo@203.0.113.1/demo.bin 2>"$work/curl.log" &
curl_pid=$!
pids+=($curl_pid)
rule=""
for _ in $(seq 500); do
	rule=$(ip netns exec "$G" "$work/pasvgate" rules list --backend nftables 2>/dev/null | sed -n 2p || true)
	[ -n "$rule" ] && break
	sleep 0.02
done
wait "$curl_pid"

server227=$(sed -n 's/.*server_reply="\([^"]*\)".*/\1/p' "$work/pasvgate.log" | head -1)
client227=$(grep -o '< 227 .*' "$work/curl.log" | head -1 | sed 's/^< //')
connected=$(grep -o 'Connecting to 203.0.113.2 ([^)]*) port [0-9]*' "$work/curl.log" | head -1 || true)

printf '\nserver said:              %s\n' "$server227"
printf 'client saw (rewritten):   %s\n' "$client227"
printf 'curl:                     %s\n' "${connected:-(see $work/curl.log)}"
printf 'mapping while it lived:   %s\n' "$(echo "${rule:-(not seen)}" | tr -s ' ')"

if cmp -s "$work/root/demo.bin" "$work/got.bin"; then
	echo "download:                 1 MiB, identical to the server's file"
else
	echo "download:                 FAILED: the file differs"
	exit 1
fi

sleep 0.5
left=$(ip netns exec "$G" "$work/pasvgate" rules list --iptables-path iptables-nft)
printf 'after the transfer:       `pasvgate rules list` %s\n' \
	"$([ -z "$left" ] && echo "is empty" || echo "shows: $left")"

grep -q 'msg="backend chosen" backend=nftables' "$work/pasvgate.log" && [ -n "$hostfw" ] &&
	[ -n "$rule" ] && [ -z "$left" ] && [[ "$client227" == *"203,0,113,2"* ]] &&
	[[ "$server227" == *"192,0,2,10"* ]] || { echo "demo: FAILED"; exit 1; }

step "stopping pasvgate and tearing the lab down"
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true
echo "demo: OK"
