#!/usr/bin/env bash
# Throwaway S3-compatible servers on 127.0.0.1 for tests and benchmarks (called by
# integration-tests/src/s3.rs and `make bench`; keep the CLI stable):
#
#   s3.sh install moto|s3s-fs
#       moto:   moto[server] (pinned by s3-requirements.txt) into the venv sdk/.work/s3-venv.
#       s3s-fs: `cargo install s3s-fs@0.14.1 --locked --features binary` into sdk/.work/s3s-fs
#               (0.15+ needs rustc >= 1.96). Cached: nothing is installed when already there.
#               Safe to run concurrently (flock).
#   s3.sh start moto|s3s-fs RUN_DIR [--bucket NAME] [--port P] [--watch-pid PID]
#       Installs when missing, starts the server on a free loopback port (or P) with its files under
#       RUN_DIR, creates the bucket (default `test-bucket`), waits until it answers (bounded, 30 s)
#       and prints exactly one line
#         ENDPOINT http://127.0.0.1:P BUCKET NAME ACCESS_KEY test SECRET_KEY test PID N
#       then exits 0; on failure prints the reason and the log tail, stops the server, exits 1.
#       moto keeps objects in memory (and accepts any credentials); s3s-fs writes them to
#       RUN_DIR/data and checks SigV4 signatures (key `test` / `test`).
#       --watch-pid: stop the server when process PID exits (a killed test leaves no server).
#   s3.sh stop RUN_DIR
#       SIGTERM, SIGKILL after 10 s. Idempotent.
set -euo pipefail

SVC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SVC_DIR/../.." && pwd)"
WORK="$REPO/integration-tests/sdk/.work"
VENV="$WORK/s3-venv"
S3S_ROOT="$WORK/s3s-fs"
S3S_VERSION=0.14.1
KEY=test

log() { printf '[s3] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_moto() {
  local req="$SVC_DIR/s3-requirements.txt" sum
  sum="$(sha256sum "$req" | cut -d' ' -f1)"
  [[ -x "$VENV/bin/moto_server" && "$(cat "$VENV.stamp" 2>/dev/null)" == "$sum" ]] && return
  mkdir -p "$WORK"; exec 8>"$WORK/.s3-venv.lock"; flock 8
  [[ -x "$VENV/bin/moto_server" && "$(cat "$VENV.stamp" 2>/dev/null)" == "$sum" ]] && return
  command -v python3 >/dev/null || die "python3 not found on PATH (needed for moto)"
  log "install: moto[server] into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" || die "pip install moto failed"
  echo "$sum" > "$VENV.stamp"
}

install_s3s_fs() {
  local bin="$S3S_ROOT/bin/s3s-fs"
  [[ -x "$bin" && "$(cat "$S3S_ROOT.stamp" 2>/dev/null)" == "$S3S_VERSION" ]] && return
  mkdir -p "$WORK"; exec 7>"$WORK/.s3s-fs.lock"; flock 7
  [[ -x "$bin" && "$(cat "$S3S_ROOT.stamp" 2>/dev/null)" == "$S3S_VERSION" ]] && return
  command -v cargo >/dev/null || die "cargo not found on PATH (needed to install s3s-fs)"
  log "install: cargo install s3s-fs@$S3S_VERSION into $S3S_ROOT (about 2 minutes)"
  CARGO_TARGET_DIR="$WORK/s3s-fs-build" cargo install "s3s-fs@$S3S_VERSION" --locked --features binary \
    --root "$S3S_ROOT" -j "${SDK_BUILD_JOBS:-2}" >&2 || die "cargo install s3s-fs failed"
  rm -rf "$WORK/s3s-fs-build"
  echo "$S3S_VERSION" > "$S3S_ROOT.stamp"
}

need_curl() { command -v curl >/dev/null || die "curl not found on PATH (apt-get install curl)"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_install() {
  case "${1:-}" in
    moto) install_moto ;;
    s3s-fs) install_s3s_fs ;;
    *) die "usage: s3.sh install moto|s3s-fs" ;;
  esac
}

cmd_start() {
  local kind="${1:-}" run="${2:-}"; shift 2 || die "usage: s3.sh start moto|s3s-fs RUN_DIR [--bucket NAME] [--port P] [--watch-pid PID]"
  local bucket=test-bucket port="" watch=""
  while (($#)); do
    case "$1" in
      --bucket) bucket="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --watch-pid) watch="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ -n "$run" ]] || die "RUN_DIR missing"
  need_curl
  mkdir -p "$run"; run="$(cd "$run" && pwd)"
  [[ -n "$port" ]] || port="$(free_port)"
  local endpoint="http://127.0.0.1:$port" pid
  case "$kind" in
    moto)
      install_moto
      setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$run/s3.log" 2>&1 </dev/null &
      pid=$! ;;
    s3s-fs)
      install_s3s_fs
      mkdir -p "$run/data/$bucket"
      setsid "$S3S_ROOT/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$KEY" --secret-key "$KEY" \
        "$run/data" >"$run/s3.log" 2>&1 </dev/null &
      pid=$! ;;
    *) die "usage: s3.sh start moto|s3s-fs RUN_DIR ..." ;;
  esac
  echo "$pid" > "$run/s3.pid"
  local deadline=$((SECONDS + 30)) code=000
  while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$endpoint/" || true)"
    [[ "$code" != 000 ]] && break
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      log "ERROR: $kind did not come up on $endpoint; log tail:"; tail -n 20 "$run/s3.log" >&2 || true
      cmd_stop "$run"; exit 1
    fi
    sleep 0.1
  done
  if [[ "$kind" == moto ]]; then
    # moto accepts an unsigned CreateBucket; s3s-fs's bucket is the directory made above.
    curl -sf -o /dev/null --max-time 10 -X PUT "$endpoint/$bucket" || {
      log "ERROR: could not create bucket $bucket"; cmd_stop "$run"; exit 1; }
  fi
  if [[ -n "$watch" ]]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill "$2" 2>/dev/null' \
      _ "$watch" "$pid" >/dev/null 2>&1 </dev/null &
  fi
  echo "ENDPOINT $endpoint BUCKET $bucket ACCESS_KEY $KEY SECRET_KEY $KEY PID $pid"
}

cmd_stop() {
  local run="${1:-}"
  [[ -n "$run" && -f "$run/s3.pid" ]] || return 0
  local pid; pid="$(cat "$run/s3.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$run/s3.pid"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) die "usage: s3.sh install|start|stop ..." ;;
esac
