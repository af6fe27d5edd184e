#!/usr/bin/env bash
# The compose lab end to end: three datacenters on their own Docker networks plus a WAN, one
# gateway and stand-in nodes per DC (see docker-compose.yml). Builds the static image, founds
# a consortium at dc1, invites and joins dc2 and the outbound-only dc3, registers nodes, and
# checks from a node container of each DC that every other DC's nodes resolve (to an
# address in the local gateway's pool) and answer. Then faults, each with its recovery time:
#
#   partition  gw2 disconnected from the WAN while a node is registered at dc1; reconnected:
#              gw2 learns the node, every gateway holds the same records, traffic resumes
#   restart    gw1 killed (SIGKILL) and started again: every record it held is still there
#              (lost records are counted), its aliases come back, traffic resumes
#   revoke     org3 revoked at gw1: traffic to and from dc3 stops everywhere (time reported,
#              goal under 1 s), traffic between dc1 and dc2 goes on
#   replica    gw2b added as a second replica of dc2's gateway (`fedgw replica add` at gw2,
#              `fedgw replica join` at gw2b): both answer DNS identically; gw2 SIGKILLed
#              while dc1 probes a dc2 node: the longest gap between answers is reported
#              (goal at most 2 s); gw2 started again catches up
#
# Prints one line per check (PASS/FAIL, seconds), a summary, and exits non-zero if any check
# failed. Everything is torn down on exit, also after a failure; leftovers of an earlier run
# are removed first.
#
#   compose-lab/e2e.sh            # KEEP=1 leaves the lab up after the run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

project=fedgwlab
compose() { docker-compose -p "$project" -f "$here/docker-compose.yml" "$@"; }
domain=acme.test
start_all=$(date +%s.%N)

# ---------------------------------------------------------------------------- bookkeeping
passed=0
failed=0
failures=()
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
pass() { # NAME SECS [DETAIL]
  passed=$((passed + 1))
  echo "PASS $1 ($2s)${3:+ $3}"
}
fail() { # NAME SECS DETAIL
  failed=$((failed + 1))
  failures+=("$1")
  echo "FAIL $1 ($2s) ${3:-}"
}
# until_ok SECONDS CMD...: runs CMD every 0.2 s until it succeeds or SECONDS pass; the last
# output is in $out.
out=
until_ok() {
  local limit=$1
  shift
  local t0
  t0=$(now)
  while true; do
    if out=$("$@" 2>&1); then
      return 0
    fi
    if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
      return 1
    fi
    sleep 0.2
  done
}
# check NAME SECONDS CMD...: polls CMD (bounded), prints PASS with the time it took, or FAIL
# with CMD's last output line.
check() {
  local name=$1 limit=$2
  shift 2
  local t0
  t0=$(now)
  if until_ok "$limit" "$@"; then
    pass "$name" "$(since "$t0")" "$(tail -n1 <<<"$out")"
  else
    fail "$name" "$(since "$t0")" "$(tail -n1 <<<"$out")"
  fi
}

# Removes the lab: containers, networks, volumes. compose down stops at the first network it
# cannot remove (Docker 20.10 sometimes keeps a stale endpoint on a network after its
# containers are gone; compose up then reuses that network), so volumes and the remaining
# networks are removed one by one as well: a later run must never find an old data dir.
cleanup() {
  compose down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
  docker volume rm -f "${project}_gw1data" "${project}_gw2data" "${project}_gw2bdata" "${project}_gw3data" >/dev/null 2>&1 || true
  for n in dc1 dc2 dc3 wan; do docker network rm "${project}_$n" >/dev/null 2>&1 || true; done
}

# host-side files (a passphrase, a replica bundle), removed on exit
scratch=$(mktemp -d)
teardown() {
  local rc=$?
  rm -rf "$scratch"
  if ((failed > 0 || rc != 0)) && [[ -z ${QUIET_LOGS:-} ]]; then
    for gw in gw1 gw2 gw2b gw3; do
      echo "--- last log lines of $gw"
      docker logs --tail 25 "$project-$gw" 2>&1 | sed 's/^/    /' || true
    done
  fi
  if [[ -z ${KEEP:-} ]]; then
    cleanup
  fi
}

