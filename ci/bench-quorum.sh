#!/usr/bin/env bash
# Benchmark of the quorum suite, in one run, on two fresh 3-member netns rigs:
#   A. hadrill: `hadrill run --allow-disruption quorum::` under /usr/bin/time -v
#      (wall time, CPU time, peak RSS of hadrill while it probes);
#   B. the same scenarios the way operators check them today: a shell loop around
#      `etcdctl put`, `etcdctl endpoint status/health/hashkv` and `kill`/`iptables`.
# Prints a table (and writes it to $OUT, default bench-quorum.txt). Needs root, etcd,
# etcdctl, jq, iptables, /usr/bin/time and a built hadrill (cargo build).
# Not a timed test: figures depend on the machine; docs/quorum.md records ours.
set -euo pipefail

HADRILL=${HADRILL:-target/debug/hadrill}
OUT=${OUT:-bench-quorum.txt}
WORK=$(mktemp -d /tmp/hq-bench.XXXXXX)
export HADRILL_LEDGER=$WORK/ledger
SPAWNED=()

cleanup() {
  set +e
  for p in "${SPAWNED[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  "$HADRILL" rig down --dir "$WORK/rig-a" >/dev/null 2>&1
  "$HADRILL" rig down --dir "$WORK/rig-b" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.3f'; }

# --- A: hadrill ------------------------------------------------------------------------
"$HADRILL" rig up --members 3 --isolation netns --dir "$WORK/rig-a" >/dev/null
/usr/bin/time -v -o "$WORK/time-a.txt" \
  "$HADRILL" --config "$WORK/rig-a/target.yaml" run --allow-disruption quorum:: --json "$WORK/a.json" \
  >"$WORK/a.out" 2>&1 || { cat "$WORK/a.out"; echo "hadrill run failed" >&2; exit 1; }
"$HADRILL" rig down --dir "$WORK/rig-a" >/dev/null
field() { grep -F "$1" "$WORK/time-a.txt" | sed 's/.*: //'; }
A_WALL=$(field "Elapsed (wall clock) time")
A_USER=$(field "User time (seconds)")
A_SYS=$(field "System time (seconds)")
A_RSS=$(field "Maximum resident set size (kbytes)")
A_FAILOVER=$(jq -r '.cases[] | select(.case=="leader_killed_failover") | .measurements[] | select(.name=="failover") | .value' "$WORK/a.json")
A_PASSED=$(jq '[.cases[] | select(.verdict.verdict=="passed")] | length' "$WORK/a.json")

# --- B: the operators' shell loop --------------------------------------------------------
"$HADRILL" rig up --members 3 --isolation netns --dir "$WORK/rig-b" >/dev/null
RIG=$WORK/rig-b/rig.json
EPS=$(jq -r '[.members[].client_url] | join(",")' "$RIG")
CTL=(etcdctl --cacert "$(jq -r .ca_cert "$RIG")" --cert "$(jq -r .client_cert "$RIG")" --key "$(jq -r .client_key "$RIG")")
declare -A PID
for m in $(jq -r '.members[].name' "$RIG"); do PID[$m]=$(jq -r --arg m "$m" '.members[] | select(.name==$m) | .pid' "$RIG"); done
url() { jq -r --arg m "$1" '.members[] | select(.name==$m) | .client_url' "$RIG"; }
ns() { jq -r --arg m "$1" '.members[] | select(.name==$m) | .netns' "$RIG"; }
ipof() { jq -r --arg m "$1" '.members[] | select(.name==$m) | .ip' "$RIG"; }
leader() { # the member whose id is the leader, from endpoint status
  "${CTL[@]}" --endpoints "$EPS" endpoint status -w json 2>/dev/null \
    | jq -r '.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint' | head -1
}
name_of_url() { jq -r --arg u "$1" '.members[] | select(.client_url==$u) | .name' "$RIG"; }
followers() { local l; l=$(leader); jq -r --arg u "$l" '.members[] | select(.client_url!=$u) | .name' "$RIG"; }
restart() { # start the member again with the rig's own argv, detached
  local m=$1; mapfile -t argv < <(jq -r --arg m "$m" '.members[] | select(.name==$m) | .argv[]' "$RIG")
  setsid -f "${argv[@]}" >>"$WORK/rig-b/$m/etcd.log" 2>&1 </dev/null
  # this rig's member only: its data directory is unique to this run
  local dd; dd=$(jq -r --arg m "$m" '.members[] | select(.name==$m) | .data_dir' "$RIG")
  local p=""; for _ in $(seq 100); do p=$(pgrep -f -n -- "--data-dir=$dd( |$)" || true); [ -n "$p" ] && break; sleep 0.05; done
  PID[$m]=$p; SPAWNED+=("$p")
}
healthy() { # every endpoint healthy, within 20s
  for _ in $(seq 200); do "${CTL[@]}" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1
}
puts() { # sequential puts for $1 seconds; prints "ok fail"
  local end ok=0 fail=0; end=$(echo "$(now) + $1" | bc)
  while (( $(echo "$(now) < $end" | bc) )); do
    if "${CTL[@]}" --endpoints "$EPS" --command-timeout=1s put "/ops/k$RANDOM$RANDOM" v >/dev/null 2>&1; then ok=$((ok+1)); else fail=$((fail+1)); fi
  done; echo "$ok $fail"
}
converged() { # same revision and hash on every member (operators compare hashkv by eye)
  for _ in $(seq 100); do
    local n; n=$("${CTL[@]}" --endpoints "$EPS" endpoint hashkv -w json 2>/dev/null | jq '[.[].HashKV.hash] | unique | length')
    [ "$n" = "1" ] && return 0; sleep 0.2
  done; return 1
}
B_OK=0
T0=$(now)
# 1. follower lost → writes continue
f=$(followers | head -1); kill -9 "${PID[$f]}"; read -r ok fail < <(puts 4); [ "$ok" -gt 0 ] && B_OK=$((B_OK+1))
restart "$f"; healthy; converged
# 2. leader killed → time to the first acknowledged put
l=$(name_of_url "$(leader)"); t=$(now); kill -9 "${PID[$l]}"
# each put is bounded (1s); the whole wait too (60 tries)
acked=0
for _ in $(seq 60); do
  if "${CTL[@]}" --endpoints "$EPS" --command-timeout=1s put /ops/failover v >/dev/null 2>&1; then acked=1; break; fi
done
[ "$acked" = 1 ] || { echo "ci/bench-quorum.sh: no put acknowledged within 60 tries after the leader was killed" >&2; exit 1; }
B_FAILOVER=$(since "$t"); B_OK=$((B_OK+1))
restart "$l"; healthy; converged
# 3. two of three lost → put and linearizable get fail, serializable get answers
mapfile -t fs < <(followers); l=$(leader)
kill -9 "${PID[${fs[0]}]}" "${PID[${fs[1]}]}"
if ! "${CTL[@]}" --endpoints "$l" --command-timeout=2s put /ops/x v >/dev/null 2>&1 \
  && ! "${CTL[@]}" --endpoints "$l" --command-timeout=2s get /ops/x >/dev/null 2>&1 \
  && "${CTL[@]}" --endpoints "$l" --command-timeout=2s get --consistency=s /ops/x >/dev/null 2>&1; then B_OK=$((B_OK+1)); fi
restart "${fs[0]}"; restart "${fs[1]}"; healthy; converged
# 4. leader isolated → a new leader on the majority, the old one refuses puts
l=$(name_of_url "$(leader)"); lns=$(ns "$l")
for o in $(jq -r --arg m "$l" '.members[] | select(.name!=$m) | .ip' "$RIG"); do
  ip netns exec "$lns" iptables -I INPUT -s "$o" -p tcp -m multiport --ports 2380 -m comment --comment hadrill-bench -j DROP
  ip netns exec "$lns" iptables -I OUTPUT -d "$o" -p tcp -m multiport --ports 2380 -m comment --comment hadrill-bench -j DROP
done
others=$(jq -r --arg m "$l" '[.members[] | select(.name!=$m) | .client_url] | join(",")' "$RIG")
for _ in $(seq 100); do
  nl=$("${CTL[@]}" --endpoints "$others" endpoint status -w json 2>/dev/null | jq -r '[.[].Status.leader] | unique | .[]' || true)
  [ -n "$nl" ] && [ "$(echo "$nl" | wc -l)" = 1 ] && [ "$nl" != 0 ] && [ "$(url "$l")" != "$(leader)" ] && break; sleep 0.1
done
"${CTL[@]}" --endpoints "$(url "$l")" --command-timeout=2s put /ops/iso v >/dev/null 2>&1 || B_OK=$((B_OK+1))
ip netns exec "$lns" iptables-save | grep -- '--comment hadrill-bench' | sed 's/^-A/-D/' | while read -r r; do ip netns exec "$lns" iptables $r; done
healthy; converged
# 5. paused follower → writes continue
f=$(followers | head -1); kill -STOP "${PID[$f]}"; read -r ok fail < <(puts 4); [ "$ok" -gt 0 ] && B_OK=$((B_OK+1)); kill -CONT "${PID[$f]}"
healthy; converged
B_WALL=$(since "$T0")
B_KEYS=$("${CTL[@]}" --endpoints "$EPS" get --prefix /ops/ --keys-only -w json | jq .count)

{
  echo "quorum suite on a 3-member netns rig, $(nproc) cores, $(etcd --version | head -1)"
  printf '%-34s %-14s %-14s\n' "" "hadrill" "shell+etcdctl"
  printf '%-34s %-14s %-14s\n' "scenarios passed (of 5)" "$A_PASSED" "$B_OK"
  printf '%-34s %-14s %-14s\n' "wall time" "$A_WALL" "${B_WALL}s"
  printf '%-34s %-14s %-14s\n' "failover (kill leader → first put)" "${A_FAILOVER}s" "${B_FAILOVER}s"
  printf '%-34s %-14s %-14s\n' "hadrill CPU user+sys" "${A_USER}+${A_SYS}s" "-"
  printf '%-34s %-14s %-14s\n' "hadrill peak RSS" "${A_RSS} kB" "-"
  echo "shell keys written: $B_KEYS (no per-put record: an acknowledged put lost would go unseen)"
} | tee "$OUT"
