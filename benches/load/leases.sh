#!/usr/bin/env bash
# Leases under load, all from this one run, against the canned upstream of run.sh:
#   1. one gateway with leases against the same gateway before leases (BASELINE, a git
#      revision, built here into target/baseline), JSON and streamed, medians of ROUNDS paired
#      rounds (which goes first alternates);
#   2. two gateways, one per core, against one, ROUNDS pairs;
#   3. Postgres's commits and rows written per second as the request rate grows, for both
#      binaries.
# Every gateway has one worker thread. Usage: benches/load/leases.sh [SECONDS_PER_RUN]
# (default 5). Needs what run.sh needs, and git.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_CELL=${1:-5}
ROUNDS=${ROUNDS:-3}
# The last commit before leases.
BASELINE=${BASELINE:-2a1bb36}
N_KEYS=${N_KEYS:-10}
for tool in nginx wrk taskset git; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk util-linux git" >&2; exit 1; }
done
# shellcheck source=benches/load/common.sh
. benches/load/common.sh

TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "building keycap..." >&2
cargo build --release -q -p keycap --bin keycap
KEYCAP=$TARGET_DIR/release/keycap
BASE_KEYCAP=$TARGET_DIR/baseline/release/keycap
base_rev=$(git rev-parse "$BASELINE")
if [ "$(cat "$TARGET_DIR/baseline/rev" 2>/dev/null)" != "$base_rev" ]; then
  echo "building the baseline $BASELINE (a full release build, once)..." >&2
  src=$(mktemp -d /tmp/keycap-baseline-XXXXXX)
  git worktree add -q --detach "$src/tree" "$base_rev"
  (cd "$src/tree" && CARGO_TARGET_DIR=$TARGET_DIR/baseline cargo build --release -q -p keycap --bin keycap)
  git worktree remove --force "$src/tree"; rm -rf "$src"
  echo "$base_rev" > "$TARGET_DIR/baseline/rev"
fi

start_work leases
NGINX_PORT=$(port)
start_upstream 1 "$NGINX_PORT"
start_keycap_database 1 1000000000
echo "sk-or-v1-bench" | "$KEYCAP" vault add --org bench --name nginx >/dev/null 2>&1
insert_bench_keys "$N_KEYS"
write_bench_lua
export KEYCAP_DATABASE__URL="host=$WORK/data/postgres-run user=keycap dbname=keycap"

