# Shared by the reference scripts that start a server and load it (sourced, not run).

# wait_for_port <script> <server> <port> <seconds> <log>: returns once 127.0.0.1:<port> accepts
# a connection; after <seconds> without one, prints the server's log and exits 1.
wait_for_port() {
  local script=$1 server=$2 port=$3 seconds=$4 log=$5 i
  for ((i = 0; i < seconds * 10; i++)); do
    if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$script: $server did not start within $seconds s; its log:" >&2
  cat "$log" >&2
  exit 1
}

# stop_started: kills and reaps the load generator ($load) and the server ($server) if they
# still run (on exit, or when a step fails half way).
stop_started() {
  if [ -n "${load:-}" ]; then kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; fi
  if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
}
