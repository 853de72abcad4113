#!/usr/bin/env bash
# A real multi-process Ray cluster on this machine, bound to 127.0.0.1 only: a head node and a
# second node joined to it (two raylets, each with its own object store and workers), for trying
# `mcsim submit` and for the tests.
#
#   cluster/local.sh up      start the head and the second node; prints the addresses
#   cluster/local.sh down    stop every process that `up` started (and nothing else)
#   cluster/local.sh status  `ray status` of the cluster
#   cluster/local.sh stop-node  stop the second node only (to watch a study survive a lost node)
#
# Settings (environment):
#   MCSIM_RAY_DIR      state folder: pid files, logs, the token (default /tmp/mcsim-ray-$UID)
#   MCSIM_RAY_AUTH     token (default): Ray's token authentication, the token in $MCSIM_RAY_DIR/auth_token
#                      (made by the first `up`, mode 600; clients: export RAY_AUTH_TOKEN_PATH=that file);
#                      disabled: no authentication (anyone on this host may submit jobs)
#   MCSIM_RAY_PORT     GCS port of the head (default 6390)
#   MCSIM_RAY_DASHBOARD_PORT  dashboard / job submission port (default 8275)
#   MCSIM_RAY_CPUS     CPUs each node offers (default 1)
#   RAY                the `ray` executable (default: the repository's .venv/bin/ray, else `ray` on PATH)
#
# This Ray refuses to join a second node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps it on
# loopback); the second node's `ray start` lifts that check in its own process only (see `up`).
# Both nodes run on one host: Ray allows it when the per-node ports that have fixed defaults
# (dashboard agent, metrics, node manager, object manager, runtime-env agent, worker port range)
# differ; they are set apart below. Each node runs as `ray start --block` in its own process
# group (setsid), so `down` stops exactly those groups (by their recorded ids), never another
# Ray on the machine (`ray stop` would stop every Ray of this user).
#
# The jobs submitted to this cluster run with this environment: PATH starts with the folder of
# the `ray` executable, so `mcsim` in a job's entrypoint is this venv's mcsim.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
DIR="${MCSIM_RAY_DIR:-/tmp/mcsim-ray-$(id -u)}"
AUTH="${MCSIM_RAY_AUTH:-token}"
[[ "$AUTH" == token || "$AUTH" == disabled ]] || { echo "error: MCSIM_RAY_AUTH=$AUTH: expected token or disabled" >&2; exit 2; }
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="$AUTH"
TOKEN="$DIR/auth_token"
if [[ "$AUTH" == token ]]; then
  # every node, and the jobs it runs, read the token from this file ($RAY_AUTH_TOKEN would win over it)
  unset RAY_AUTH_TOKEN
  export RAY_AUTH_TOKEN_PATH="$TOKEN"
fi
PORT="${MCSIM_RAY_PORT:-6390}"
DPORT="${MCSIM_RAY_DASHBOARD_PORT:-8275}"
CPUS="${MCSIM_RAY_CPUS:-1}"
if [[ -z "${RAY:-}" ]]; then
  if [[ -x "$repo/.venv/bin/ray" ]]; then RAY="$repo/.venv/bin/ray"; else RAY="$(command -v ray || true)"; fi
fi
[[ -n "$RAY" && -x "$RAY" ]] || { echo "error: no ray executable (set RAY=/path/to/ray)" >&2; exit 1; }
export PATH="$(dirname "$RAY"):$PATH"
# the head's temp dir must be short: Ray's unix socket paths live under it
TMP="$DIR/t"

node_ports() {  # distinct fixed ports per node: $1 = node index (0 head, 1 worker)
  local base=$((PORT + 10 + 20 * $1))
  echo "--node-manager-port $base --object-manager-port $((base + 1)) \
--dashboard-agent-listen-port $((base + 2)) --dashboard-agent-grpc-port $((base + 3)) \
--metrics-export-port $((base + 4)) --runtime-env-agent-port $((base + 5)) \
--min-worker-port $((PORT + 1000 + 200 * $1)) --max-worker-port $((PORT + 1199 + 200 * $1))"
}