start_gateway() { # BINARY CORE -> "PORT PID"
  local p m; p=$(port); m=$(port)
  KEYCAP_OPENROUTER__BASE_URL=http://127.0.0.1:$NGINX_PORT KEYCAP_GATEWAY__LISTEN=127.0.0.1:$p \
  KEYCAP_METRICS__LISTEN=127.0.0.1:$m KEYCAP_GATEWAY__THREADS=1 KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS=0 \
    taskset -c "$2" "$1" gateway >"$WORK/gateway-$p.log" 2>&1 &
  echo "$p $!"
}
wait_ok() { # PORT
  for _ in $(seq 1 300); do
    if curl -sf -o /dev/null -X POST "http://127.0.0.1:$1/api/v1/chat/completions" -H "Authorization: Bearer kc_$(printf '%048x' 1)" \
         -H 'Content-Type: application/json' -d '{"model":"bench/model","messages":[],"max_tokens":64}'; then return 0; fi
    sleep 0.1
  done
  echo "no answer on port $1" >&2; cat "$WORK"/gateway-"$1".log >&2; exit 1
}
read -r BASE_PORT base_pid < <(start_gateway "$BASE_KEYCAP" 0); PIDS+=("$base_pid")
read -r LEASED_PORT leased_pid < <(start_gateway "$KEYCAP" 0); PIDS+=("$leased_pid")
read -r SECOND_PORT second_pid < <(start_gateway "$KEYCAP" 1); PIDS+=("$second_pid")
for p in "$BASE_PORT" "$LEASED_PORT" "$SECOND_PORT"; do wait_ok "$p"; done

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v}'; }
pg_writes() { # -> "commits rows" so far
  "${PSQL[@]}" -tAc "SELECT xact_commit || ' ' || (tup_inserted + tup_updated + tup_deleted) FROM pg_stat_database WHERE datname = 'keycap'"
}
# Runs wrk against each PORT at once (CONNS connections each, its core), after the previous
# run's flush; prints "total_rps worst_p99_ms commits_per_s rows_per_s".
load() { # CONNS STREAM PORT...
  local conns=$1 stream=$2; shift 2
  sleep 1.3
  local before; before=$(pg_writes)
  local outs=() i=0
  for p in "$@"; do
    N_KEYS=$N_KEYS STREAM=$stream taskset -c $((i == 0 ? 1 : 0)) wrk -t1 -c"$conns" -d"${SECONDS_PER_CELL}s" --timeout 30s --latency \
      -s "$WORK/bench.lua" "http://127.0.0.1:$p" > "$WORK/wrk.$i" &
    outs+=($!); i=$((i + 1))
  done
  wait "${outs[@]}"
  # Statistics reach pg_stat_database within a second of each transaction.
  sleep 1.3
  local after; after=$(pg_writes)
  local rps=0 p99=0
  for j in $(seq 0 $((i - 1))); do
    if grep -q "Non-2xx" "$WORK/wrk.$j"; then echo "non-2xx answers:" >&2; cat "$WORK/wrk.$j" >&2; exit 1; fi
    rps=$(awk -v a="$rps" '/Requests\/sec/ {print a + $2}' "$WORK/wrk.$j")
    p99=$(awk -v a="$p99" '$1=="99%" {print $2}' "$WORK/wrk.$j" | to_ms | awk -v a="$p99" '{print ($1 > a ? $1 : a)}')
  done
  # The commits include this function's two reads of the statistics.
  echo "$rps $p99 $before $after" | awk -v d="$SECONDS_PER_CELL" \
    '{ printf "%.0f %.3f %.1f %.1f\n", $1, $2, ($5 - $3 - 2) / (d + 1.3), ($6 - $4) / (d + 1.3) }'
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# ROUNDS pairs of A and B (which goes first alternates); prints "median_A median_B median_ratio lo hi"
# of the first column of each (requests per second) and of their ratios B / A.
pairs() { # "CONNS STREAM PORTS_A" "CONNS STREAM PORTS_B"
  local a=() b=() r=() round x y
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      # shellcheck disable=SC2086 # word-split on purpose: the arguments of `load`
      x=$(load $1); y=$(load $2)
    else
      # shellcheck disable=SC2086
      y=$(load $2); x=$(load $1)
    fi
    a+=("${x%% *}"); b+=("${y%% *}")
    r+=("$(awk -v x="${x%% *}" -v y="${y%% *}" 'BEGIN { print y / x }')")
  done
  echo "$(printf '%s\n' "${a[@]}" | median) $(printf '%s\n' "${b[@]}" | median) $(printf '%s\n' "${r[@]}" | median) $(printf '%s\n' "${r[@]}" | sort -g | head -1) $(printf '%s\n' "${r[@]}" | sort -g | tail -1)"
}

printf '\n1. one gateway with leases against the same gateway before leases (%s), %d keys, one worker thread each:\n' "$BASELINE" "$N_KEYS"
printf '%-8s %-6s %14s %14s %10s %12s\n' format conns "before req/s" "leases req/s" ratio "(pairs)"
for stream in 0 1; do
  for conns in ${CONNS:-32 128}; do
    read -r a b r lo hi < <(pairs "$conns $stream $BASE_PORT" "$conns $stream $LEASED_PORT")
    awk -v f="$([ "$stream" = 1 ] && echo stream || echo json)" -v c="$conns" -v a="$a" -v b="$b" -v r="$r" -v lo="$lo" -v hi="$hi" \
      'BEGIN { printf "%-8s %-6s %14.0f %14.0f %10.3f %12s\n", f, c, a, b, r, sprintf("%.2f-%.2f", lo, hi) }'
  done
done

printf '\n2. two gateways with leases (one per core, each loaded by its own wrk) against one (json, 64 connections per gateway):\n'
read -r a b r lo hi < <(pairs "64 0 $LEASED_PORT" "64 0 $LEASED_PORT $SECOND_PORT")
awk -v a="$a" -v b="$b" -v r="$r" -v lo="$lo" -v hi="$hi" \
  'BEGIN { printf "  one: %.0f req/s   two: %.0f req/s   ratio %.3f (median of pairs; %.2f-%.2f)\n", a, b, r, lo, hi }'

printf '\n3. Postgres writes as the request rate grows (json, %d keys):\n' "$N_KEYS"
printf '%-14s %-6s %10s %12s %10s %18s\n' system conns "req/s" "commits/s" "rows/s" "commits/1000 req"
for conns in 1 4 16 64; do
  for system in before:$BASE_PORT leases:$LEASED_PORT; do
    read -r rps _ commits rows < <(load "$conns" 0 "${system#*:}")
    awk -v s="${system%%:*}" -v c="$conns" -v q="$rps" -v k="$commits" -v w="$rows" \
      'BEGIN { printf "%-14s %-6s %10.0f %12.1f %10.1f %18.2f\n", s, c, q, k, w, k / q * 1000 }'
  done
done
