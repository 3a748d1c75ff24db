#!/usr/bin/env bash
# Where a send's server CPU goes, beside the no-op ceiling's: the no-op gRPC server (`bench
# noop-server`) and the gateway (ASYNC_FLUSH or SYNC_FLUSH) in alternating pairs, each under
# `bench e2e --target` at `max` (64 in flight, 1 KiB, send-only), each sampled by `perf record
# -g` for WINDOW seconds in the middle of its load; then `perf-send.py` splits every profile
# into the parts of a send and prints them in µs of server CPU per message, the two servers
# side by side (docs/benchmarks.md, "Where a send goes beside the ceiling").
#
#   integration-tests/reference/perf-send.sh <frame-pointer gateway binary> [load generator]
#
# The gateway binary needs frame pointers for whole stacks (docs/benchmarks.md, "To profile
# yourself"); the load generator (default target/release/rmq-gateway, from the repository's
# root; built with the `bench` feature) runs unprofiled. Environment: FLUSH (ASYNC or SYNC,
# default ASYNC), PAIRS (default 2), WINDOW (seconds, default 6), HZ (sampling rate, default
# 999), PORT (gRPC, default 18401; the gateway's HTTP port is PORT-1), KEEP (a directory to keep
# the profiles in; `perf-send.py <Hz> <window> <KEEP>/noop-1 <KEEP>/gateway-1 …` reads them
# again). Needs perf and python3.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: perf-send.sh <frame-pointer gateway binary> [load generator]" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf-send.sh: needs perf (Debian's linux-perf)" >&2; exit 1; }
bin=$1
lg=${2:-target/release/rmq-gateway}
flush=${FLUSH:-ASYNC}
case $flush in ASYNC | SYNC) ;; *) echo "perf-send.sh: FLUSH is ASYNC or SYNC, not $flush" >&2; exit 2 ;; esac
window=${WINDOW:-6}
hz=${HZ:-999}
port=${PORT:-18401}
http=$((port - 1))
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
work=$(mktemp -d)
server=""
load=""
cleanup() {
  stop_started
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.data "$work"/*.txt "$work"/*.rate "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# profile <name> <command...>: starts the server, loads it, samples it; writes <name>.txt (the
# samples' stacks) and <name>.rate (messages per second of the load).
profile() {
  local name=$1
  shift
  rm -rf "$work/data" && mkdir -p "$work/data"
  "$@" >"$work/server.log" 2>&1 &
  server=$!
  wait_for_port perf-send.sh "$name" "$port" 10 "$work/server.log"
  "$lg" bench e2e --target "127.0.0.1:$port" --consumers 0 --duration "$((window + 8))s" --quiet \
    --out "$work/lg" >"$work/lg.out" 2>&1 &
  load=$!
  sleep 5
  perf record -F "$hz" -g -p "$server" -o "$work/$name.data" -- sleep "$window" >/dev/null 2>&1 ||
    { echo "perf-send.sh: perf record failed on $name" >&2; exit 1; }
  wait "$load" || { load=""; echo "perf-send.sh: the load against $name failed:" >&2; cat "$work/lg.out" >&2; exit 1; }
  load=""
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
  perf script -i "$work/$name.data" -F comm,ip,sym >"$work/$name.txt" 2>/dev/null
  grep -E '^\| grpc' "$work/lg.out" | tail -1 | awk -F'|' '{ print $6 + 0 }' >"$work/$name.rate"
}

args=()
for i in $(seq 1 "${PAIRS:-2}"); do
  profile "noop-$i" "$bin" bench noop-server --listen "127.0.0.1:$port"
  profile "gateway-$i" env RMQ_GATEWAY_SERVER__BIND_ADDRESS=127.0.0.1 RMQ_GATEWAY_SERVER__GRPC_SERVER_PORT="$port" \
    RMQ_GATEWAY_SERVER__HTTP_SERVER_PORT="$http" RMQ_GATEWAY_STORAGE__DATA_DIR="$work/data" \
    RMQ_GATEWAY_STORAGE__FLUSH_DISK_TYPE="${flush}_FLUSH" RMQ_GATEWAY_TOPICS__AUTO_CREATE_TOPIC_ENABLE=true \
    "$bin" serve
  args+=("$work/noop-$i" "$work/gateway-$i")
done
echo "perf-send.sh: ${flush}_FLUSH, $(date -u +%FT%TZ), $hz Hz over ${window} s of each load"
python3 "$here/perf-send.py" "$hz" "$window" "${args[@]}"
