#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and benchmarks: loopback only, in a short temp dir, fsync off.
#
#   eval "$(integration-tests/services/postgres.sh start)"   # exports PGTMP, PGPORT, DATABASE_URL
#   integration-tests/services/postgres.sh stop  "$PGTMP"     # stops and removes the cluster
#   integration-tests/services/postgres.sh halt  "$PGTMP"     # stops, keeps the data (outage tests)
#   integration-tests/services/postgres.sh resume "$PGTMP"    # starts again, same port and data
#   integration-tests/services/postgres.sh createdb "$PGTMP" NAME   # another empty database
#   integration-tests/services/postgres.sh install                  # only install if missing
#
# Installs the Debian `postgresql` package (apt-get) only when initdb/pg_ctl are missing. Run as
# root, it runs the server as the system user $PG_RUN_AS (default `rmqpg`, created if missing):
# PostgreSQL refuses to run as root. PGPORT picks the port (default: a free one).
set -euo pipefail
cd /   # the server's user may not be able to read the caller's directory

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

install_postgres() {
  if [ "$(id -u)" != 0 ]; then echo "postgres.sh: initdb/pg_ctl missing and not root: apt-get install postgresql" >&2; return 1; fi
  # Tests start clusters in parallel: one installs, the others wait for it.
  exec 9>/tmp/rmq-postgres-install.lock
  flock -w 600 9 || { echo "postgres.sh: another install holds the lock" >&2; return 1; }
  if ! find_bin >/dev/null; then
    echo "postgres.sh: installing postgresql (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  flock -u 9
  exec 9>&-
}

BIN=$(find_bin || true)
if [ -z "$BIN" ]; then
  install_postgres || exit 1
  BIN=$(find_bin) || { echo "postgres.sh: no initdb/pg_ctl after installing postgresql" >&2; exit 1; }
fi

as_owner() {   # as_owner USER cmd...: run as USER when we are root, else as ourselves
  local user=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $(( 20000 + RANDOM % 20000 ))
}

server_start() {   # server_start DIR PORT USER
  local dir=$1 port=$2 user=$3
  as_owner "$user" "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2 \
    || { cat "$dir/server.log" >&2; return 1; }
  local i
  for i in $(seq 1 100); do
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    sleep 0.1
  done
  echo "postgres.sh: server on port $port not ready" >&2; return 1
}

cmd=${1:-}
case "$cmd" in
  start)
    user=$(id -un)
    if [ "$user" = root ]; then
      user=${PG_RUN_AS:-rmqpg}
      id -u "$user" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$user"
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pg.XXXXXX")   # short: the socket path must stay under 107 bytes
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir"
    as_owner "$user" "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
    port=${PGPORT:-$(free_port)}
    echo "$port" >"$dir/port"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir/port"
    server_start "$dir" "$port" "$user" || { rm -rf "$dir"; exit 1; }
    "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres app >&2
    echo "export PGTMP=$dir PGPORT=$port DATABASE_URL=postgres://postgres@127.0.0.1:$port/app"
    ;;
  halt|stop)
    dir=${2:?usage: postgres.sh $cmd DIR}
    [ -d "$dir/data" ] || { echo "postgres.sh: no cluster in $dir" >&2; exit 1; }
    owner=$(stat -c %U "$dir")
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$owner" "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 \
        || { echo "postgres.sh: pg_ctl stop failed; $dir kept" >&2; exit 1; }
    fi
    [ "$cmd" = stop ] && rm -rf "$dir"
    exit 0
    ;;
  resume)
    dir=${2:?usage: postgres.sh resume DIR}
    server_start "$dir" "$(cat "$dir/port")" "$(stat -c %U "$dir")"
    ;;
  install)   # only makes sure the binaries are there (make test's setup)
    echo "postgres.sh: using $BIN" >&2
    ;;
  createdb)
    dir=${2:?usage: postgres.sh createdb DIR NAME}
    "$BIN/createdb" -h 127.0.0.1 -p "$(cat "$dir/port")" -U postgres "${3:?usage: postgres.sh createdb DIR NAME}" >&2
    ;;
  *)
    echo "usage: $0 start | stop DIR | halt DIR | resume DIR | createdb DIR NAME | install" >&2; exit 2 ;;
esac
