#!/usr/bin/env bash
# WAN benchmark: does a raft-like ping-pong keep its round trip while block sync fills the link?
#
#   bench/wan.sh [ROUNDS]        (default 3; root: network namespaces, veth, tc)
#   RATE=1gbit bench/wan.sh      (default 100mbit; RATE=none: no shaping, for throughput)
#   SECONDS_PER_RUN=8 (default)   PATHS="direct_bbr fedgw_tcp" (default: all six)
#   BENCH_SS=/tmp/ss: `ss -tinm` at site A in the middle of each loaded run, to /tmp/ss.PATH
#   PING_INTERVAL=0.02: seconds between pings (default 0.01, 100/s)
#
# Two network namespaces, fwwan-a (site A: org1's gateway and the clients) and fwwan-b (site
# B: org2's gateway and the "node"), joined by a veth pair shaped with `tc tbf` to RATE in
# both directions (burst 32 kB, 20 ms of queue: what a WAN link's bottleneck buffers). The
# node is two Python servers in fwwan-b: a sink on its p2p port (30303) and an echo on its
# raft port (50400). Per round and path, in rotating order:
#   idle   100 pings/s of 64 bytes through the raft port, nothing else on the link
#   loaded the same while one bulk TCP stream through the p2p port fills the link (A -> B,
#          the ping's request direction); also the bulk stream's rate
# Paths: direct_cubic / direct_bbr (the client dials the node over the shaped link itself,
# the anchor), fedgw_tcp / fedgw_quic (through the gateways, [tunnel] congestion = bbr, the
# default), fedgw_tcp_cubic / fedgw_quic_cubic (the same with congestion = cubic), fedgw_tcp_one
# (TCP+TLS with [tunnel] consensus_link = false: one connection per peer carries every class;
# the others keep raft streams on a consensus side link). Only the paths asked for are set up.
# Prints per path the ping's p50 / p99 / p99.9 / max round trip and the bulk rate as a share of
# RATE, medians over the rounds. Goals: loaded p99 <= idle p99 + 10 ms, p99.9 <= 100 ms, no
# ping over 250 ms, bulk >= 90 % of the link.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rate=${RATE:-100mbit}
secs=${SECONDS_PER_RUN:-8}
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
work=$(mktemp -d /tmp/fedgw-wan.XXXXXX)
A=fwwan-a
B=fwwan-b
inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }

cleanup() {
  for f in "$work"/*/org*/run.json; do
    [[ -f $f ]] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$f")" 2>/dev/null || true
  done
  [[ -f $work/node.pid ]] && kill "$(cat "$work/node.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${FEDGW_BIN:-} ]]; then
  fedgw=$FEDGW_BIN      # a smoke test with another build
else
  echo "building fedgw (release)..."
  cargo build --release -q -p fedgw-gateway
  fedgw=$PWD/target/release/fedgw
fi

# the link
ip netns del "$A" 2>/dev/null || true
ip netns del "$B" 2>/dev/null || true
ip netns add "$A"
ip netns add "$B"
ip link add fwwan0 netns "$A" type veth peer name fwwan1 netns "$B"
inA ip addr add 10.77.0.1/24 dev fwwan0
inB ip addr add 10.77.0.2/24 dev fwwan1
for ns in "$A" "$B"; do ip netns exec "$ns" ip link set lo up; done
inA ip link set fwwan0 up
inB ip link set fwwan1 up
if [[ $rate == none ]]; then
  rate_bps=1e9      # shares are then of 1 Gbit/s
else
  inA tc qdisc add dev fwwan0 root tbf rate "$rate" burst 32kb latency 20ms
  inB tc qdisc add dev fwwan1 root tbf rate "$rate" burst 32kb latency 20ms
  rate_bps=$(python3 -c "
import re,sys
m = re.fullmatch(r'(\d+)([kmg]?)bit', sys.argv[1].lower())
print(int(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2)])" "$rate")
fi

# the node at site B: sink on 30303, echo on 50400, on every address of its namespace
cat >"$work/node.py" <<'EOF'
import socket, threading
def serve(port, handle):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port))
    l.listen(64)
    while True:
        c, _ = l.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(c,), daemon=True).start()
def sink(c):
    while c.recv(1 << 20):
        pass
    c.close()
def echo(c):
    while True:
        b = c.recv(4096)
        if not b:
            break
        c.sendall(b)
    c.close()
threading.Thread(target=serve, args=(30303, sink), daemon=True).start()
serve(50400, echo)
EOF
ip netns exec "$B" python3 "$work/node.py" &
echo $! >"$work/node.pid"

