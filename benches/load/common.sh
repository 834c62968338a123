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
