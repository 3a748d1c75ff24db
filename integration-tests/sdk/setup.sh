#!/usr/bin/env bash
# Installs the official RocketMQ SDKs used by the end-to-end tests into sdk/.work/ (git-ignored):
#   .work/py-venv      Python venv with rocketmq-python-client 5.1.2 (pinned by python/requirements.lock)
#   .work/node         node_modules with rocketmq-client-nodejs 1.0.8 (pinned by node/package-lock.json)
#   .work/rust-target  build of the Rust driver (crate rocketmq 5.0.0, pinned by rust/Cargo.lock)
#   .work/java/<ver>   Java driver jar + classpath.txt (rocketmq-client-java 5.2.0 and 5.0.7, pinned
#                      by java/pom.xml), Maven local repository .work/m2
#   .work/go-bin       the Go driver (github.com/apache/rocketmq-clients/golang/v5 5.1.4, pinned by
#                      go/go.mod + go.sum), module and build caches in .work/go
#   .work/spring-target/rmq-e2e-spring.jar  Spring Boot 3.5.7 app with rocketmq-v5-client-spring-boot-starter
#                      2.3.1 (pinned by spring/pom.xml), Maven local repository .work/m2
#   .work/apache/lib   Apache RocketMQ 5.5.0 jars (pinned by ../reference/pom.xml): the reference server
#   .work/s3-venv      moto[server] (pinned by ../services/s3-requirements.txt): the S3-compatible server of
#                      the object-store tests (../services/s3.sh; s3s-fs for `make bench` is installed there)
#   postgres           the Debian `postgresql` package, for the throwaway test clusters of
#                      ../services/postgres.sh: installed with apt-get (as root) only when initdb/pg_ctl are missing
# Idempotent: a step is skipped when its lock file has not changed since the last successful run.
# Needs only cargo, python3 (>= 3.9, with venv), node/npm (>= 18), JDK 17 + Maven, Go >= 1.25. No sudo; nothing
# global except the postgres step's apt package when it is missing.
# Env: SDK_BUILD_JOBS (cargo -j, default 2), SDK_ONLY="python node rust java go spring apache s3 postgres" (subset to install).
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$SDK_DIR/.work"
ONLY="${SDK_ONLY:-python node rust java go spring apache s3 postgres}"
mkdir -p "$WORK"

