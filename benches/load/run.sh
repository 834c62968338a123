#!/usr/bin/env bash
# Load harness: nginx serving canned OpenRouter answers (the upstream), measured directly, through
# a bare pingora passthrough (benches/src/bin/passthrough.rs) and through keycap's gateway, at 1,
# 32 and 128 connections, for JSON and streamed responses; then keycap with 10 and with 100,000
# active keys in its cache. Prints requests/s, p50 and p99, and each system's ratio to the bare
# passthrough, all from this one run.
#
# The proxy under test is pinned to core 0; wrk, nginx and Postgres to core 1.
# Usage: benches/load/run.sh [SECONDS_PER_RUN]   (default 5). Each keycap figure and its baseline
# are medians of ROUNDS (default 3) alternating runs. Needs nginx and wrk
# (apt-get install nginx-light wrk), the PostgreSQL server binaries, and root or a user that can
# run PostgreSQL. Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_CELL=${1:-5}
# INSTRUCTIONS=1: instead of timing, count the instructions each proxy runs per request under
# valgrind's callgrind (deterministic, so unaffected by a noisy machine), and stop there.
# INSTRUCTIONS_KEEP=DIR (an absolute path: the script runs from the repository's root) keeps
# the callgrind dumps there for callgrind_annotate.
INSTRUCTIONS=${INSTRUCTIONS:-}
# It needs no many-keys warm-up (that would take an hour under valgrind): 10 keys only.
if [ -n "$INSTRUCTIONS" ]; then N_KEYS_LARGE=10; fi
N_KEYS_LARGE=${N_KEYS_LARGE:-100000}

for tool in nginx wrk taskset ${INSTRUCTIONS:+valgrind callgrind_control}; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk util-linux valgrind" >&2; exit 1; }
done
# shellcheck source=benches/load/common.sh
. benches/load/common.sh

echo "building release binaries (keycap, passthrough)..." >&2
cargo build --release -q -p keycap -p benches --bin keycap --bin passthrough
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# BENCH_KEYCAP=PATH measures another build of keycap (another commit's, say) against the same
# passthrough.
KEYCAP=${BENCH_KEYCAP:-$TARGET_DIR/release/keycap}
PASSTHROUGH=$TARGET_DIR/release/passthrough

start_work load