# the load: optional bulk stream through the p2p port, fixed-rate 64-byte pings through the raft
# port; prints "rtts_ms..." on one line and the bulk rate in bit/s on the next
cat >"$work/load.py" <<'EOF'
import os, socket, sys, threading, time
host, p2p, raft, secs, cc, bulk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"
def dial(port):
    s = socket.socket()
    if cc != "-":
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(30)
    s.connect((host, port))
    return s
sent = [0]
stop = threading.Event()
def push():
    s = dial(p2p)
    block = b"\0" * (256 * 1024)
    start = time.monotonic()
    while not stop.is_set():
        sent[0] += s.send(block)
    sent.append(time.monotonic() - start)
    s.close()
if bulk:
    t = threading.Thread(target=push, daemon=True)
    t.start()
    time.sleep(1.5)                     # the link is full before the first ping
    base = sent[0]
    t0 = time.monotonic()
ping = dial(raft)
msg = b"x" * 64
rtts = []
end = time.monotonic() + secs
nxt = time.monotonic()
interval = float(os.environ.get("PING_INTERVAL", "0.01"))
while time.monotonic() < end:
    nxt += interval
    t = time.monotonic()
    ping.sendall(msg)
    got = 0
    while got < 64:
        b = ping.recv(64 - got)
        if not b:
            raise SystemExit("echo closed")
        got += len(b)
    rtts.append((time.monotonic() - t) * 1000)
    delay = nxt - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    else:
        nxt = time.monotonic()          # a late reply: the next ping goes at once
bps = 0
if bulk:
    bps = (sent[0] - base) * 8 / (time.monotonic() - t0)
    stop.set()
print(" ".join(f"{r:.3f}" for r in rtts))
print(f"{bps:.0f}")
EOF

wait_file() { # file
  for _ in $(seq 600); do [[ -s $1 ]] && return 0; sleep 0.05; done
  echo "timed out waiting for $1" >&2
  return 1
}
start_gw() { # ns dir
  rm -f "$2/run.json"
  RUST_LOG=warn ip netns exec "$1" "$fedgw" run --data-dir "$2" >"$2.log" 2>&1 &
  wait_file "$2/run.json"
}
set_congestion() { # dir cc consensus_link
  python3 - "$1/fedgw.toml" "$2" "$3" <<'EOF'
import re, sys
path, cc, side = sys.argv[1], sys.argv[2], sys.argv[3]
t = open(path).read()
t, n = re.subn(r'(?m)^congestion = .*$', f'congestion = "{cc}"', t)
assert n == 1, "no tunnel.congestion in fedgw.toml"
t, n = re.subn(r'(?m)^consensus_link = .*$', f'consensus_link = {side}', t)
assert n == 1, "no tunnel.consensus_link in fedgw.toml"
open(path, "w").write(t)
EOF
}

