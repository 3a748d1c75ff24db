#!/usr/bin/env bash
# Alternating pairs: the same load (`bench e2e --target`) against two or more gateway builds or
# settings in turn, each on a fresh data directory, so that a slow stretch of a shared VM hits
# every one alike. Prints one line per run: rate, send and end-to-end percentiles, and the
# gateway's CPU per message (the load generator's "Other CPU: procs" column, which is the
# gateway here).
#
#   integration-tests/reference/ab-pairs.sh <ASYNC|SYNC> <pairs> <gateway>...
#
# A gateway is a binary, optionally preceded by `VAR=value` words in the same argument, set for
# it alone: 'RMQ_GATEWAY_STORAGE__PAGE_CACHE_WINDOW_BYTES=0 target/release/rmq-gateway'.
#
# Environment: LG (the binary that generates the load; default the first gateway's binary, which
# must be built with the `bench` feature), RATE (msg/s; unset: closed loop at max), CONSUMERS
# (default 0), DURATION (default 10s), BATCH (messages per request, default 1), RUNS (loads in a
# row against one gateway start, default 1: a fresh gateway's first run and its later ones),
# GWENV (extra `VAR=value` for every gateway), PORT (gRPC, default 18081; the admin/metrics port
# is PORT-1), THREADS=1 (also print, per gateway thread name, its time on a CPU, its time
# runnable but waiting for one, and its context switches, per second over 5 s from 4 s into the
# load, so inside the default 10 s window; from /proc/<pid>/task/*/schedstat), HOOK (a shell
# command run 4 s into each load with GATEWAY_PID set, e.g. to change a thread's scheduling).
set -euo pipefail

flush=${1:?usage: ab-pairs.sh <ASYNC|SYNC> <pairs> <gateway>...}
pairs=${2:?pairs}
shift 2
[ $# -ge 1 ] || { echo "ab-pairs.sh: name at least one gateway binary" >&2; exit 2; }
# The binary of a gateway argument: its last word.
binary() { local words; read -r -a words <<<"$1"; echo "${words[-1]}"; }
# Its `VAR=value` words.
settings() { local words; read -r -a words <<<"$1"; echo "${words[@]:0:${#words[@]}-1}"; }
case $flush in ASYNC | SYNC) ;; *) echo "ab-pairs.sh: flush mode is ASYNC or SYNC, not $flush" >&2; exit 2 ;; esac
lg=${LG:-$(binary "$1")}
port=${PORT:-18081}
http=$((port - 1))
work=$(mktemp -d)
gateway=""
load=""
cleanup() {
  if [ -n "$load" ]; then kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; fi
  if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Per thread name: ns on a CPU, ns runnable waiting for one, switches (summed over threads).
thread_stats() {
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(cat "$t/schedstat")"
  done 2>/dev/null | awk '{ run[$1] += $2; wait[$1] += $3; sw[$1] += $4 }
    END { for (k in run) printf "%s %.0f %.0f %.0f\n", k, run[k], wait[k], sw[k] }' | sort
}

for i in $(seq 1 "$pairs"); do
  for gw in "$@"; do
    bin=$(binary "$gw")
    rm -rf "$work/data" && mkdir -p "$work/data"
    # shellcheck disable=SC2046 # the settings are words on purpose
    env ${GWENV:-} $(settings "$gw") \
      RMQ_GATEWAY_SERVER__BIND_ADDRESS=127.0.0.1 RMQ_GATEWAY_SERVER__GRPC_SERVER_PORT="$port" \
      RMQ_GATEWAY_SERVER__HTTP_SERVER_PORT="$http" RMQ_GATEWAY_STORAGE__DATA_DIR="$work/data" \
      RMQ_GATEWAY_STORAGE__FLUSH_DISK_TYPE="${flush}_FLUSH" RMQ_GATEWAY_TOPICS__AUTO_CREATE_TOPIC_ENABLE=true \
      "$bin" serve >"$work/gateway.log" 2>&1 &
    gateway=$!
    up=""
    for _ in $(seq 100); do
      if curl -sf "http://127.0.0.1:$http/metrics" >/dev/null; then up=1; break; fi
      sleep 0.1
    done
    [ -n "$up" ] || { echo "ab-pairs.sh: $gw did not start; its log:" >&2; cat "$work/gateway.log" >&2; exit 1; }
    for run in $(seq 1 "${RUNS:-1}"); do
      "$lg" bench e2e --target "127.0.0.1:$port" --consumers "${CONSUMERS:-0}" ${RATE:+--rate "$RATE"} \
        --batch "${BATCH:-1}" --duration "${DURATION:-10s}" --quiet --out "$work/out" >"$work/lg.out" 2>"$work/lg.err" &
      load=$!
      if [ -n "${THREADS:-}${HOOK:-}" ]; then
        sleep 4
        if [ -n "${HOOK:-}" ]; then
          GATEWAY_PID=$gateway bash -c "$HOOK" || echo "ab-pairs.sh: HOOK exited with $? (the run goes on)" >&2
        fi
        if [ -n "${THREADS:-}" ]; then
          thread_stats "$gateway" >"$work/threads0"
          sleep 5
          thread_stats "$gateway" >"$work/threads1"
        fi
      fi
      wait "$load" || { load=""; echo "ab-pairs.sh: the load failed against $gw:" >&2; cat "$work/lg.err" >&2; exit 1; }
      load=""
      grep -qE '^\| grpc' "$work/lg.out" ||
        { echo "ab-pairs.sh: no result line from the load against $gw:" >&2; cat "$work/lg.out" >&2; exit 1; }
      grep -E '^\| grpc' "$work/lg.out" | tail -1 | awk -F'|' -v i="$i" -v r="$run" -v b="$gw" '{
        split($15, other, "/"); rate = $6 + 0
        printf "%s.%s %s  msg/s %d  send p50/p99/p99.9 %s e2e %s  client %s cores  gateway %.2f cores, %.2f us/msg\n",
          i, r, b, rate, $8, $9, $13, other[1], (rate > 0 ? other[1] * 1e6 / rate : 0) }'
      if [ -n "${THREADS:-}" ]; then
        join "$work/threads0" "$work/threads1" | awk '{ sw = $7 - $4
          printf "    %-16s on a CPU %6.1f ms/s  waiting for one %6.1f ms/s  switches %5d/s (%.1f us waiting each)\n",
            $1, ($5 - $2) / 5e6, ($6 - $3) / 5e6, sw / 5, (sw > 0 ? ($6 - $3) / sw / 1e3 : 0) }'
      fi
    done
    kill "$gateway" && wait "$gateway" 2>/dev/null || true
    gateway=""
  done
done
