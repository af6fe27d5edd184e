#!/usr/bin/env bash
# Data-plane benchmark: fedgw tunnels against the HAProxy anchors, measured in the same rounds.
#
#   bench/tunnel.sh [ROUNDS]      (default 3; needs root for apt-get the first time;
#                                 FEDGW_BIN=path/to/fedgw measures that build instead)
#
# Paths, all on 127.0.0.1, to the same backends (iperf3 5201, sockperf 11111, nginx 8080):
#   direct      the backend itself
#   hap_plain   haproxy A -> haproxy B -> backend (no TLS)
#   hap_mtls    haproxy A -> TLS 1.3 mTLS -> haproxy B -> backend (a handshake per connection)
#   fedgw_tcp   org1 gateway -> yamux over TCP+TLS 1.3 mTLS -> org2 gateway -> backend
#   fedgw_quic  org1 gateway -> QUIC (TLS 1.3 mTLS) -> org2 gateway -> backend
# The gateways are release builds, one process per org; the backend is registered as a node of
# org2 (p2p = iperf3, raft = sockperf, Tessera = nginx) and reached at its local address at org1.
#
# First, once per transport on the fresh gateways: RSS of both gateways before and after 1000
# idle proxied connections. Then per round, in rotating order: iperf3 single-stream throughput
# (and the CPU seconds per GB of both gateways, or of both HAProxy processes for the pairs),
# sockperf 64-byte ping-pong p50, wrk new connections per second (Connection: close).
# Prints every figure with its anchor, the median of the per-round ratios, and each round's value.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${BENCH_SECONDS:-5}
work=$(mktemp -d /tmp/fedgw-bench.XXXXXX)
anchors=../shared/bench/anchors.sh
[[ -x $anchors ]] || anchors=/work/shared/bench/anchors.sh

cleanup() {
  # every gateway writes its pid into run.json
  for f in "$work"/*/org*/run.json; do
    [[ -f $f ]] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  "$anchors" stop "$work/anchors" >/dev/null 2>&1 || true
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${FEDGW_BIN:-} ]]; then
  fedgw=$(realpath "$FEDGW_BIN")   # another build, e.g. to compare two commits in one boot
else
  echo "building fedgw (release)..."
  cargo build --release -q -p fedgw-gateway
  fedgw=$PWD/target/release/fedgw
fi
"$anchors" start "$work/anchors" >/dev/null
command -v python3 >/dev/null

wait_file() { # file
  for _ in $(seq 300); do [[ -s $1 ]] && return 0; sleep 0.05; done
  echo "timed out waiting for $1" >&2
  return 1
}

start_gw() { # dir
  rm -f "$1/run.json"
  RUST_LOG=warn "$fedgw" run --data-dir "$1" >"$1.log" 2>&1 &
  wait_file "$1/run.json"
}

gw_pid() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$1/run.json"; }