start_node() {  # $1 name, rest: ray start arguments
  local name="$1"; shift
  local cmd=("$RAY")
  if [[ -n "${RAY_ARGS_WRAPPER:-}" ]]; then
    cmd=("$(dirname "$RAY")/python" -c '
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True  # allow joining a head (this process only)
services.get_node_ip_address = lambda address=None: "127.0.0.1"  # loopback stays loopback
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
')
  fi
  setsid "${cmd[@]}" start --block --disable-usage-stats "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_started() {  # until node $1's log says it started (or 120 s)
  local name="$1" i
  for i in $(seq 1 480); do
    grep -q "Ray runtime started" "$DIR/$name.log" 2>/dev/null && return 0
    kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null || { echo "error: $name exited; see $DIR/$name.log" >&2; return 1; }
    sleep 0.25
  done
  echo "error: $name did not start within 120 s; see $DIR/$name.log" >&2
  return 1
}

stop_group() {  # $1 pid file: SIGTERM the process group, then SIGKILL what is left
  local f="$1" pid i
  pid="$(cat "$f")"
  if kill -0 "-$pid" 2>/dev/null; then
    kill -TERM "-$pid" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "-$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [[ -d "$DIR" ]] || { echo "no local cluster ($DIR absent)"; return 0; }
  local f
  # the second node first, then the head
  for f in "$DIR/node1.pid" "$DIR/head.pid"; do [[ -f "$f" ]] && stop_group "$f"; done
  # workers that left the process groups (none expected): those of our temp dir, by pid
  local pids
  pids=$(grep -l -s -F "$TMP" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true)
  for p in $pids; do [[ "$p" != "$$" ]] && kill -KILL "$p" 2>/dev/null || true; done
  echo "local cluster stopped"
}

up() {
  if [[ -f "$DIR/head.pid" ]] && kill -0 "$(cat "$DIR/head.pid")" 2>/dev/null; then
    echo "error: a local cluster is already running ($DIR); run '$0 down' first" >&2
    exit 1
  fi
  mkdir -p "$DIR" "$TMP"
  if [[ "$AUTH" == token && ! -s "$TOKEN" ]]; then  # 256 random bits, readable by this user only
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN")
  fi
  # shellcheck disable=SC2046
  start_node head --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus "$CPUS" --num-gpus 0 \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DPORT" \
    --ray-client-server-port $((PORT + 1)) --temp-dir "$TMP" $(node_ports 0)
  wait_started head || { down; exit 1; }
  # A second node. This Ray refuses `ray start --address` while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
  # and with 1 it rewrites the address 127.0.0.1 into this host's public address. So the second
  # node's `ray start` runs through a small wrapper that lifts the refusal in that one process and
  # keeps loopback as this host's address; the environment stays 0 and everything binds 127.0.0.1.
  # shellcheck disable=SC2046
  RAY_ARGS_WRAPPER=1 start_node node1 --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 \
    --num-cpus "$CPUS" --num-gpus 0 $(node_ports 1)
  wait_started node1 || { down; exit 1; }
  echo "local Ray cluster up: 2 nodes x $CPUS CPU on 127.0.0.1"
  echo "  cluster address:   127.0.0.1:$PORT     (mcsim run SCENARIO --address 127.0.0.1:$PORT)"
  echo "  ray client:        ray://127.0.0.1:$((PORT + 1))"
  echo "  dashboard / jobs:  http://127.0.0.1:$DPORT  (mcsim submit SCENARIO --address http://127.0.0.1:$DPORT)"
  if [[ "$AUTH" == token ]]; then
    echo "  token auth:        on; clients need: export RAY_AUTH_TOKEN_PATH=$TOKEN"
  else
    echo "  token auth:        off (MCSIM_RAY_AUTH=disabled): anyone on this host may submit jobs"
  fi
  echo "  stop with:         $0 down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) "$RAY" status --address "127.0.0.1:$PORT" ;;
  stop-node) if [[ -f "$DIR/node1.pid" ]]; then stop_group "$DIR/node1.pid"; echo "second node stopped"; else echo "no second node"; fi ;;
  *) echo "usage: $0 up|down|status|stop-node" >&2; exit 2 ;;
esac
