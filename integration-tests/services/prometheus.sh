#!/usr/bin/env bash
# Debian's Prometheus for the metrics tests, as a plain binary (no system service):
#
#   integration-tests/services/prometheus.sh path   # prints the binary's path, fetching it if missing
#
# Uses `prometheus` from PATH when there is one. Else it fetches Debian's `prometheus` package
# with `apt-get download` and unpacks it with `dpkg -x` into integration-tests/sdk/.work/prometheus/
# (measured: a 19 MB .deb, under 2 s; `apt-get install prometheus` would pull a dozen JS
# packages and prometheus-node-exporter and try to start a system service). Tests run the
# binary themselves with a generated config, on loopback, with a temp TSDB dir.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK="$HERE/../sdk/.work/prometheus"
BIN="$WORK/root/usr/bin/prometheus"

fetch() {
  mkdir -p "$WORK"
  # Tests may ask in parallel: one fetches, the others wait for it.
  exec 9>"$WORK/.lock"
  flock -w 600 9 || { echo "prometheus.sh: another fetch holds the lock" >&2; return 1; }
  if [ ! -x "$BIN" ]; then
    echo "prometheus.sh: fetching Debian's prometheus package (apt-get download)" >&2
    local tmp
    tmp=$(mktemp -d "$WORK/dl.XXXXXX")
    chmod 777 "$tmp"   # apt's _apt user writes the download
    if ! (cd "$tmp" && apt-get download -qq prometheus >&2); then
      if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        (cd "$tmp" && apt-get download -qq prometheus >&2)
      else
        echo "prometheus.sh: apt-get download prometheus failed (not root: cannot apt-get update)" >&2
        return 1
      fi
    fi
    dpkg -x "$tmp"/prometheus_*.deb "$WORK/root"
    rm -rf "$tmp"
  fi
  flock -u 9
  exec 9>&-
}

case "${1:-path}" in
  path)
    if command -v prometheus >/dev/null; then command -v prometheus; exit 0; fi
    [ -x "$BIN" ] || fetch
    [ -x "$BIN" ] || { echo "prometheus.sh: no prometheus binary at $BIN" >&2; exit 1; }
    echo "$BIN"
    ;;
  *)
    echo "usage: $0 path" >&2; exit 2 ;;
esac