# a two-org federation with one transport; prints "org1pid org2pid local_ip"
federation() { # name transport pool_octet
  local name=$1 transport=$2 o=$3 d=$work/$1
  local common=(--listen 127.0.0.1:0 --dns 127.0.0.1:0 --metrics 127.0.0.1:0 --tunnel-transport "$transport")
  "$fedgw" init --consortium bench --domain bench.test --org org1 --data-dir "$d/org1" \
    --advertise 127.0.0.1:0 --address-pool "127.$o.1.0/24" "${common[@]}" >/dev/null
  start_gw "$d/org1"
  local token
  token=$("$fedgw" invite org2 --data-dir "$d/org1")
  "$fedgw" join "$token" --org org2 --data-dir "$d/org2" --advertise 127.0.0.1:0 \
    --address-pool "127.$o.2.0/24" --allow-loopback-targets "${common[@]}" >/dev/null
  start_gw "$d/org2"
  local id
  # a fresh secp256k1 public key, X and Y (the last 64 bytes of its DER SubjectPublicKeyInfo)
  id=$(openssl ecparam -name secp256k1 -genkey -noout | openssl ec -pubout -outform DER 2>/dev/null |
    tail -c 64 | od -An -tx1 | tr -d ' \n')
  "$fedgw" node add backend --data-dir "$d/org2" \
    --enode "enode://$id@127.0.0.1:5201?discport=0&raftport=11111" \
    --tessera-url http://127.0.0.1:8080 >/dev/null
  local ip=""
  for _ in $(seq 200); do
    ip=$("$fedgw" nodes --data-dir "$d/org1" --json | python3 -c '
import json,sys
for n in json.load(sys.stdin):
    if n.get("org")=="org2" and n.get("local_ip"): print(n["local_ip"])' 2>/dev/null || true)
    [[ -n $ip ]] && (exec 3<>"/dev/tcp/$ip/5201") 2>/dev/null && break
    sleep 0.05
  done
  [[ -n $ip ]] || { echo "no local address for the backend at $name" >&2; return 1; }
  echo "$(gw_pid "$d/org1") $(gw_pid "$d/org2") $ip"
}

# refuse to measure through someone else's listeners on the same local addresses
if pgrep -f "fedgw run --data-dir /tmp/fedgw-bench" >/dev/null; then
  echo "another bench's gateways are still running; stop them first" >&2
  exit 1
fi
federation tcp tcp 78 >"$work/tcp.out"
federation quic quic 79 >"$work/quic.out"
read -r tcp1 tcp2 tcp_ip <"$work/tcp.out"
read -r quic1 quic2 quic_ip <"$work/quic.out"
echo "fedgw_tcp at $tcp_ip (pids $tcp1 $tcp2), fedgw_quic at $quic_ip (pids $quic1 $quic2)"

cpu_ticks() { # pids...: utime+stime of every process, in clock ticks
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
hz=$(getconf CLK_TCK)

declare -A addr=(
  [direct]=127.0.0.1 [hap_plain]=127.0.0.1 [hap_mtls]=127.0.0.1
  [fedgw_tcp]=$tcp_ip [fedgw_quic]=$quic_ip
)
declare -A port_iperf=([direct]=5201 [hap_plain]=6006 [hap_mtls]=6004 [fedgw_tcp]=5201 [fedgw_quic]=5201)
declare -A port_sock=([direct]=11111 [hap_plain]=6106 [hap_mtls]=6104 [fedgw_tcp]=11111 [fedgw_quic]=11111)
declare -A port_http=([direct]=8080 [hap_plain]=6206 [hap_mtls]=6204 [fedgw_tcp]=8080 [fedgw_quic]=8080)
# the HAProxy pairs share processes A and B: their CPU per GB is the anchor for ours
anchor_pid() { awk -v n="$1" '$1 == n {print $2}' "$work/anchors/pids"; }
hap_pair="$(anchor_pid haproxyA) $(anchor_pid haproxyB)"
for p in $hap_pair; do
  [[ $(cat "/proc/$p/comm" 2>/dev/null) == haproxy ]] || { echo "no haproxy at pid $p" >&2; exit 1; }
done
declare -A gw_pids=([fedgw_tcp]="$tcp1 $tcp2" [fedgw_quic]="$quic1 $quic2" [hap_mtls]=$hap_pair [hap_plain]=$hap_pair)
paths=(direct hap_plain hap_mtls fedgw_tcp fedgw_quic)
results=$work/results.tsv
: >"$results"

throughput() { # path round
  local p=$1 before after out bps bytes
  before=$(cpu_ticks ${gw_pids[$p]:-})
  out=$(iperf3 -c "${addr[$p]}" -p "${port_iperf[$p]}" -t "$secs" -J)
  after=$(cpu_ticks ${gw_pids[$p]:-})
  read -r bps bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"], e["bytes"])' <<<"$out")
  echo -e "$2\t$p\tgbps\t$(python3 -c "print($bps/1e9)")" >>"$results"
  if [[ -n ${gw_pids[$p]:-} ]]; then
    echo -e "$2\t$p\tcpu_s_per_gb\t$(python3 -c "print(($after-$before)/$hz/($bytes/1e9))")" >>"$results"
  fi
}

pingpong() { # path round
  local p=$1 out
  out=$(sockperf ping-pong --tcp -i "${addr[$p]}" -p "${port_sock[$p]}" -m 64 -t "$secs" 2>&1)
  # "sockperf: ---> percentile 50.000 =   22.913" (usec, one-way = RTT/2)
  local med
  med=$(sed -n 's/.*percentile 50\.000 = *\([0-9.]*\).*/\1/p' <<<"$out" | head -1)
  echo -e "$2\t$p\trtt_p50_us\t$(python3 -c "print(2*$med)")" >>"$results"
}

newconns() { # path round
  local p=$1 out
  out=$(wrk -t2 -c32 -d"${secs}s" -H "Connection: close" "http://${addr[$p]}:${port_http[$p]}/")
  local rps
  rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
  echo -e "$2\t$p\tconns_per_s\t$rps" >>"$results"
}

rss_kib() { # pids...
  local t=0
  for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
  echo "$t"
}

idle_memory() { # path
  local p=$1
  python3 - "${addr[$p]}" "${port_http[$p]}" "$work/hold.$p" <<'EOF' &
import socket, sys, os, time
host, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns = []
for _ in range(1000):
    s = socket.create_connection((host, port))
    conns.append(s)
# one byte each way proves every connection is spliced end to end before measuring
for s in conns:
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
for s in conns:
    s.recv(64)
open(flag, "w").write("ready")
while os.path.exists(flag):
    time.sleep(0.05)
EOF
  local holder=$!
  local before after
  before=$(rss_kib ${gw_pids[$p]})
  wait_file "$work/hold.$p"
  # let allocator and tunnel state settle on the idle connections
  sleep 1
  after=$(rss_kib ${gw_pids[$p]})
  rm -f "$work/hold.$p"
  wait "$holder" || true
  echo -e "1\t$p\tidle_kib_per_conn\t$(python3 -c "print(max(0, $after-$before)/1000)")" >>"$results"
}
# first, while the gateways are fresh: RSS only grows where nothing freed could be reused
idle_memory fedgw_quic
idle_memory fedgw_tcp

for r in $(seq "$rounds"); do
  # rotate the order every round
  n=${#paths[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${paths[$(((i + r) % n))]}"); done
  echo "round $r: ${order[*]}"
  for p in "${order[@]}"; do throughput "$p" "$r"; done
  for p in "${order[@]}"; do pingpong "$p" "$r"; done
  for p in "${order[@]}"; do newconns "$p" "$r"; done
done


python3 - "$results" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
v = collections.defaultdict(dict)            # (metric, path) -> {round: value}
for r, p, m, x in rows:
    v[(m, p)][int(r)] = float(x)
def med(m, p):
    d = v.get((m, p), {})
    return statistics.median(d.values()) if d else float("nan")
def per_round(m, a, b):
    """the ratio a/b of metric m in every round both were measured in, in round order"""
    return [v[(m, a)][r] / v[(m, b)][r] for r in sorted(v.get((m, a), {})) if r in v.get((m, b), {})]
def ratio(m, a, b):
    d = per_round(m, a, b)
    return statistics.median(d) if d else float("nan")
def rounds(d):
    return "  rounds " + " ".join(f"{x:.2f}" for x in d)
print("\nmedians per path (per-round values in the same rounds)")
for m, unit in [("gbps", "Gbit/s"), ("rtt_p50_us", "us RTT p50"), ("conns_per_s", "new conns/s")]:
    print(f"  {m:<12} " + "  ".join(f"{p}={med(m, p):.2f}" for p in ["direct", "hap_plain", "hap_mtls", "fedgw_tcp", "fedgw_quic"]) + f"  ({unit})")
best = "fedgw_tcp" if med("gbps", "fedgw_tcp") >= med("gbps", "fedgw_quic") else "fedgw_quic"
def added_per_round(path):
    return [(v[("rtt_p50_us", path)][r] - v[("rtt_p50_us", "direct")][r]) /
            max(1e-9, v[("rtt_p50_us", "hap_mtls")][r] - v[("rtt_p50_us", "direct")][r])
            for r in sorted(v.get(("rtt_p50_us", path), {}))]
def added_ratio(path):
    d = added_per_round(path)
    return statistics.median(d) if d else float("nan")
print("\nfigure                                      value      anchor                 ratio   goal")
print(f"throughput {best:<11} vs hap_mtls         {med('gbps', best):6.2f} Gb/s  {med('gbps','hap_mtls'):6.2f} Gb/s            {ratio('gbps', best, 'hap_mtls'):5.2f}x  >= 1.3 (must >= 1.0)" + rounds(per_round('gbps', best, 'hap_mtls')))
for p in ["fedgw_tcp", "fedgw_quic"]:
    print(f"CPU per GB {p:<11} (both gateways)    {med('cpu_s_per_gb', p):6.2f} s/GB   hap_mtls {med('cpu_s_per_gb', 'hap_mtls'):4.2f} s/GB       {ratio('cpu_s_per_gb', p, 'hap_mtls'):5.2f}x  <= 1.2 s/GB" + rounds([v[('cpu_s_per_gb', p)][r] for r in sorted(v.get(('cpu_s_per_gb', p), {}))]) + " s/GB")
print(f"QUIC vs TCP+TLS tunnel throughput           {med('gbps','fedgw_quic'):6.2f} Gb/s  {med('gbps','fedgw_tcp'):6.2f} Gb/s (tcp)      {ratio('gbps','fedgw_quic','fedgw_tcp'):5.2f}x  >= 0.6 (must >= 0.4)" + rounds(per_round('gbps', 'fedgw_quic', 'fedgw_tcp')))
for p in ["fedgw_tcp", "fedgw_quic"]:
    print(f"added RTT p50 {p:<11} vs hap_mtls      {med('rtt_p50_us', p)-med('rtt_p50_us','direct'):6.1f} us    {med('rtt_p50_us','hap_mtls')-med('rtt_p50_us','direct'):6.1f} us               {added_ratio(p):5.2f}x  <= 1.0" + rounds(added_per_round(p)))
for p in ["fedgw_tcp", "fedgw_quic"]:
    print(f"new conns/s {p:<11} vs hap_plain      {med('conns_per_s', p):8.0f}   {med('conns_per_s','hap_plain'):8.0f} (mtls {med('conns_per_s','hap_mtls'):.0f})    {ratio('conns_per_s', p, 'hap_plain'):5.2f}x  >= 1.0" + rounds(per_round('conns_per_s', p, 'hap_plain')))
for p in ["fedgw_quic", "fedgw_tcp"]:
    print(f"idle memory {p:<11} per connection   {med('idle_kib_per_conn', p):6.2f} KiB (both gateways, 1000 conns)       <= 8 (must <= 16)")
EOF
