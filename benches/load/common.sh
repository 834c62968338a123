# The set-up the load scripts share (sourced by run.sh and streams.sh, from the repository's
# root): the PostgreSQL binaries, a work folder whose processes and cluster are stopped on exit,
# free loopback ports, and keycap's embedded cluster with an org and a member.

PGBIN=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
if [ "$(id -u)" = 0 ]; then PGCTL=(runuser -u postgres -- "$PGBIN/pg_ctl"); else PGCTL=("$PGBIN/pg_ctl"); fi

# WORK (named after $1), and PIDS: the processes to stop, with the cluster and any nginx, on
# exit; then the folder goes.
start_work() { # NAME
  WORK=$(mktemp -d "/tmp/keycap-$1-XXXXXX")
  chmod 755 "$WORK"
  PIDS=()
  trap cleanup EXIT
  trap "exit 130" INT TERM
}
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Let them exit (under valgrind, after writing their last profile) before their files go.
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  if [ -f "$WORK/data/postgres/postmaster.pid" ]; then
    "${PGCTL[@]}" -D "$WORK/data/postgres" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# keycap's embedded cluster in $WORK/data, its server pinned to CORE, with org `bench` and
# member user@bench.example given BUDGET dollars a month.
start_keycap_database() { # CORE BUDGET
  export KEYCAP_DATA_DIR=$WORK/data KEYCAP_LOG=warn
  "$KEYCAP" org create bench --owner owner@bench.example >/dev/null 2>&1
  taskset -c "$1" "${PGCTL[@]}" -D "$WORK/data/postgres" -l "$WORK/data/postgres/server.log" -w start >/dev/null
  "$KEYCAP" member add --org bench user@bench.example --budget "$2" 2>/dev/null
}

# The upstream: nginx answering like OpenRouter from memory (a model list, a chat answer in
# JSON, and as a stream when the URL asks with ?stream=1), on PORT, pinned to CORE.
start_upstream() { # CORE PORT
local core=$1 port=$2
MODELS='{"data":[{"id":"bench/model","name":"Bench","context_length":8192,"pricing":{"prompt":"0.000001","completion":"0.000002","request":"0","image":"0","web_search":"0","internal_reasoning":"0"},"top_provider":{"context_length":8192,"max_completion_tokens":4096,"is_moderated":false}}]}'
JSON='{"id":"gen-bench","object":"chat.completion","created":1,"model":"bench/model","provider":"Bench","choices":[{"index":0,"finish_reason":"stop","native_finish_reason":"stop","message":{"role":"assistant","content":"alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa"}}],"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28,"cost":0.000044,"is_byok":false}}'
SSE=": OPENROUTER PROCESSING\n\n"
for word in alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa; do
  SSE+="data: {\"id\":\"gen-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench/model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" $word\"},\"finish_reason\":null}]}\n\n"
done
SSE+="data: {\"id\":\"gen-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench/model\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":16,\"total_tokens\":28,\"cost\":0.000044}}\n\ndata: [DONE]\n\n"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_buffer_size 64k;
  client_max_body_size 512m;
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location = /api/v1/models { default_type application/json; return 200 '$MODELS'; }
    location = /api/v1/chat/completions {
      if (\$arg_stream) { rewrite ^ /sse last; }
      default_type application/json; return 200 '$JSON';
    }
    location = /sse { internal; default_type text/event-stream; return 200 '$(printf '%b' "$SSE")'; }
  }
}
NGINX
taskset -c "$core" nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon on;'
}

# N bench keys for user@bench.example, tokens kc_<48 hex digits of 1..N>, each with a cap of
# $1,000,000; PSQL reaches keycap's cluster.
insert_bench_keys() { # N
PSQL=("$PGBIN/psql" -h "$WORK/data/postgres-run" -U keycap -d keycap -q -v ON_ERROR_STOP=1)
[ "$(id -u)" = 0 ] && PSQL=(runuser -u postgres -- "${PSQL[@]}")
echo "inserting $1 bench keys..." >&2
"${PSQL[@]}" <<SQL
INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash, prefix, cap_nanousd, period_start)
SELECT gen_random_uuid(), m.org_id, m.id, mk.id, 'openrouter', 'bench-' || i,
       sha256(convert_to('kc_' || lpad(to_hex(i), 48, '0'), 'UTF8')),
       substr('kc_' || lpad(to_hex(i), 48, '0'), 1, 11), 1000000000000000, date_trunc('month', now())::date
FROM generate_series(1, $1) AS i,
     memberships m JOIN users u ON u.id = m.user_id AND u.email = 'user@bench.example',
     master_keys mk;
SQL
}

# wrk's script: one request shape for every system (a small chat request; BODY_KIB makes it
# larger, STREAM=1 streamed); the token rotates over N_KEYS bench keys.
write_bench_lua() {
cat > "$WORK/bench.lua" <<'LUA'
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args)
  n_keys = tonumber(os.getenv("N_KEYS") or "10")
  counter = id * 7919
  -- BODY_KIB: a chat request of about that size, a long user message (the default: 120 bytes).
  local filler = string.rep("Tell me about budgets. ", math.floor(tonumber(os.getenv("BODY_KIB") or "0") * 1024 / 23))
  body = '{"model":"bench/model","messages":[{"role":"user","content":"' .. filler .. 'Tell me about budgets."}],"max_tokens":64' ..
    (os.getenv("STREAM") == "1" and ',"stream":true}' or '}')
  path = "/api/v1/chat/completions" .. (os.getenv("STREAM") == "1" and "?stream=1" or "")
end
-- DELAY_MS=D: each connection waits D ms between requests (a client at its own pace).
local pause = tonumber(os.getenv("DELAY_MS") or "")
if pause then function delay() return pause end end
function request()
  counter = counter + 1
  local token = string.format("kc_%048x", (counter % n_keys) + 1)
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
LUA
}
