#!/usr/bin/env bash
# Recovery benchmark: how soon proxied traffic flows again after a peer gateway restarts.
#
#   bench/recovery.sh [KILLS]      (default 5; FEDGW_BIN=path/to/fedgw skips the release build)
#
# Two gateways on 127.0.0.1 (org1 founds, org2 joins), a TCP echo server registered as org2's
# node1, reached through org1's local address for it. Per transport (QUIC, then TCP+TLS), KILLS
# times: org2's gateway is stopped, down for 2 s, and started again on the same port; the time
# from its readiness (run.json written) to the first echo through org1 that succeeds is
# measured, with a new connection per attempt. SIGKILL (a crash) is measured against SIGTERM (a
# graceful stop), the anchor, in the same run. Prints every figure and the medians (goal: within
# 2 s of readiness after a SIGKILL, must 3 s).
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-5}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${FEDGW_BIN:-} ]]; then
  fedgw=$FEDGW_BIN   # another build, e.g. to compare two commits in one boot
else
  cargo build -q --release -p fedgw-gateway
  fedgw=target/release/fedgw
fi

wait_file() { for _ in $(seq 1500); do [[ -f $1 ]] && return 0; sleep 0.02; done; echo "timed out waiting for $1" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
net=(--advertise 127.0.0.1:0 --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --dns 127.0.0.1:0)

# a TCP echo server standing in for node1's p2p port
python3 - "$work/echo.port" <<'EOF' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(512)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
def serve(c):
    with c:
        try:
            while (b := c.recv(65536)):
                c.sendall(b)
        except OSError:
            pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
pids+=($!)
wait_file "$work/echo.port"
echo_port=$(cat "$work/echo.port")

# waits for RUN_JSON, then echoes through ADDR:PORT until an echo succeeds; prints the ms from
# the file's appearance to that echo
measure() {
  python3 - "$@" <<'EOF'
import os, socket, sys, time
run_json, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 60
while not os.path.exists(run_json):
    if time.monotonic() > deadline: sys.exit("gateway not ready")
    time.sleep(0.002)
ready = time.monotonic()
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, port), timeout=10) as c:
            c.settimeout(10)
            c.sendall(b"ping")
            if c.recv(4) == b"ping":
                print(round((time.monotonic() - ready) * 1000)); sys.exit(0)
    except OSError:
        time.sleep(0.01)
sys.exit("no echo within 60 s")
EOF
}

median() { python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:]))))" "$@"; }

for transport in quic tcp; do
  d=$work/$transport
  tunnel() { sed -i -e "s/^transport = .*/transport = \"$transport\"/" -e "s/^allow_loopback_targets = .*/allow_loopback_targets = true/" "$1/fedgw.toml"; }
  $fedgw init --consortium acme --domain acme.test --org org1 --data-dir "$d/org1" "${net[@]}" >/dev/null
  tunnel "$d/org1"
  $fedgw run --data-dir "$d/org1" >"$d/org1.log" 2>&1 & pids+=($!)
  wait_file "$d/org1/run.json"
  token=$($fedgw invite org2 --data-dir "$d/org1" 2>/dev/null)
  $fedgw join "$token" --org org2 --data-dir "$d/org2" "${net[@]}" >/dev/null
  tunnel "$d/org2"
  $fedgw run --data-dir "$d/org2" >"$d/org2.log" 2>&1 & org2=$!; pids+=($org2)
  wait_file "$d/org2/run.json"
  # org2 comes back on the port it has now
  sed -i "s/^listen = .*/listen = \"$(field "$d/org2/run.json" gateway)\"/" "$d/org2/fedgw.toml"
  # a fresh secp256k1 public key: gateways refuse ids that are no point on the curve
  id=$(openssl ecparam -name secp256k1 -genkey -noout | openssl ec -pubout -outform DER 2>/dev/null |
    tail -c 64 | od -An -tx1 | tr -d ' \n')
  $fedgw node add node1 --data-dir "$d/org2" \
    --enode "enode://$id@127.0.0.1:$echo_port?discport=0" >/dev/null
  for _ in $(seq 500); do
    local_ip=$($fedgw nodes --json --data-dir "$d/org1" | python3 -c "import json,sys; n=[n for n in json.load(sys.stdin) if n['name']=='node1']; print(n[0]['local_ip'] if n and n[0].get('local_ip') else '')")
    [[ -n $local_ip ]] && break
    sleep 0.02
  done
  measure "$d/org2/run.json" "$local_ip" "$echo_port" >/dev/null
  for signal in KILL TERM; do
    figures=()
    for _ in $(seq "$kills"); do
      kill -"$signal" "$org2"; wait "$org2" 2>/dev/null || true
      rm -f "$d/org2/run.json"
      sleep 2
      $fedgw run --data-dir "$d/org2" >>"$d/org2.log" 2>&1 & org2=$!; pids+=($org2)
      figures+=("$(measure "$d/org2/run.json" "$local_ip" "$echo_port")")
    done
    echo "$transport SIG$signal: ready → first echo, ms: ${figures[*]}; median $(median "${figures[@]}")"
  done
done
