#!/usr/bin/env bash
# A flood of made-up tokens against one gateway, while a real key's requests are timed: the
# real key's p50 and p99 with and without the flood, and the made-up tokens answered per
# second, medians of ROUNDS paired rounds (which goes first alternates), all from this run.
# The gateway (one worker thread) is pinned to core 0; wrk, nginx and Postgres to core 1.
# Usage: benches/load/flood.sh [SECONDS_PER_RUN] (default 10). Needs what run.sh needs.
# FLOOD_DELAY_MS=D paces the flood: each of its connections waits D ms between requests (so
# about FLOOD_CONNS * 1000 / D tokens a second at most); unset, it sends as fast as it can.
# FLOOD_JITTER=1 makes each wait a random one between 0 and 2 * FLOOD_DELAY_MS ms (the same
# mean): the connections drift apart rather than sending in step, in bursts of FLOOD_CONNS.
# REAL_DELAY_MS=D paces the real key the same way: a client at its own pace rather than one
# that keeps the gateway's core busy on its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_CELL=${1:-10}
ROUNDS=${ROUNDS:-3}
FLOOD_CONNS=${FLOOD_CONNS:-64}
REAL_CONNS=${REAL_CONNS:-4}
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk util-linux" >&2; exit 1; }
done
# shellcheck source=benches/load/common.sh
. benches/load/common.sh

echo "building keycap..." >&2
cargo build --release -q -p keycap --bin keycap
KEYCAP=${CARGO_TARGET_DIR:-$PWD/target}/release/keycap

start_work flood
NGINX_PORT=$(port); GW_PORT=$(port); METRICS_PORT=$(port)
start_upstream 1 "$NGINX_PORT"
start_keycap_database 1 1000000000
echo "sk-or-v1-bench" | "$KEYCAP" vault add --org bench --name nginx >/dev/null 2>&1
insert_bench_keys 10
write_bench_lua
cat > "$WORK/flood.lua" <<'LUA'
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args) math.randomseed(os.time() * 1000 + id) end
local pause = tonumber(os.getenv("FLOOD_DELAY_MS") or "")
local jitter = os.getenv("FLOOD_JITTER") == "1"
if pause and jitter then function delay() return math.random(0, 2 * pause) end
elseif pause then function delay() return pause end end
local digits = {}
function request()
  for i = 1, 48 do digits[i] = string.format("%x", math.random(0, 15)) end
  return wrk.format("POST", "/api/v1/chat/completions",
    {["Authorization"] = "Bearer kc_" .. table.concat(digits), ["Content-Type"] = "application/json"},
    '{"model":"bench/model","messages":[],"max_tokens":64}')
end
LUA
KEYCAP_DATABASE__URL="host=$WORK/data/postgres-run user=keycap dbname=keycap" \
KEYCAP_OPENROUTER__BASE_URL=http://127.0.0.1:$NGINX_PORT KEYCAP_GATEWAY__LISTEN=127.0.0.1:$GW_PORT \
KEYCAP_METRICS__LISTEN=127.0.0.1:$METRICS_PORT KEYCAP_GATEWAY__THREADS=1 KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS=0 \
  taskset -c 0 "$KEYCAP" gateway >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$GW_PORT/api/v1/chat/completions" -H "Authorization: Bearer kc_$(printf '%048x' 1)" \
    -H 'Content-Type: application/json' -d '{"model":"bench/model","messages":[],"max_tokens":64}' && break
  sleep 0.1
done

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v}'; }
real() { # -> "rps p50_ms p99_ms"
  local out; out=$(N_KEYS=10 STREAM=0 DELAY_MS=${REAL_DELAY_MS:-} taskset -c 1 wrk -t1 -c"$REAL_CONNS" -d"${SECONDS_PER_CELL}s" --latency -s "$WORK/bench.lua" "http://127.0.0.1:$GW_PORT")
  if echo "$out" | grep -q "Non-2xx"; then echo "the real key was refused:" >&2; echo "$out" >&2; exit 1; fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="50%" {print $2}' | to_ms) $(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)"
}
flooded() { # -> "rps p50_ms p99_ms flood_rps"
  taskset -c 1 wrk -t1 -c"$FLOOD_CONNS" -d"$((SECONDS_PER_CELL + 2))s" -s "$WORK/flood.lua" "http://127.0.0.1:$GW_PORT" > "$WORK/flood.out" &
  local flood=$!
  sleep 1
  local r; r=$(real)
  wait "$flood"
  echo "$r $(awk '/Requests\/sec/ {print $2}' "$WORK/flood.out")"
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
quiet=(); loud=(); ratios=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then q=$(real); l=$(flooded); else l=$(flooded); q=$(real); fi
  quiet+=("$q"); loud+=("$l")
  ratios+=("$(awk -v q="$(echo "$q" | cut -d' ' -f3)" -v l="$(echo "$l" | cut -d' ' -f3)" 'BEGIN { print l / q }')")
done
col() { local c=$1; shift; printf '%s\n' "$@" | awk -v c="$c" '{print $c}' | median; }
printf '\nreal key (%d connections%s) with and without %d connections of made-up tokens%s, medians of %d pairs:\n' "$REAL_CONNS" "${REAL_DELAY_MS:+, each waiting $REAL_DELAY_MS ms between requests}" "$FLOOD_CONNS" "${FLOOD_DELAY_MS:+ (each waiting ${FLOOD_JITTER:+0 to 2 x }$FLOOD_DELAY_MS ms between requests)}" "$ROUNDS"
printf '  quiet:   %8.0f req/s  p50 %.3f ms  p99 %.3f ms\n' "$(col 1 "${quiet[@]}")" "$(col 2 "${quiet[@]}")" "$(col 3 "${quiet[@]}")"
printf '  flooded: %8.0f req/s  p50 %.3f ms  p99 %.3f ms  (made-up tokens answered: %.0f/s)\n' "$(col 1 "${loud[@]}")" "$(col 2 "${loud[@]}")" "$(col 3 "${loud[@]}")" "$(col 4 "${loud[@]}")"
printf '  p99 flooded / quiet: %.2f (pairs %s)\n' "$(printf '%s\n' "${ratios[@]}" | median)" "$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{printf "%s%.2f", (NR>1?" ":""), $1}')"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^gateway_key_lookups_in_flight_peak|^gateway_refusals_total\{reason="(unknown_key|lookups_busy)"' | sed 's/^/  /'