log() { printf '[sdk-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH ($2)"; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }
# up_to_date NAME FILE...: true if the stamp for NAME matches the checksum of the FILEs.
checksum() { cat "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() { local name=$1; shift; [[ -f "$WORK/$name.stamp" && "$(cat "$WORK/$name.stamp")" == "$(checksum "$@")" ]]; }
stamp() { local name=$1; shift; checksum "$@" > "$WORK/$name.stamp"; }
s3_step() { bash "$SDK_DIR/../services/s3.sh" install moto; }
timed() { local t0=$SECONDS; "$@"; log "${1%_step}: took $((SECONDS - t0))s"; }

python_step() {
  local lock="$SDK_DIR/python/requirements.lock"
  if up_to_date python "$lock" && [[ -x "$WORK/py-venv/bin/python" ]]; then
    log "python: up to date"; return
  fi
  need python3 "Python >= 3.9 with the venv module"
  python3 -c 'import sys; assert sys.version_info >= (3, 9), sys.version' || die "python3 >= 3.9 required"
  log "python: creating venv and installing rocketmq-python-client (pinned)"
  rm -rf "$WORK/py-venv"
  python3 -m venv "$WORK/py-venv"
  "$WORK/py-venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
  "$WORK/py-venv/bin/python" -c 'import importlib.metadata as m; assert m.version("rocketmq-python-client") == "5.1.2"'
  stamp python "$lock"
}

node_step() {
  local dir="$SDK_DIR/node"
  if up_to_date node "$dir/package.json" "$dir/package-lock.json" && [[ -d "$WORK/node/node_modules/rocketmq-client-nodejs" ]]; then
    log "node: up to date"; return
  fi
  need node "Node.js >= 18"; need npm "npm (comes with Node.js)"
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' || die "node >= 18 required"
  log "node: npm ci rocketmq-client-nodejs (pinned)"
  mkdir -p "$WORK/node"
  cp "$dir/package.json" "$dir/package-lock.json" "$WORK/node/"
  (cd "$WORK/node" && npm ci --no-audit --no-fund --loglevel=error >&2)
  stamp node "$dir/package.json" "$dir/package-lock.json"
}

rust_step() {
  need cargo "the Rust toolchain"
  log "rust: cargo build of the Rust SDK driver (first build takes a few minutes)"
  CARGO_TARGET_DIR="$WORK/rust-target" cargo build --locked --quiet \
    -j "${SDK_BUILD_JOBS:-2}" --manifest-path "$SDK_DIR/rust/Cargo.toml"
  [[ -x "$WORK/rust-target/debug/rmq-sdk-rust" ]] || die "rust driver binary missing after build"
}

java_step() {
  local dir="$SDK_DIR/java" out="$WORK/java" v
  local sources=("$dir/pom.xml" "$dir"/src/main/java/org/rmqgateway/e2e/*.java)
  if up_to_date java "${sources[@]}" && [[ -f "$out/5.2.0/classpath.txt" && -f "$out/5.0.7/classpath.txt" ]]; then
    log "java: up to date"; return
  fi
  need java "JDK >= 17"; need mvn "Maven >= 3.8"
  mkdir -p "$WORK/m2"
  # Offline first (a warm .work/m2 needs no network), online if something is missing.
  local mvn_args=(-B -q -Dstyle.color=never -Dmaven.repo.local="$WORK/m2" -f "$dir/pom.xml")
  for v in 5.2.0 5.0.7; do
    log "java: mvn package of the Java driver with rocketmq-client-java $v"
    local profile=(); [[ $v == 5.0.7 ]] && profile=(-P sdk-5.0.7)
    rm -rf "$out/$v"
    mvn "${mvn_args[@]}" -o "${profile[@]}" -Ddriver.build.dir="$out/$v" package >/dev/null 2>&1 \
      || mvn "${mvn_args[@]}" "${profile[@]}" -Ddriver.build.dir="$out/$v" package >&2
    [[ -f "$out/$v/rmq-e2e-java.jar" && -s "$out/$v/classpath.txt" ]] || die "java driver $v missing after build"
    grep -q "rocketmq-client-java-$v.jar" "$out/$v/classpath.txt" || die "java driver $v: wrong SDK on its classpath"
  done
  stamp java "${sources[@]}"
}

# The OpenTelemetry Java agent (instruments rocketmq-client-java 5: a PRODUCER span per send and
# `traceparent` in the message's properties), for tests/tracing_e2e.rs: .work/otel/opentelemetry-javaagent.jar
OTEL_AGENT_VERSION=2.10.0
otel_agent_step() {
  local out="$WORK/otel"
  if [[ -f "$out/opentelemetry-javaagent-$OTEL_AGENT_VERSION.jar" ]]; then
    log "otel agent: up to date"; return
  fi
  need mvn "Maven >= 3.8"
  mkdir -p "$out" "$WORK/m2"
  log "otel agent: io.opentelemetry.javaagent:opentelemetry-javaagent:$OTEL_AGENT_VERSION from Maven Central"
  mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$WORK/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="io.opentelemetry.javaagent:opentelemetry-javaagent:$OTEL_AGENT_VERSION" -DoutputDirectory="$out" >&2
  [[ -f "$out/opentelemetry-javaagent-$OTEL_AGENT_VERSION.jar" ]] || die "otel agent missing after download"
}

go_step() {
  local dir="$SDK_DIR/go"
  local sources=("$dir/go.mod" "$dir/go.sum" "$dir"/*.go)
  if up_to_date go "${sources[@]}" && [[ -x "$WORK/go-bin/rmq-sdk-go" ]]; then
    log "go: up to date"; return
  fi
  need go "Go >= 1.25"
  log "go: go build of the Go driver (github.com/apache/rocketmq-clients/golang/v5, pinned by go/go.sum)"
  # Module and build caches under .work (writable, so `rm -rf .work` works); no toolchain download.
  (cd "$dir" && GOMODCACHE="$WORK/go/mod" GOPATH="$WORK/go/path" GOCACHE="$WORK/go/cache" \
    GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw -buildvcs=false" go build -o "$WORK/go-bin/rmq-sdk-go" .)
  [[ -x "$WORK/go-bin/rmq-sdk-go" ]] || die "go driver binary missing after build"
  stamp go "${sources[@]}"
}

spring_step() {
  local dir="$SDK_DIR/spring" jar="$WORK/spring-target/rmq-e2e-spring.jar"
  local sources=("$dir/pom.xml" "$dir"/src/main/resources/application.yml "$dir"/src/main/java/org/rmqgateway/e2e/spring/*.java)
  if up_to_date spring "${sources[@]}" && [[ -f "$jar" ]]; then
    log "spring: up to date"; return
  fi
  need java "JDK >= 17"; need mvn "Maven >= 3.8"
  mkdir -p "$WORK/m2"
  log "spring: mvn package of the Spring Boot app (starter 2.3.1, Boot 3.5.7)"
  rm -f "$jar"
  # Offline first (a warm .work/m2 needs no network), online if something is missing.
  local mvn_args=(-B -q -Dstyle.color=never -Dmaven.repo.local="$WORK/m2" -f "$dir/pom.xml" -DskipTests package)
  mvn "${mvn_args[@]}" -o >/dev/null 2>&1 || mvn "${mvn_args[@]}" >&2
  [[ -f "$jar" ]] || die "spring app jar missing after build"
  [[ "$(jar tf "$jar")" == *BOOT-INF/lib/rocketmq-v5-client-spring-boot-starter-2.3.1.jar* ]] \
    || die "spring app: starter 2.3.1 not in the jar"
  stamp spring "${sources[@]}"
}

postgres_step() {
  bash "$SDK_DIR/../services/postgres.sh" install
}

apache_step() {
  need java "JDK 17"
  bash "$SDK_DIR/../reference/apache.sh" resolve
}

wants python && timed python_step
wants node && timed node_step
wants rust && timed rust_step
wants java && timed java_step
wants java && timed otel_agent_step
wants go && timed go_step
wants spring && timed spring_step
wants apache && timed apache_step
wants s3 && timed s3_step
wants postgres && timed postgres_step
log "done: SDKs installed under $WORK"
