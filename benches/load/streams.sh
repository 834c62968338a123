#!/usr/bin/env bash
# Many streams held open at once, the shape of real LLM traffic: STREAMS (default 5,000)
# streamed chat requests, each TOKENS (30) tokens one DELAY_MS (1,000) apart, so held open 30 s,
# opened over RAMP_MS (10,000), through the bare pingora passthrough and through keycap, one
# after the other, each in front of the OpenRouter mock (`keycap mock-openrouter`). For each:
# the proxy's peak resident memory, its CPU time per stream, and how late the chunks arrive
# (the client, benches/src/bin/streams.rs, measures each token against its due time); and
# keycap's figures against the passthrough's.
#
# Usage: benches/load/streams.sh   (about 2 × (30 s + ramp) plus start-up)
# Like run.sh: the proxy on core 0, the mock, the client and Postgres on core 1; everything on
# 127.0.0.1, stopped on exit. Needs the PostgreSQL server binaries, root (or a user that can run
# PostgreSQL), and an open-files limit of at least 2 × STREAMS + 1000.
set -euo pipefail
cd "$(dirname "$0")/../.."
STREAMS=${STREAMS:-5000}; TOKENS=${TOKENS:-30}; DELAY_MS=${DELAY_MS:-1000}; RAMP_MS=${RAMP_MS:-10000}
# A proxy holds two descriptors per stream (the client's and the upstream's).
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * STREAMS + 1000)) ]; then
  echo "the open-files limit ($(ulimit -n)) is too low for $STREAMS streams: raise it (ulimit -Hn)" >&2; exit 1
fi
# shellcheck source=benches/load/common.sh
. benches/load/common.sh

echo "building release binaries (keycap, passthrough, streams)..." >&2
cargo build --release -q -p keycap -p benches --bin keycap --bin passthrough --bin streams
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
KEYCAP=$TARGET_DIR/release/keycap
PASSTHROUGH=$TARGET_DIR/release/passthrough
CLIENT=$TARGET_DIR/release/streams

start_work streams
MOCK_PORT=$(port); PASS_PORT=$(port); GW_PORT=$(port); METRICS_PORT=$(port)

# --- the upstream: the OpenRouter mock, whose `slow` fault spaces the tokens -------------------
taskset -c 1 "$KEYCAP" mock-openrouter --listen "127.0.0.1:$MOCK_PORT" 2>"$WORK/mock.log" &
PIDS+=($!)
# --- the bare passthrough -----------------------------------------------------------------------
taskset -c 0 "$PASSTHROUGH" "127.0.0.1:$PASS_PORT" "127.0.0.1:$MOCK_PORT" 1 --read-ahead 2>"$WORK/passthrough.log" &
PIDS+=($!)
# --- keycap, with one key whose cap covers every stream ------------------------------------------
start_keycap_database 1 1000000
# The mock's master key (openrouter-mock's MockConfig::default): keycap's master key, and what
# the client sends the passthrough, which forwards the client's own header.
MASTER="sk-or-v1-$(printf '6d6f636b%.0s' $(seq 8))"
echo "$MASTER" | "$KEYCAP" vault add --org bench --name mock 2>/dev/null >/dev/null
TOKEN=$("$KEYCAP" key create --org bench --member user@bench.example --name streams --cap 100000 2>/dev/null)
KEYCAP_OPENROUTER__BASE_URL=http://127.0.0.1:$MOCK_PORT KEYCAP_GATEWAY__LISTEN=127.0.0.1:$GW_PORT \
KEYCAP_METRICS__LISTEN=127.0.0.1:$METRICS_PORT KEYCAP_GATEWAY__THREADS=1 KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS=0 \
  taskset -c 0 "$KEYCAP" up 2>"$WORK/keycap.log" &
PIDS+=($!)
for _ in $(seq 1 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/api/v1/key" -H "Authorization: Bearer $TOKEN" \
    && grep -q "loaded upstream prices" "$WORK/keycap.log" && break
  sleep 0.1
done

rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # NAME PID PORT KEY -> "name ok chunks p50 p99 max errors idle_mib peak_mib cpu_ms_per_stream"
  local idle before after out
  idle=$(rss_kib "$2" VmRSS)
  echo 5 > "/proc/$2/clear_refs"
  before=$(cpu_ticks "$2")
  out=$(taskset -c 1 "$CLIENT" "http://127.0.0.1:$3" "$STREAMS" "$TOKENS" "$DELAY_MS" "$RAMP_MS" "$4")
  after=$(cpu_ticks "$2")
  echo "$1 $out $(awk -v i="$idle" -v p="$(rss_kib "$2" VmHWM)" -v a="$before" -v b="$after" -v t="$(getconf CLK_TCK)" -v n="$STREAMS" \
    'BEGIN { printf "%.0f %.0f %.3f", i / 1024, p / 1024, (b - a) / t * 1000 / n }')"
}
echo "holding $STREAMS streams of $TOKENS tokens, one every $DELAY_MS ms, opened over $RAMP_MS ms..." >&2
base=$(run passthrough "${PIDS[1]}" "$PASS_PORT" "$MASTER")
keycap=$(run keycap "${PIDS[2]}" "$GW_PORT" "$TOKEN")
printf '\n%-12s %8s %9s %10s %10s %10s %7s %9s %9s %13s\n' system streams chunks "late p50" "late p99" "late max" errors "idle MiB" "peak MiB" "cpu ms/stream"
for line in "$base" "$keycap"; do
  echo "$line" | awk '{ printf "%-12s %8d %9d %10.3f %10.3f %10.3f %7d %9d %9d %13.3f\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
done
echo "$base $keycap" | awk '{ printf "\nkeycap against the passthrough: peak memory %.2fx (%+.0f MiB, %.1f KiB per stream), cpu per stream %.2fx, chunk lateness p50 %+.3f ms, p99 %+.3f ms\n", $19 / $9, $19 - $9, ($19 - $18) * 1024 / $12, $20 / $10, $14 - $4, $15 - $5 }'
