#!/usr/bin/env bash
# Instructions per send: the gateway and the no-op gRPC server (`bench noop-server`) each run
# under `valgrind --tool=callgrind` while `bench e2e` sends them 1 KiB messages at a paced,
# low rate; the counters are zeroed 8 s into the load and dumped WINDOW seconds later. Unlike
# CPU time on a shared VM, the count is the same from run to run for the same binaries and
# load, so trims too small for alternating timed runs show here (docs/benchmarks.md,
# "Instructions per send"). Counts user-space instructions only: system calls and the kernel's
# work (socket and page-cache writes) are not in them.
#
#   integration-tests/reference/callgrind-send.sh <gateway-binary>...
#
# Prints, per server, instructions per message over the window and (with TOP=n) the n functions
# of the gateway's own crate with the most inclusive instructions per message. The load
# generator is the first binary (built with the `bench` feature). Environment: RATE (msg/s,
# default 200), WINDOW (seconds, default 15), FLUSH (ASYNC or SYNC, default ASYNC), CONSUMERS
# (default 0), PORT (default 18191; the gateway's HTTP port is PORT-1), KEEP (a directory to
# keep the callgrind files in), NOOP=no (leave the no-op server out: it cannot be consumed from).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: callgrind-send.sh <gateway-binary>..." >&2; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v callgrind_annotate >/dev/null ||
  { echo "callgrind-send.sh: needs valgrind (callgrind_control, callgrind_annotate)" >&2; exit 1; }
lg=$1
# shellcheck source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
rate=${RATE:-200}
window=${WINDOW:-15}
port=${PORT:-18191}
http=$((port - 1))
work=$(mktemp -d)
server=""
load=""
cleanup() {
  stop_started
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.out* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

messages_in() {
  curl -sf "http://127.0.0.1:$http/metrics" 2>/dev/null | awk '/^rocketmq_messages_in_total/ { s += $2 } END { print s + 0 }' || true
}

# measure <name> [VAR=value...] <command...>: runs the server under callgrind, with those
# variables set, and prints its figures.
measure() {
  local name=$1 out envs=()
  shift
  while [[ $1 == *=* ]]; do envs+=("$1"); shift; done
  out="$work/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').out"
  rm -rf "$work/data" && mkdir -p "$work/data"
  env "${envs[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$work/server.log" 2>&1 &
  server=$!
  wait_for_port callgrind-send.sh "$name" "$port" 120 "$work/server.log"
  "$lg" bench e2e --target "127.0.0.1:$port" --rate "$rate" --consumers "${CONSUMERS:-0}" \
    --duration "$((window + 12))s" --warmup 3s --drain 2s --quiet --out "$work/lg" >"$work/lg.out" 2>&1 &
  load=$!
  sleep 8
  local m0 m1
  m0=$(messages_in)
  callgrind_control -z "$server" >/dev/null
  sleep "$window"
  callgrind_control -d "$server" >/dev/null
  m1=$(messages_in)
  wait "$load" || { load=""; echo "callgrind-send.sh: the load against $name failed:" >&2; cat "$work/lg.out" >&2; exit 1; }
  load=""
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
  # The dump taken at the window's end is the first numbered part.
  local total sent
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  # The gateway counts what it stored; the no-op server stores nothing, so its count is the pace.
  sent=$((m1 - m0))
  [ "$sent" -gt 0 ] || sent=$((rate * window))
  awk -v n="$name" -v t="$total" -v s="$sent" -v w="$window" \
    'BEGIN { printf "%-40s %9.0f instructions per message (%d messages in %d s)\n", n, t / s, s, w }'
  if [ -n "${TOP:-}" ]; then
    callgrind_annotate --inclusive=yes --threshold=100 "$out.1" 2>/dev/null |
      awk -v s="$sent" -v top="$TOP" '/rmq_gateway::/ && !/proto::messaging_service_server/ && n < top {
        c = $1; gsub(",", "", c); sub(/^[^:]*:/, "", $0); sub(/ \[.*$/, "", $0); sub(/^ *[0-9,]+ \([ 0-9.%]+\) +/, "", $0)
        printf "    %8.0f  %s\n", c / s, substr($0, 1, 140); n++ }'
  fi
}

if [ "${NOOP:-yes}" != no ]; then
  measure "no-op server" "$lg" bench noop-server --listen "127.0.0.1:$port"
fi
for gw in "$@"; do
  measure "gateway ${FLUSH:-ASYNC}_FLUSH $gw" RMQ_GATEWAY_SERVER__BIND_ADDRESS=127.0.0.1 \
    RMQ_GATEWAY_SERVER__GRPC_SERVER_PORT="$port" RMQ_GATEWAY_SERVER__HTTP_SERVER_PORT="$http" \
    RMQ_GATEWAY_STORAGE__DATA_DIR="$work/data" RMQ_GATEWAY_STORAGE__FLUSH_DISK_TYPE="${FLUSH:-ASYNC}_FLUSH" \
    RMQ_GATEWAY_TOPICS__AUTO_CREATE_TOPIC_ENABLE=true "$gw" serve
done
