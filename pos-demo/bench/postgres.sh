#!/usr/bin/env bash
# The hub on PostgreSQL against the hub on SQLite, in the same run
# (docs/benchmarks.md, "The hub on PostgreSQL"). Starts a private PostgreSQL 15
# cluster in a temporary directory (as user `nobody` when run as root), then
# for each of RUNS rounds, alternating:
#   - fleet: two hub processes on one PostgreSQL database, tills spread over
#     both, against one hub process on SQLite;
#   - storm: the checkout storm against one hub process on PostgreSQL and one
#     on SQLite;
#   - failover: the fleet on two PostgreSQL hubs with one of them killed
#     (SIGKILL) KILL_AFTER seconds into the run;
#   - the disk's baseline first: durable 8 kB writes per second with
#     fdatasync (pg_test_fsync), so figures of different days compare.
# Prints one JSON line per measurement, tagged, on stdout.
#
#   pos-demo/bench/postgres.sh [fleet|storm|failover|baseline|all]
#
# Uses the release binaries (cargo build --release -p omnisync-hub -p omnisync-pos).
set -euo pipefail

what=${1:-all}
RUNS=${RUNS:-3}
KILL_AFTER=${KILL_AFTER:-4}
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
hub_bin=$target/release/omnisync-hub
demo_bin=$target/release/pos-demo
pg_bin=${OMNISYNC_PG_BIN:-/usr/lib/postgresql/15/bin}
for binary in "$hub_bin" "$demo_bin" "$pg_bin/initdb"; do
  [[ -x $binary ]] || { echo "missing $binary (cargo build --release -p omnisync-hub -p omnisync-pos; apt-get install postgresql-15)" >&2; exit 2; }
done

work=$(mktemp -d)
chmod 755 "$work"
pg_port=$(( 20000 + RANDOM % 20000 ))
as_pg=()
if [[ $(id -u) == 0 ]]; then as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi
hubs=()
cleanup() {
  for pid in "${hubs[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/pg" "$work/sock"
[[ $(id -u) == 0 ]] && chown nobody "$work/pg" "$work/sock"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/sock/server.log" -w start \
  -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$work/sock -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=256MB" >/dev/null
n=0
fresh_db() {
  n=$((n + 1))
  "${as_pg[@]}" "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE bench$n" >/dev/null
  echo "postgres://postgres@127.0.0.1:$pg_port/bench$n"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_hub ARGS...: starts a hub process, waits for its listening line, sets
# $hub_pid and $hub_url.
start_hub() {
  local port log
  port=$(free_port)
  log=$work/hub-$port.log
  RUST_LOG=warn "$hub_bin" serve --dev-auth --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  hub_pid=$!
  hubs+=("$hub_pid")
  for _ in $(seq 1 300); do
    grep -q "listening on" "$log" && break
    sleep 0.1
  done
  grep -q "listening on" "$log" || { cat "$log" >&2; exit 1; }
  hub_url="ws://127.0.0.1:$port/v1/sync"
}
stop_hubs() {
  for pid in "${hubs[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  hubs=()
}
tag() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); d["bench"]=sys.argv[1]; print(json.dumps(d))' "$1"; }

fleet_args=(fleet --terminals 20 --sales-per-terminal 500 --skus 1000 --json)
storm_args=(checkout-storm --clients 50 --checkouts 200000 --skus 100 --stock 1000 --json --no-baseline)

# The disk's durable-write rate, on the disk the cluster and hubs use.
baseline() {
  "$pg_bin/pg_test_fsync" -s 1 -f "$work/fsync.test" 2>/dev/null \
    | awk -v run="$1" '$1 == "fdatasync" && !done { printf "{\"bench\": \"disk-baseline run %s\", \"fdatasync_per_s\": %.0f}\n", run, $2; done = 1 }'
  rm -f "$work/fsync.test"
}

for run in $(seq 1 "$RUNS"); do
  baseline "$run"
  [[ $what == baseline ]] && continue
  if [[ $what == fleet || $what == all ]]; then
    db=$(fresh_db)
    start_hub --database "$db"; a=$hub_url
    start_hub --database "$db"; b=$hub_url
    "$demo_bin" "${fleet_args[@]}" --hub "$a,$b" | tag "fleet-postgres-2-hubs run $run"
    stop_hubs
    start_hub --data-dir "$work/sqlite-fleet-$run"
    "$demo_bin" "${fleet_args[@]}" --hub "$hub_url" | tag "fleet-sqlite run $run"
    stop_hubs
  fi
  if [[ $what == storm || $what == all ]]; then
    start_hub --database "$(fresh_db)"
    "$demo_bin" "${storm_args[@]}" --hub "$hub_url" | tag "storm-postgres run $run"
    stop_hubs
    start_hub --data-dir "$work/sqlite-storm-$run"
    "$demo_bin" "${storm_args[@]}" --hub "$hub_url" | tag "storm-sqlite run $run"
    stop_hubs
  fi
  if [[ $what == failover || $what == all ]]; then
    db=$(fresh_db)
    start_hub --database "$db"; a=$hub_url; victim=$hub_pid
    start_hub --database "$db"; b=$hub_url
    ( sleep "$KILL_AFTER"; kill -9 "$victim" ) &
    killer=$!
    "$demo_bin" fleet --terminals 20 --sales-per-terminal 2000 --skus 1000 --json --hub "$a,$b" | tag "failover-postgres run $run (hub A killed after ${KILL_AFTER}s)"
    wait "$killer"
    stop_hubs
  fi
done
