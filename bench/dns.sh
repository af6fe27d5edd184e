#!/usr/bin/env bash
# DNS benchmark: queries per second answered by a fedgw gateway's DNS and by a standalone
# hickory-dns 0.26 authoritative server serving the same records, measured with dnsperf in the
# same run, alternating which goes first each round. Prints each round's figures and ratio, and
# the median ratio (goal: fedgw / hickory-dns >= 1.0, UDP).
#
# usage: bench/dns.sh [ROUNDS] [SECONDS_PER_RUN]     (default 3 rounds of 5 s)
# Installs dnsperf (apt-get) and hickory-dns 0.26.3 (cargo install, into target/bench-tools)
# when missing. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

command -v dnsperf >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf >/dev/null; }
hickory=target/bench-tools/bin/hickory-dns
[[ -x $hickory ]] || cargo install -q hickory-dns --version 0.26.3 --locked --root target/bench-tools
if [[ -n ${FEDGW_BIN:-} ]]; then
  fedgw=$FEDGW_BIN   # another build, e.g. to compare two commits in one boot
else
  cargo build -q --release -p fedgw-gateway
  fedgw=target/release/fedgw
fi

wait_file() { for _ in $(seq 500); do [[ -f $1 ]] && return 0; sleep 0.02; done; echo "timed out waiting for $1" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
net=(--listen 127.0.0.1:0 --metrics 127.0.0.1:0 --dns 127.0.0.1:0)
no_limit() { sed -i 's/^dns_rate_limit_qps = .*/dns_rate_limit_qps = 0/' "$1/fedgw.toml"; }

# two sites: org2 registers the sample nodes, org1 answers them with local addresses
$fedgw init --consortium acme --domain acme.test --org org1 --data-dir "$work/org1" --advertise 127.0.0.1:0 "${net[@]}" >/dev/null
no_limit "$work/org1"
$fedgw run --data-dir "$work/org1" >"$work/org1.log" 2>&1 & pids+=($!)
wait_file "$work/org1/run.json"
token=$($fedgw invite org2 --data-dir "$work/org1" 2>/dev/null)
$fedgw join "$token" --org org2 --data-dir "$work/org2" --advertise 127.0.0.1:0 "${net[@]}" >/dev/null
no_limit "$work/org2"
$fedgw run --data-dir "$work/org2" >"$work/org2.log" 2>&1 & pids+=($!)
wait_file "$work/org2/run.json"
$fedgw node import proto/data/goquorum-static-nodes.raft.json --data-dir "$work/org2" >/dev/null
for _ in $(seq 500); do
  n=$($fedgw nodes --json --data-dir "$work/org1" | python3 -c "import json,sys; print(sum(1 for n in json.load(sys.stdin) if n['local_ip']))")
  [[ $n == 8 ]] && break; sleep 0.02
done
dns=$(field "$work/org1/run.json" dns)
fed_ip=${dns%:*}; fed_port=${dns##*:}

# the same records for hickory-dns, and the query mix
$fedgw nodes --json --data-dir "$work/org1" | python3 -c '
import json, sys
nodes = json.load(sys.stdin)
zone = open(sys.argv[1], "w"); queries = open(sys.argv[2], "w")
zone.write("$ORIGIN acme.test.\n$TTL 5\n@ IN SOA gw-dc1.org1.acme.test. hostmaster.acme.test. 1 60 30 600 5\n@ IN NS gw-dc1.org1.acme.test.\n")
for n in nodes:
    name, ip, enode = n["dns_name"] + ".", n["local_ip"], n["enode"]
    zone.write("%s IN A %s\n%s IN TXT \"enode=%s\"\n" % (name, ip, name, enode))
    for svc, port in n["local_ports"].items():
        zone.write("_%s._tcp.%s IN SRV 0 0 %d %s\n" % (svc, name, port, name))
    queries.write("%s A\n%s A\n%s TXT\n_p2p._tcp.%s SRV\n" % (n["dns_name"], n["dns_name"], n["dns_name"], n["dns_name"]))
' "$work/acme.test.zone" "$work/queries"
hk_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/hickory.toml" <<TOML
listen_addrs_ipv4 = ["127.0.0.1"]
user = "$(id -un)"
group = "$(id -gn)"
[[zones]]
zone = "acme.test"
zone_type = "Primary"
[zones.stores]
type = "file"
zone_path = "acme.test.zone"
TOML
$hickory --config "$work/hickory.toml" --zonedir "$work" --port "$hk_port" --workers 2 -q \
  >"$work/hickory.log" 2>&1 & pids+=($!)
for _ in $(seq 250); do dig @127.0.0.1 -p "$hk_port" +short +time=1 +tries=1 acme.test SOA >/dev/null 2>&1 && break; sleep 0.02; done
# sanity: both answer the same address for node1
a=$(dig @127.0.0.1 -p "$fed_port" +short node1.org2.acme.test A); b=$(dig @127.0.0.1 -p "$hk_port" +short node1.org2.acme.test A)
[[ -n $a && $a == "$b" ]] || { echo "servers disagree: fedgw=$a hickory=$b" >&2; exit 1; }

qps() { dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -l "$secs" -c 8 -Q 1000000 2>/dev/null | awk '/Queries per second/ {print $4}'; }
ratios=()
echo "dns benchmark: $(wc -l <"$work/queries") queries in the mix, $rounds rounds of ${secs}s, dnsperf -c 8, UDP"
for r in $(seq "$rounds"); do
  if ((r % 2)); then f=$(qps "$fed_port"); h=$(qps "$hk_port"); else h=$(qps "$hk_port"); f=$(qps "$fed_port"); fi
  ratio=$(python3 -c "print(f'{$f / $h:.2f}')")
  ratios+=("$ratio")
  printf 'round %d: fedgw %10.0f qps   hickory-dns %10.0f qps   ratio %s\n' "$r" "$f" "$h" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median ratio fedgw / hickory-dns: $median (goal >= 1.0)"