# a two-org federation across the link; prints the node's local address at site A
federation() { # name transport congestion port pool_octet consensus_link
  local name=$1 transport=$2 cc=$3 port=$4 o=$5 side=$6 d=$work/$1
  local common=(--dns 127.0.0.1:0 --metrics 127.0.0.1:0 --tunnel-transport "$transport")
  inA "$fedgw" init --consortium wan --domain wan.test --org org1 --data-dir "$d/org1" \
    --listen "10.77.0.1:$port" --advertise "10.77.0.1:$port" --address-pool "127.$o.1.0/24" "${common[@]}" >/dev/null
  set_congestion "$d/org1" "$cc" "$side"
  start_gw "$A" "$d/org1"
  local token
  token=$("$fedgw" invite org2 --data-dir "$d/org1")
  inB "$fedgw" join "$token" --org org2 --data-dir "$d/org2" --listen "10.77.0.2:$port" \
    --advertise "10.77.0.2:$port" --address-pool "127.$o.2.0/24" --allow-loopback-targets "${common[@]}" >/dev/null
  set_congestion "$d/org2" "$cc" "$side"
  start_gw "$B" "$d/org2"
  local id
  # a fresh secp256k1 public key: gateways refuse ids that are no point on the curve
  id=$(openssl ecparam -name secp256k1 -genkey -noout | openssl ec -pubout -outform DER 2>/dev/null |
    tail -c 64 | od -An -tx1 | tr -d ' \n')
  "$fedgw" node add node1 --data-dir "$d/org2" \
    --enode "enode://$id@127.0.0.1:30303?discport=0&raftport=50400" >/dev/null
  local ip=""
  for _ in $(seq 400); do
    ip=$("$fedgw" nodes --data-dir "$d/org1" --json | python3 -c '
import json,sys
for n in json.load(sys.stdin):
    if n.get("org")=="org2" and n.get("local_ip"): print(n["local_ip"])' 2>/dev/null || true)
    [[ -n $ip ]] && inA bash -c "exec 3<>/dev/tcp/$ip/50400" 2>/dev/null && break
    sleep 0.05
  done
  [[ -n $ip ]] || { echo "no local address for node1 at $name" >&2; return 1; }
  echo "$ip"
}

declare -A host cc
host[direct_cubic]=10.77.0.2; cc[direct_cubic]=cubic
host[direct_bbr]=10.77.0.2; cc[direct_bbr]=bbr
read -r -a paths <<<"${PATHS:-direct_cubic direct_bbr fedgw_tcp fedgw_quic fedgw_tcp_cubic fedgw_quic_cubic}"
n=0
for name in fedgw_tcp fedgw_tcp_cubic fedgw_tcp_one fedgw_quic fedgw_quic_cubic; do
  n=$((n + 1))
  [[ " ${paths[*]} " == *" $name "* ]] || continue
  t=tcp; [[ $name == fedgw_quic* ]] && t=quic
  c=bbr; [[ $name == *_cubic ]] && c=cubic
  side=true; [[ $name == fedgw_tcp_one ]] && side=false
  host[$name]=$(federation "$name" "$t" "$c" $((7443 + n)) $((81 + n)) "$side")
  cc[$name]=-
done
echo "link: $rate both ways; paths: ${paths[*]}"
results=$work/results.tsv
: >"$results"

run() { # path round mode
  local p=$1 out
  if [[ -n ${BENCH_SS:-} && $3 == loaded ]]; then
    # the link sockets' state in the middle of the run (Send-Q, notsent, cwnd, pacing)
    (sleep 4; inA ss -tinm state established >"$BENCH_SS.$p" 2>&1) &
  fi
  out=$(inA python3 "$work/load.py" "${host[$p]}" 30303 50400 "$secs" "${cc[$p]}" "$([[ $3 == loaded ]] && echo 1 || echo 0)")
  python3 - "$2" "$p" "$3" "$rate_bps" >>"$results" <<EOF
import sys
r, p, mode, rate = sys.argv[1:5]
rtts, bps = """$out""".strip().split("\n")
for x in rtts.split():
    print(f"{r}\t{p}\t{mode}\trtt\t{x}")
if mode == "loaded":
    print(f"{r}\t{p}\t{mode}\tbulk_share\t{float(bps) / float(rate)}")
EOF
}

for r in $(seq "$rounds"); do
  k=${#paths[@]}
  order=()
  for i in $(seq 0 $((k - 1))); do order+=("${paths[$(((i + r) % k))]}"); done
  echo "round $r: ${order[*]}"
  for p in "${order[@]}"; do
    run "$p" "$r" idle
    run "$p" "$r" loaded
  done
done

python3 - "$results" "${paths[@]}" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
paths = sys.argv[2:]
rtt = collections.defaultdict(lambda: collections.defaultdict(list))   # (path, mode) -> round -> [ms]
share = collections.defaultdict(list)
for r, p, mode, m, x in rows:
    if m == "rtt":
        rtt[(p, mode)][r].append(float(x))
    else:
        share[p].append(float(x))
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]
def med(p, mode, f):
    return statistics.median(f(v) for v in rtt[(p, mode)].values())
print("\nping round trip, ms (median over rounds of each round's figure); bulk rate as a share of the link")
print(f"{'path':<17} {'idle p50':>8} {'idle p99':>8} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'bulk':>6}  goal (p99 <= idle p99 + 10, p99.9 <= 100, max <= 250, bulk >= 0.90)")
for p in paths:
    i50, i99 = med(p, "idle", lambda v: pct(v, .5)), med(p, "idle", lambda v: pct(v, .99))
    l50, l99, l999 = (med(p, "loaded", lambda v, q=q: pct(v, q)) for q in (.5, .99, .999))
    lmax = max(max(v) for v in rtt[(p, "loaded")].values())
    b = statistics.median(share[p])
    ok = l99 <= i99 + 10 and l999 <= 100 and lmax <= 250 and b >= 0.9
    print(f"{p:<17} {i50:8.2f} {i99:8.2f} {l50:7.2f} {l99:7.2f} {l999:7.2f} {lmax:7.1f} {b:6.2f}  {'met' if ok else 'missed'}")
    print(f"{'':<17} rounds: loaded p99 " + " ".join(f"{pct(v, .99):.1f}" for _, v in sorted(rtt[(p, 'loaded')].items())) + ", bulk " + " ".join(f"{x:.2f}" for x in share[p]))
EOF