# Each proxy runs under callgrind in INSTRUCTIONS mode, as is otherwise.
WRAP=()
if [ -n "$INSTRUCTIONS" ]; then WRAP=(valgrind -q --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p"); fi
NGINX_PORT=$(port); PASS_PORT=$(port); GW_PORT=$(port); METRICS_PORT=$(port)

# --- the upstream: nginx answering like OpenRouter, from memory ---------------------------------
start_upstream 1 "$NGINX_PORT"

# --- the bare passthrough ---------------------------------------------------------------------------
# shellcheck disable=SC2086 # PASSTHROUGH_ARGS is a list of arguments
taskset -c 0 "${WRAP[@]}" "$PASSTHROUGH" "127.0.0.1:$PASS_PORT" "127.0.0.1:$NGINX_PORT" 1 ${PASSTHROUGH_ARGS:-} 2>"$WORK/passthrough.log" &
PIDS+=($!)

# --- keycap: its database on core 1, the gateway on core 0 -----------------------------------------
start_keycap_database "${PG_CORE:-1}" 1000000000
echo "sk-or-v1-bench" | "$KEYCAP" vault add --org bench --name nginx 2>/dev/null >/dev/null
insert_bench_keys "$N_KEYS_LARGE"
KEYCAP_OPENROUTER__BASE_URL=http://127.0.0.1:$NGINX_PORT KEYCAP_GATEWAY__LISTEN=127.0.0.1:$GW_PORT \
KEYCAP_METRICS__LISTEN=127.0.0.1:$METRICS_PORT KEYCAP_GATEWAY__THREADS=1 KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS=0 \
KEYCAP_GATEWAY__FLUSH_INTERVAL_MS=${FLUSH_MS:-1000} \
  taskset -c 0 "${WRAP[@]}" "$KEYCAP" up 2>"$WORK/keycap.log" &
PIDS+=($!)

# --- wrk: one request shape for every system; the token rotates over N keys ----------------------
write_bench_lua

wait_ok() { # URL STREAM
  # Up to 30 s; under valgrind keycap starts ten times slower.
  local tries=300
  if [ -n "$INSTRUCTIONS" ]; then tries=3000; fi
  for _ in $(seq 1 "$tries"); do
    if curl -sf -o /dev/null -X POST "$1/api/v1/chat/completions" -H "Authorization: Bearer kc_$(printf '%048x' 1)" \
         -H 'Content-Type: application/json' -d '{"model":"bench/model","messages":[],"max_tokens":64}'; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $1" >&2; cat "$WORK/keycap.log" >&2; exit 1
}
wait_ok "http://127.0.0.1:$NGINX_PORT"; wait_ok "http://127.0.0.1:$PASS_PORT"; wait_ok "http://127.0.0.1:$GW_PORT"

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v}'; }
# Waits until keycap has flushed everything it settled, so that one run's flush (a large one
# after a run over many keys) does not land in the next run.
# It also waits for Postgres's autovacuum workers, which a run over many keys (many updated
# rows) wakes, and which would otherwise take CPU from the load generator during the next run.
settle_flushes() {
  # The lag gauge is set at each flush tick: wait for the tick after the run first.
  sleep "$(awk -v ms="${FLUSH_MS:-1000}" 'BEGIN { print ms / 1000 + 0.2 }')"
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -qx 'gateway_flush_lag_seconds 0' && break
    sleep 0.1
  done
  for _ in $(seq 1 600); do
    [ "$("${PSQL[@]}" -tAc "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && return 0
    sleep 0.1
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU ticks of the postmaster, of every backend it forked that is still running, and (through
# the postmaster's cutime and cstime) of those that have exited.
pg_ticks() {
  local pm; pm=$(head -1 "$WORK/data/postgres/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  local total; total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat" 2>/dev/null || echo 0)
  for child in $(pgrep -P "$pm"); do total=$((total + $(cpu_ticks "$child"))); done
  echo "$total"
}
measure() { # URL CONNS STREAM N_KEYS [PID] -> "rps p50_ms p99_ms cpu_percent_of_PID"
  settle_flushes
  local out before after
  local pg_before pg_after
  before=$(cpu_ticks "${5:-self}"); pg_before=$(pg_ticks)
  out=$(N_KEYS=$4 STREAM=$3 taskset -c 1 wrk -t1 -c"$2" -d"${SECONDS_PER_CELL}s" --timeout 30s --latency -s "$WORK/bench.lua" "$1")
  after=$(cpu_ticks "${5:-self}"); pg_after=$(pg_ticks)
  if echo "$out" | grep -q "Non-2xx"; then echo "non-2xx answers from $1:" >&2; echo "$out" >&2; exit 1; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  local cpu pg_cpu
  cpu=$(awk -v a="$before" -v b="$after" -v t="$(getconf CLK_TCK)" -v d="$SECONDS_PER_CELL" 'BEGIN { printf "%.0f", (b - a) / t / d * 100 }')
  # Backends that exited during the run take their ticks with them: never below 0.
  pg_cpu=$(awk -v a="$pg_before" -v b="$pg_after" -v t="$(getconf CLK_TCK)" -v d="$SECONDS_PER_CELL" 'BEGIN { v = (b - a) / t / d * 100; printf "%.0f", (v < 0 ? 0 : v) }')
  echo "$rps $p50 $p99 $cpu $pg_cpu"
}

echo "warming keycap's cache with $N_KEYS_LARGE keys..." >&2
cached_keys() { curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1=="gateway_cache_keys" {print $2}'; }
# Each key not yet cached costs a database query, so warm until every key is in (or give up).
for _ in $(seq 1 10); do
  N_KEYS=$N_KEYS_LARGE STREAM=0 taskset -c 1 wrk -t1 -c64 -d"$((SECONDS_PER_CELL * 3))s" -s "$WORK/bench.lua" "http://127.0.0.1:$GW_PORT" >/dev/null
  [ "$(cached_keys)" -ge "$N_KEYS_LARGE" ] && break
done
echo "keycap caches $(cached_keys) keys" >&2

if [ -n "$INSTRUCTIONS" ]; then
  # Counters are zeroed before a run and dumped after it: instructions of every thread of the
  # process (the flusher's too) over the requests of that run.
  # A failure here exits the script (the callers check), rather than print a wrong count.
  per_request() { # PID URL STREAM -> instructions per request
    local out n file said
    # callgrind_control reports each command on stderr: shown only when it fails.
    said=$(callgrind_control -z "$1" 2>&1) || { echo "$said" >&2; return 1; }
    out=$(N_KEYS=10 STREAM=$3 taskset -c 1 wrk -t1 -c8 -d"${SECONDS_PER_CELL}s" --timeout 30s -s "$WORK/bench.lua" "$2")
    if echo "$out" | grep -q -E "Non-2xx|Socket errors"; then echo "failed requests to $2:" >&2; echo "$out" >&2; return 1; fi
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    said=$(callgrind_control -d "$1" 2>&1) || { echo "$said" >&2; return 1; }
    # Dumps are numbered in order: the highest is this run's.
    file=$(ls "$WORK"/callgrind."$1".* | sort -t. -k3 -n | tail -1)
    awk -v n="$n" '/^summary:/ { printf "%.0f", $2 / n; exit }' "$file"
    # INSTRUCTIONS_KEEP=DIR keeps each run's dump for callgrind_annotate, with its request count.
    if [ -n "${INSTRUCTIONS_KEEP:-}" ]; then
      mkdir -p "$INSTRUCTIONS_KEEP"
      cp "$file" "$INSTRUCTIONS_KEEP/$([ "$1" = "${PIDS[0]}" ] && echo passthrough || echo keycap)-$([ "$3" = 1 ] && echo stream || echo json).$n-requests.callgrind"
    fi
  }
  printf '\ninstructions per request (callgrind, 8 connections):\n%-8s %14s %14s %10s\n' format passthrough keycap ratio
  for stream in 0 1; do
    b=$(per_request "${PIDS[0]}" "http://127.0.0.1:$PASS_PORT" "$stream") || exit 1
    k=$(per_request "${PIDS[1]}" "http://127.0.0.1:$GW_PORT" "$stream") || exit 1
    awk -v f="$([ "$stream" = 1 ] && echo stream || echo json)" -v b="$b" -v k="$k" \
      'BEGIN { printf "%-8s %14d %14d %10.3f\n", f, b, k, k / b }'
  done
  exit 0
fi

if [ -n "${HOLD:-}" ]; then
  # For manual probes (perf, strace): leave everything running until interrupted.
  cat >&2 <<HELD
holding; Ctrl-C (or kill $$) stops everything.
  passthrough: http://127.0.0.1:$PASS_PORT (pid ${PIDS[0]})
  keycap:      http://127.0.0.1:$GW_PORT (pid ${PIDS[1]}), metrics http://127.0.0.1:$METRICS_PORT/metrics
  load:        N_KEYS=10 STREAM=0 taskset -c 1 wrk -t1 -c128 -d5s --latency -s $WORK/bench.lua URL
HELD
  # In the background and waited for, so that a signal stops it at once.
  while true; do sleep 3600 & wait $!; done
fi

if [ -n "${PROFILE_KEYCAP:-}" ]; then
  # Optional: a CPU profile of keycap under streamed load at 128 connections (perf record).
  echo "profiling keycap into $PROFILE_KEYCAP..." >&2
  perf record -F ${PROFILE_HZ:-999} -g -o "$PROFILE_KEYCAP" -p "${PIDS[${PROFILE_PID_INDEX:-1}]}" -- sleep "$SECONDS_PER_CELL" >/dev/null 2>&1 &
  measure "http://127.0.0.1:$([ "${PROFILE_PID_INDEX:-1}" = 0 ] && echo "$PASS_PORT" || echo "$GW_PORT")" 128 "${PROFILE_STREAM:-1}" "${PROFILE_N_KEYS:-10}" >/dev/null
  wait $!
fi

ROUNDS=${ROUNDS:-3}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# ROUNDS pairs of runs, the baseline and keycap back to back (which goes first alternates), so
# that a noisy moment on this shared machine hits both runs of a pair. Gives the median of each
# column, and the median, lowest and highest of the pairs' throughput ratios and the median of
# their p99 differences.
measure_pair() { # CONNS STREAM N_KEYS -> "b_rps b_p50 b_p99 b_cpu k_rps k_p50 k_p99 k_cpu ratio lo hi p99_diff"
  local b=() k=() ratios=() p99_diffs=() round=0 b_run k_run
  for _ in $(seq 1 "$ROUNDS"); do
    round=$((round + 1))
    if [ $((round % 2)) = 1 ]; then
      b_run=$(measure "http://127.0.0.1:$PASS_PORT" "$1" "$2" "$3" "${PIDS[0]}")
      k_run=$(measure "http://127.0.0.1:$GW_PORT" "$1" "$2" "$3" "${PIDS[1]}")
    else
      k_run=$(measure "http://127.0.0.1:$GW_PORT" "$1" "$2" "$3" "${PIDS[1]}")
      b_run=$(measure "http://127.0.0.1:$PASS_PORT" "$1" "$2" "$3" "${PIDS[0]}")
    fi
    b+=("$b_run"); k+=("$k_run")
    ratios+=("$(awk -v b="${b_run%% *}" -v k="${k_run%% *}" 'BEGIN { print k / b }')")
    p99_diffs+=("$(echo "$b_run $k_run" | awk '{ print $8 - $3 }')")
  done
  local out=""
  for side in b k; do
    local -n runs=$side
    for col in 1 2 3 4; do out+="$(printf '%s\n' "${runs[@]}" | awk -v c=$col '{print $c}' | median) "; done
  done
  out+="$(printf '%s\n' "${ratios[@]}" | median) "
  out+="$(printf '%s\n' "${ratios[@]}" | sort -g | head -1) $(printf '%s\n' "${ratios[@]}" | sort -g | tail -1) "
  out+="$(printf '%s\n' "${p99_diffs[@]}" | median)"
  echo "$out"
}

if [ -n "${UPLOADS:-}" ]; then
  # 64 concurrent 8 MiB uploads (UPLOADS=COUNTxMIB to change): each proxy's peak resident
  # memory (VmHWM, reset first through clear_refs) against the bytes in flight. Each client
  # sends at 4 MB/s, so every upload is still arriving when the last one starts: all are in
  # flight at once.
  n_up=${UPLOADS%x*}; mib_up=${UPLOADS#*x}
  [ "$UPLOADS" = 1 ] && { n_up=64; mib_up=8; }
  python3 - "$WORK/upload.json" "$mib_up" <<'PY'
import sys
size = int(sys.argv[2]) * 1024 * 1024
head = '{"model":"bench/model","max_tokens":64,"messages":[{"role":"user","content":"'
tail = '"}]}'
with open(sys.argv[1], "w") as f:
    f.write(head + "x" * (size - len(head) - len(tail)) + tail)
PY
  rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
  printf '\n%d concurrent uploads of %d MiB (%d MiB in flight):\n%-12s %12s %12s %12s %10s\n' "$n_up" "$mib_up" $((n_up * mib_up)) system "idle MiB" "peak MiB" "peak/flight" "answers"
  for pair in "passthrough:${PIDS[0]}:$PASS_PORT" "keycap:${PIDS[1]}:$GW_PORT"; do
    IFS=: read -r name pid p <<<"$pair"
    settle_flushes
    idle=$(rss_kib "$pid" VmRSS)
    echo 5 > "/proc/$pid/clear_refs"
    answers=$(seq 1 "$n_up" | taskset -c 1 xargs -P "$n_up" -I{} curl -s -o /dev/null -w '%{http_code}\n' --limit-rate 4M \
      -H "Authorization: Bearer kc_$(printf '%048x' 1)" -H 'Content-Type: application/json' \
      --data-binary @"$WORK/upload.json" "http://127.0.0.1:$p/api/v1/chat/completions" | sort | uniq -c | awk '{printf "%s:%s ", $2, $1}')
    peak=$(rss_kib "$pid" VmHWM)
    awk -v s="$name" -v i="$idle" -v p="$peak" -v f=$((n_up * mib_up)) -v a="$answers" \
      'BEGIN { printf "%-12s %12.0f %12.0f %12.2f %10s\n", s, i / 1024, p / 1024, p / 1024 / f, a }'
  done
  exit 0
fi

if [ -z "${ONLY_MANY_KEYS:-}" ]; then
printf '\n%-8s %-6s %-12s %12s %10s %10s %10s %12s %12s %8s\n' "format" "conns" "system" "req/s" "p50 ms" "p99 ms" "x bare" "(pairs)" "p99-bare ms" "cpu %"
for stream in ${FORMATS:-0 1}; do
  format=$([ "$stream" = 1 ] && echo stream || echo json)
  for conns in ${CONNS:-1 32 128}; do
    read -r n_rps n_p50 n_p99 _ < <(measure "http://127.0.0.1:$NGINX_PORT" "$conns" "$stream" 10)
    read -r b_rps b_p50 b_p99 b_cpu k_rps k_p50 k_p99 k_cpu ratio lo hi p99_diff < <(measure_pair "$conns" "$stream" 10)
    # nginx and the passthrough against the passthrough's medians; keycap by its pairs.
    for system in nginx passthrough keycap; do
      case $system in
        nginx) rps=$n_rps; p50=$n_p50; p99=$n_p99; cpu=-; x=$(awk -v r="$n_rps" -v b="$b_rps" 'BEGIN { print r / b }'); range=""; diff=$(awk -v a="$n_p99" -v b="$b_p99" 'BEGIN { print a - b }') ;;
        passthrough) rps=$b_rps; p50=$b_p50; p99=$b_p99; cpu=$b_cpu; x=1; range=""; diff=0 ;;
        keycap) rps=$k_rps; p50=$k_p50; p99=$k_p99; cpu=$k_cpu; x=$ratio; range=$(awk -v l="$lo" -v h="$hi" 'BEGIN { printf "%.2f-%.2f", l, h }'); diff=$p99_diff ;;
      esac
      awk -v f="$format" -v c="$conns" -v s="$system" -v r="$rps" -v a="$p50" -v b="$p99" -v x="$x" -v g="$range" -v d="$diff" -v u="$cpu" \
        'BEGIN { printf "%-8s %-6s %-12s %12.0f %10.3f %10.3f %10.2f %12s %12.3f %8s\n", f, c, s, r, a, b, x, g, d, u }'
    done
  done
done

fi
[ -n "${SKIP_MANY_KEYS:-}" ] && exit 0

echo
echo "keycap with many keys in its cache (json, 128 connections):"
small=(); large=(); ratios=(); round=0
for _ in $(seq 1 "$ROUNDS"); do
  round=$((round + 1))
  if [ $((round % 2)) = 1 ]; then
    s_run=$(measure "http://127.0.0.1:$GW_PORT" 128 0 10 "${PIDS[1]}")
    l_run=$(measure "http://127.0.0.1:$GW_PORT" 128 0 "$N_KEYS_LARGE" "${PIDS[1]}")
  else
    l_run=$(measure "http://127.0.0.1:$GW_PORT" 128 0 "$N_KEYS_LARGE" "${PIDS[1]}")
    s_run=$(measure "http://127.0.0.1:$GW_PORT" 128 0 10 "${PIDS[1]}")
  fi
  small+=("$s_run"); large+=("$l_run")
  ratios+=("$(awk -v s="${s_run%% *}" -v l="${l_run%% *}" 'BEGIN { print l / s }')")
done
col_median() { local c=$1; shift; printf '%s\n' "$@" | awk -v c="$c" '{print $c}' | median; }
awk -v s="$(col_median 1 "${small[@]}")" -v l="$(col_median 1 "${large[@]}")" -v n="$N_KEYS_LARGE" \
    -v sp="$(col_median 3 "${small[@]}")" -v lp="$(col_median 3 "${large[@]}")" \
    -v sc="$(col_median 4 "${small[@]}")" -v lc="$(col_median 4 "${large[@]}")" \
    -v sg="$(col_median 5 "${small[@]}")" -v lg="$(col_median 5 "${large[@]}")" \
    -v r="$(printf '%s\n' "${ratios[@]}" | median)" -v lo="$(printf '%s\n' "${ratios[@]}" | sort -g | head -1)" \
    -v hi="$(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)" -v k="$ROUNDS" \
  'BEGIN { printf "  10 keys: %.0f req/s (p99 %.3f ms, keycap cpu %s%%, postgres cpu %s%%)\n  %d keys: %.0f req/s (p99 %.3f ms, keycap cpu %s%%, postgres cpu %s%%)\n  ratio: %.3f (median of %d pairs; %.2f-%.2f)\n", s, sp, sc, sg, n, l, lp, lc, lg, r, k, lo, hi }'