# ---------------------------------------------------------------------------- the lab
gw_dc_ip() { echo "172.31.${1#gw}.2"; }       # gw2 -> 172.31.2.2
gw_wan_ip() { echo "172.31.100.1${1#gw}"; }   # gw2 -> 172.31.100.12
node_ip() {                                   # n2b -> 172.31.2.11
  local dc=${1:1:1} letter=${1:2:1}
  echo "172.31.$dc.$((10 + $(printf '%d' "'$letter") - 97))"
}
node_org() { echo "org${1:1:1}"; }
node_gw() { echo "gw${1:1:1}"; }
fedgw() { # GW ARGS... : a fedgw command in a gateway container on its data dir
  local gw=$1
  shift
  docker exec "$project-$gw" /usr/local/bin/fedgw "$@" --data-dir /data
}
# probe FROM TARGET PORT [ARGS...]: from node container FROM, resolve TARGET (a node name)
# through FROM's gateway and talk to it on PORT
probe() {
  local from=$1 target=$2 port=$3
  shift 3
  docker exec "$project-$from" /usr/local/bin/fedgw probe "$target.$(node_org "$target").$domain:$port" \
    --dns "$(gw_dc_ip "$(node_gw "$from")"):53" "$@"
}
# in_pool FROM LINE: the probe's "-> IP:PORT" lies in FROM's gateway pool (.128/25)
in_pool() {
  local dc=${1:1:1}
  [[ $2 =~ -\>\ 172\.31\.$dc\.([0-9]+): ]] && ((BASH_REMATCH[1] >= 128))
}
# reach FROM TARGET: echo on p2p (30303) and raft (50400), GET /upcheck on Tessera (9000);
# the address must come from FROM's pool
reach() {
  local from=$1 target=$2 line
  line=$(probe "$from" "$target" 30303 --timeout 2s) || { echo "$line"; return 1; }
  in_pool "$from" "$line" || { echo "not an address of $(node_gw "$from")'s pool: $line"; return 1; }
  probe "$from" "$target" 50400 --timeout 2s >/dev/null || return 1
  probe "$from" "$target" 9000 --http --timeout 2s >/dev/null || return 1
  echo "$line"
}
# unreachable FROM TARGET: a probe fails quickly
unreachable() {
  local line
  if line=$(probe "$1" "$2" 30303 --timeout 500ms 2>&1); then
    echo "still reachable: $line"
    return 1
  fi
  echo "refused: $line"
}
# node_names GW: org/name of every node in GW's view, sorted
node_names() {
  fedgw "$1" nodes --json | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    print("%s/%s seq=%s local_ip=%s" % (n["org"], n["name"], n["seq"], n["local_ip"]))' | sort
}
member_lines() {
  fedgw "$1" members --json | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    print("%s %s" % (m["org"], m["status"]))' | sort
}
status_field() { # GW FIELD
  fedgw "$1" status --json | python3 -c "import json, sys; print(json.load(sys.stdin)['$2'])"
}
# lists GW NODE...: GW's view holds each org/name, remote ones with a local address
lists() {
  local gw=$1 names
  shift
  names=$(node_names "$gw") || return 1
  for n in "$@"; do
    grep -q "^$n seq=[0-9]* local_ip=[0-9]" <<<"$names" ||
      { grep -q "^$n seq=" <<<"$names" && [[ $n == "org${gw#gw}/"* ]]; } ||
      { echo "$gw does not list $n yet"; return 1; }
  done
  if (($# <= 2)); then echo "$gw lists $*"; else echo "$gw lists all $# nodes"; fi
}
lacks() { # GW NODE: GW's view does not hold NODE
  ! node_names "$1" | grep -q "^$2 "
}
same_digest() { # GW...: every gateway reports the same view digest
  local d first=
  for gw in "$@"; do
    d=$(status_field "$gw" digest) || return 1
    first=${first:-$d}
    [[ $d == "$first" ]] || { echo "digests differ ($gw: ${d:0:12}, ${1}: ${first:0:12})"; return 1; }
  done
  echo "digest ${first:0:16} at $*"
}
ready() { fedgw "$1" status --json >/dev/null && echo "$1 answers"; }
# peers GW: "org/site state direction" per sync peer of GW
peers() {
  fedgw "$1" status --json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["peers"]:
    print("%s/%s %s %s" % (p["org"], p["site"], p["state"], p["direction"]))' | sort
}
link_down() { # GW ORG: GW has no live sync stream with ORG
  local p
  p=$(peers "$1") || return 1
  if grep -q "^$2/[^ ]* connected" <<<"$p"; then
    echo "$1 still connected to $2"
    return 1
  fi
  local state
  state=$(grep "^$2/" <<<"$p" | head -n1 || true)
  echo "$1: ${state:-no sync link to $2}"
}
# outbound_links GW N: GW has N connected sync streams, all dialled by GW
outbound_links() {
  local p n
  p=$(peers "$1") || return 1
  n=$(grep -c ' connected outbound$' <<<"$p" || true)
  ((n == $2)) || { echo "$1 peers: $(tr '\n' ';' <<<"$p")"; return 1; }
  echo "$1: $(tr '\n' ' ' <<<"$p")"
}
# wan_refused: gw3's gateway port cannot be reached over the wan, gw2's can
wan_refused() {
  docker exec "$project-gw1" /usr/local/bin/fedgw ping "$(gw_wan_ip gw2):7443" --data-dir /data --timeout 2s >/dev/null ||
    { echo "gw1 cannot ping gw2 over the wan"; return 1; }
  if out=$(docker exec "$project-gw1" /usr/local/bin/fedgw ping "$(gw_wan_ip gw3):7443" --data-dir /data --timeout 2s 2>&1); then
    echo "gw3 answered on the wan: $out"
    return 1
  fi
  echo "gw1 -> gw3 $(gw_wan_ip gw3):7443 refused, gw1 -> gw2 ok"
}
members_active() { # GW N: GW sees N admitted members
  local n
  n=$(member_lines "$1" | grep -c ' active$' || true)
  ((n == $2)) || { echo "$1 sees $n active members"; return 1; }
  echo "$1 sees $2 active members"
}
# a fresh secp256k1 public key, X and Y in hex (the last 64 bytes of its DER SubjectPublicKeyInfo)
enode_id() {
  openssl ecparam -name secp256k1 -genkey -noout | openssl ec -pubout -outform DER 2>/dev/null |
    tail -c 64 | od -An -tx1 | tr -d ' \n'
}
register() { # NODE: registers NODE at its gateway with a fresh enode id and Tessera key
  local n=$1 ip
  ip=$(node_ip "$n")
  fedgw "$(node_gw "$n")" node add "$n" \
    --enode "enode://$(enode_id)@$ip:30303?discport=0&raftport=50400" \
    --tessera-url "http://$ip:9000" --tessera-key "$(head -c 32 /dev/urandom | base64)"
}

# ---------------------------------------------------------------------------- run
echo "== fedgw compose lab ($project)"
cleanup
trap teardown EXIT

t=$(now)
if out=$("$here/build.sh" 2>&1); then
  pass "build static fedgw and the scratch image" "$(since "$t")" "$(tail -n1 <<<"$out")"
else
  fail "build static fedgw and the scratch image" "$(since "$t")" "$(tail -n3 <<<"$out")"
  exit 1
fi

t=$(now)
if out=$(compose up -d 2>&1); then
  pass "compose up (3 gateways and a spare replica, 9 nodes, 4 networks)" "$(since "$t")"
else
  fail "compose up" "$(since "$t")" "$(tail -n3 <<<"$out")"
  exit 1
fi

net=(--dns 0.0.0.0:53 --alias-interface auto)
t=$(now)
if out=$(fedgw gw1 init --consortium acme --domain "$domain" --org org1 --site dc1 \
  --advertise "$(gw_wan_ip gw1):7443" --address-pool 172.31.1.128/25 "${net[@]}" 2>&1) &&
  until_ok 20 ready gw1; then
  pass "init org1 at gw1" "$(since "$t")"
else
  fail "init org1 at gw1" "$(since "$t")" "$out"
  exit 1
fi

join() { # GW ORG EXTRA...
  local gw=$1 org=$2 token t
  shift 2
  t=$(now)
  if token=$(fedgw gw1 invite "$org" --ttl 10m 2>/dev/null) &&
    out=$(fedgw "$gw" join "$token" --org "$org" --site "dc${gw#gw}" \
      --address-pool "172.31.${gw#gw}.128/25" "${net[@]}" "$@" 2>&1) &&
    until_ok 20 ready "$gw"; then
    pass "invite $org at gw1, join at $gw" "$(since "$t")" "$(tail -n1 <<<"$out")"
  else
    fail "invite $org at gw1, join at $gw" "$(since "$t")" "$(tail -n1 <<<"$out")"
    exit 1
  fi
}
join gw2 org2 --advertise "$(gw_wan_ip gw2):7443"
# outbound-only: the gateway port is bound on the dc3 address only, so nothing from the WAN
# reaches it; its links are dialled by gw3 (over TCP+TLS: see docker-compose.yml)
join gw3 org3 --advertise "$(gw_dc_ip gw3):7443" --listen "$(gw_dc_ip gw3):7443" \
  --outbound-only --tunnel-transport tcp

for gw in gw1 gw2 gw3; do
  check "$gw sees org1, org2, org3 admitted" 30 members_active "$gw" 3
done
check "dc3 outbound-only: nothing answers on gw3's wan address" 10 wan_refused
check "dc3 outbound-only: gw3's sync links are both dialled by gw3" 30 outbound_links gw3 2

t=$(now)
regs=0
for n in n1a n1b n2a n2b n3a n3b; do
  register "$n" >/dev/null && regs=$((regs + 1))
done
if ((regs == 6)); then
  pass "register 2 nodes at each gateway" "$(since "$t")"
else
  fail "register 2 nodes at each gateway" "$(since "$t")" "$regs of 6 registered"
fi
all=(org1/n1a org1/n1b org2/n2a org2/n2b org3/n3a org3/n3b)
for gw in gw1 gw2 gw3; do
  check "$gw lists every node, remote ones with a local address" 30 lists "$gw" "${all[@]}"
done

# traffic: from one node of each DC to every node of the other DCs, resolved through the
# local gateway's DNS
for from in n1a n2b n3a; do
  for to in n1a n1b n2a n2b n3a n3b; do
    [[ ${from:1:1} == "${to:1:1}" ]] && continue
    check "$from -> $to.$(node_org "$to") p2p+raft+tessera" 15 reach "$from" "$to"
  done
done
# a Fabric peer's named service: n2a's echo on 30303 registered again as peer p2a's `peer`
# service (no enode, no chain ports), reached from dc1 at its consortium name
if fedgw gw2 node add p2a --client fabric-peer --host "$(node_ip n2a)" --service peer=30303 >/dev/null; then
  check "n1a -> p2a.org2 echo on its named service peer" 30 probe n1a p2a 30303 --timeout 2s
else
  fail "register fabric peer p2a at gw2 with --service peer=30303" 0
fi
for from in n1b n2a n3b; do
  check "$from resolves through its resolv.conf (Docker forwards to its gateway)" 10 \
    docker exec "$project-$from" /usr/local/bin/fedgw probe "n2b.org2.$domain:30303" --timeout 2s
done

# ---------------------------------------------------------------------------- fault: partition
echo "== fault: gw2 cut off from the WAN"
wan=${project}_wan
t_cut=$(now)
docker network disconnect "$wan" "$project-gw2"
check "partition: dc1 -> dc2 traffic stops" 20 unreachable n1a n2a
# long enough for the sync streams to time out (three missed heartbeats), so the heal below
# is a reconnection, not a resumed stream
check "partition: gw1 drops its sync link to gw2" 30 link_down gw1 org2
register n1c >/dev/null || fail "register n1c at gw1 during the partition" 0
check "partition: gw3 learns n1c while gw2 is cut off" 15 lists gw3 org1/n1c
if lacks gw2 org1/n1c; then
  pass "partition: gw2 does not hold n1c while cut off" "$(since "$t_cut")"
else
  fail "partition: gw2 does not hold n1c while cut off" "$(since "$t_cut")" "it does: the cut is not real"
fi
docker network connect --ip "$(gw_wan_ip gw2)" "$wan" "$project-gw2"
t_heal=$(now)
echo "   (cut off for $(awk -v a="$t_cut" -v b="$t_heal" 'BEGIN { printf "%.1f", b - a }') s; times below count from the reconnect)"
check "partition healed: gw2 learns n1c" 60 lists gw2 org1/n1c
heal_records=$(since "$t_heal")
before=$failed
check "partition healed: every gateway holds the same records" 30 same_digest gw1 gw2 gw3
digests_equal=$((failed == before))
check "partition healed: n2a -> n1c.org1 traffic resumes" 30 reach n2a n1c
check "partition healed: n1a -> n2a.org2 traffic resumes" 30 reach n1a n2a
if ((digests_equal)); then
  echo "   gw2 caught up ${heal_records}s after the reconnect; equal digests at all three gateways: 0 lost records"
fi

# ---------------------------------------------------------------------------- fault: restart
echo "== fault: gw1 killed and started again"
nodes_before=$(node_names gw1 | cut -d' ' -f1-2) || true
members_before=$(member_lines gw1) || true
records_before=$(status_field gw1 records) || records_before=0
t_kill=$(now)
docker kill "$project-gw1" >/dev/null
# registered at dc3 while gw1 is down: gw1 must learn it after the restart
register n3c >/dev/null || fail "register n3c at gw3 while gw1 is down" 0
t_start=$(now)
docker start "$project-gw1" >/dev/null
check "restart: gw1 answers after docker start" 30 ready gw1
t_answer=$(since "$t_start")
nodes_after=$(node_names gw1 | cut -d' ' -f1-2) || true
members_after=$(member_lines gw1) || true
records_after=$(status_field gw1 records) || records_after=-1
lost_nodes=$(comm -23 <(echo "$nodes_before") <(echo "$nodes_after") | grep -c . || true)
lost_members=$(comm -23 <(echo "$members_before") <(echo "$members_after") | grep -c . || true)
if ((lost_nodes == 0 && lost_members == 0 && records_after >= records_before)); then
  pass "restart: 0 lost records" "$(since "$t_kill")" \
    "($(grep -c . <<<"$nodes_before") nodes, $(grep -c . <<<"$members_before") members, $records_before records before; $records_after records after)"
else
  fail "restart: 0 lost records" "$(since "$t_kill")" \
    "lost $lost_nodes nodes, $lost_members members; records $records_before -> $records_after"
fi
t_up=$(now)
check "restart: gw1 learns n3c, registered while it was down" 60 lists gw1 org3/n3c
check "restart: every gateway holds the same records" 30 same_digest gw1 gw2 gw3
check "restart: n1a -> n2a.org2 traffic resumes" 30 reach n1a n2a
check "restart: n2a -> n1a.org1 traffic resumes" 30 reach n2a n1a
check "restart: n1b -> n3c.org3 traffic resumes" 30 reach n1b n3c
check "restart: n3a -> n1b.org1 traffic resumes" 30 reach n3a n1b
echo "   gw1 answered ${t_answer}s after docker start; records and traffic back $(since "$t_up")s later, $(since "$t_kill")s after the kill"

# ---------------------------------------------------------------------------- fault: revoke
echo "== fault: org3 revoked"
t_revoke=$(now)
if ! out=$(fedgw gw1 revoke org3 --reason "compose lab e2e" 2>&1); then
  fail "revoke org3 at gw1" "$(since "$t_revoke")" "$out"
fi
revoke_cli=$(since "$t_revoke")
# every direction between dc3 and the others, in parallel, every ~50 ms plus the probes' time
cut_probe() { unreachable "$1" "$2" >/dev/null 2>&1; }
t_cut=
rounds=0
while awk -v a="$t_revoke" -v b="$(now)" 'BEGIN { exit !(b - a < 10) }'; do
  rounds=$((rounds + 1))
  pids=()
  for pair in "n1a n3a" "n3a n1a" "n2a n3b" "n3b n2a"; do
    # shellcheck disable=SC2086
    cut_probe $pair &
    pids+=($!)
  done
  all_cut=1
  for p in "${pids[@]}"; do wait "$p" || all_cut=0; done
  if ((all_cut)); then
    t_cut=$(since "$t_revoke")
    break
  fi
  sleep 0.05
done
if [[ -n $t_cut ]] && awk -v c="$t_cut" 'BEGIN { exit !(c < 1.0) }'; then
  pass "revoke: org3 traffic stopped everywhere (dc1<->dc3, dc2<->dc3)" "$t_cut" \
    "measured from the revoke command; revoke took ${revoke_cli}s; $rounds probe round(s)"
elif [[ -n $t_cut ]]; then
  fail "revoke: org3 traffic stopped everywhere within 1 s" "$t_cut" "$rounds probe round(s)"
else
  fail "revoke: org3 traffic stopped everywhere" "$(since "$t_revoke")" "still flowing after 10 s"
fi
still_cut() { unreachable n3a n1a && unreachable n1a n3a && unreachable n2a n3a; }
check "revoke: still stopped a moment later" 5 still_cut
sees_revoked() { member_lines "$1" | grep -q '^org3 revoked' && echo "org3 revoked at $1"; }
check "revoke: gw2 sees org3 revoked" 10 sees_revoked gw2
check "revoke: n1a -> n2a.org2 unaffected" 10 reach n1a n2a
check "revoke: n2a -> n1b.org1 unaffected" 10 reach n2a n1b

# ---------------------------------------------------------------------------- replicas
echo "== a second replica of dc2's gateway"
# resolved FROM TARGET DNS: the address DNS server DNS (IP:PORT) gives TARGET, as FROM's probe sees it
resolved() {
  docker exec "$project-$1" /usr/local/bin/fedgw probe "$2.$(node_org "$2").$domain:30303" \
    --dns "$3" --timeout 2s --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["addr"])'
}
# same_answers NODE...: gw2 and gw2b give n2a the same address for every NODE
same_answers() {
  local n a b lines=()
  for n in "$@"; do
    a=$(resolved n2a "$n" 172.31.2.2:53) || { echo "gw2 does not answer $n: $a"; return 1; }
    b=$(resolved n2a "$n" 172.31.2.3:53) || { echo "gw2b does not answer $n: $b"; return 1; }
    [[ $a == "$b" ]] || { echo "$n: gw2 $a, gw2b $b"; return 1; }
    lines+=("$n=$a")
  done
  echo "${lines[*]}"
}
# gap_probe: n1a reaches n2a.org2 (a new connection: DNS at gw1, the tunnel to a dc2 replica)
gap_probe() { probe n1a n2a 30303 --timeout 1s >/dev/null 2>&1; }
# failover_gap CMD...: probes until n1a reaches n2a, runs CMD, probes on until five answers in
# a row (at most 30 s); sets gap (the longest time between two answers), probes, probe_fails
failover_gap() {
  local last_ok t_cmd t streak=0
  until_ok 20 gap_probe || return 1
  last_ok=$(now)
  "$@"
  t_cmd=$(now)
  gap=0 probes=0 probe_fails=0
  while ((streak < 5)); do
    awk -v a="$t_cmd" -v b="$(now)" 'BEGIN { exit !(b - a > 30) }' && return 1
    probes=$((probes + 1))
    if gap_probe; then
      t=$(now)
      gap=$(awk -v g="$gap" -v a="$last_ok" -v b="$t" 'BEGIN { d = b - a; printf "%.2f", (d > g ? d : g) }')
      last_ok=$t
      streak=$((streak + 1))
    else
      probe_fails=$((probe_fails + 1))
      streak=0
    fi
  done
}
# a fedgw without the replica command (an older build) skips the section, saying so
if ! docker exec "$project-gw2" /usr/local/bin/fedgw replica --help >/dev/null 2>&1; then
  echo "SKIP replica: this fedgw has no replica command"
else
  pass_file=$scratch/replica.pass
  bundle=$scratch/replica-b.fedgwrep
  head -c 24 /dev/urandom | base64 >"$pass_file"
  t=$(now)
  # the bundle holds the org CA key: it leaves gw2 encrypted and is removed once joined
  if docker cp "$pass_file" "$project-gw2:/replica.pass" &&
    docker cp "$pass_file" "$project-gw2b:/replica.pass" &&
    out=$(fedgw gw2 replica add b --advertise "172.31.100.22:7443" --out /data/replica-b.fedgwrep \
      --passphrase-file /replica.pass 2>&1) &&
    docker cp "$project-gw2:/data/replica-b.fedgwrep" "$bundle" &&
    docker cp "$bundle" "$project-gw2b:/replica-b.fedgwrep" &&
    out=$(docker exec "$project-gw2b" /usr/local/bin/fedgw replica join /replica-b.fedgwrep --data-dir /data \
      --passphrase-file /replica.pass --listen 0.0.0.0:7443 --dns 0.0.0.0:53 2>&1) &&
    until_ok 30 ready gw2b; then
    pass "replica add b at gw2, replica join at gw2b" "$(since "$t")" "$(tail -n1 <<<"$out")"
  else
    fail "replica add b at gw2, replica join at gw2b" "$(since "$t")" "$(tail -n1 <<<"$out")"
  fi
  rm -f "$bundle"
  check "replica: gw1, gw2 and gw2b hold the same records" 60 same_digest gw1 gw2 gw2b
  check "replica: gw2 and gw2b answer DNS identically" 30 same_answers n1a n1b n1c n2a n2b
  register n2c >/dev/null || fail "register n2c at gw2 with two replicas" 0
  check "replica: n2c, registered at gw2, answers identically at both" 30 same_answers n2c n1a
  check "replica: n1b -> n2c.org2 traffic" 15 reach n1b n2c

  t=$(now)
  if failover_gap docker kill "$project-gw2" >/dev/null; then
    if awk -v g="$gap" 'BEGIN { exit !(g <= 2.0) }'; then
      pass "replica: n1a -> n2a.org2 keeps flowing with gw2 SIGKILLed" "$gap" \
        "longest gap between answers; $probes probes, $probe_fails failed"
    else
      fail "replica: n1a -> n2a.org2 gap at most 2 s with gw2 SIGKILLed" "$gap" \
        "$probes probes, $probe_fails failed"
    fi
  else
    fail "replica: n1a -> n2a.org2 keeps flowing with gw2 SIGKILLed" "$(since "$t")" \
      "no five answers in a row within 30 s of the kill"
  fi
  check "replica: n1b -> n2b.org2 through gw2b alone" 15 reach n1b n2b
  docker start "$project-gw2" >/dev/null
  check "replica: gw2 answers after docker start" 30 ready gw2
  check "replica: gw1, gw2 and gw2b hold the same records again" 60 same_digest gw1 gw2 gw2b
  check "replica: n2a -> n1a.org1 traffic resumes through gw2" 30 reach n2a n1a
fi

# ---------------------------------------------------------------------------- summary
echo "== $passed passed, $failed failed in $(since "$start_all")s"
if ((failed > 0)); then
  printf '   failed: %s\n' "${failures[@]}"
  exit 1
fi
