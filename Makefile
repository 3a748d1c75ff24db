# rmq-gateway — the README's two commands are `make run` and `make test`.
CARGO ?= cargo
export RUST_BACKTRACE ?= 0

.PHONY: all build run test test-unit test-e2e sdk-setup lint fmt bench bench-soak bench-metadata clean

all: build

# The test build carries the benchmark code too (its unit tests run) and counts its live heap for
# the soak test's leak check; the product binary of `make run` does neither (features `bench`,
# `heap-stats`).
TEST_FEATURES = --features rmq-gateway/bench,rmq-gateway/heap-stats

build:
	$(CARGO) build --workspace --locked $(TEST_FEATURES)

## Run the gateway on its embedded defaults (SQLite + local log under ./data; no other service).
run:
	$(CARGO) run --locked --bin rmq-gateway -- serve --config config/gateway.yaml

## Unit, protocol and crash tests, the end-to-end tests with the official SDKs (Java, Go, Python,
## Node.js, Rust, Spring Boot) and the differential suite against Apache RocketMQ 5.
test: build sdk-setup
	RMQ_E2E_REQUIRED=1 $(CARGO) test --workspace --locked --no-fail-fast $(TEST_FEATURES)

test-unit:
	$(CARGO) test --locked --lib $(TEST_FEATURES)

## Installs the official SDKs, the Spring Boot app and Apache RocketMQ's jars into
## integration-tests/sdk/.work (nothing global; SDK_ONLY="java go" for a subset).
sdk-setup:
	bash integration-tests/sdk/setup.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (release build); results go to bench-results/ (JSON, Markdown, SVG).
## End to end over gRPC: gateway SYNC_FLUSH and ASYNC_FLUSH vs the no-op tonic ceiling, NATS
## JetStream and Apache RocketMQ 5 (SYNC_FLUSH and ASYNC_FLUSH; jars resolved from Maven Central into
## integration-tests/sdk/.work, needs java 17 + mvn), all on loopback, started and stopped here.
## The whole sequence runs twice (`--rounds`; the report tables every round's key figures and
## their spread), then once more with 16 messages per request against the ceiling and NATS
## (bench-results/batch16/).
## Knobs: BENCH_DURATION=60s (per run),
## BENCH_ARGS='--rounds 3 --message-size 4096 …' (see `rmq-gateway bench compare --help`),
## BENCH_BATCH_ARGS for the batch run.
BENCH_DURATION ?= 10s
BENCH_ARGS ?=
BENCH_BATCH_ARGS ?=
## Storage benchmark knobs, e.g. BENCH_STORAGE_ARGS=--quick (a one-minute smoke run).
BENCH_STORAGE_ARGS ?=
## Timer benchmark knobs, e.g. BENCH_TIMER_ARGS='--scheduled 1000000'.
BENCH_TIMER_ARGS ?=
## S3 benchmark knobs, e.g. BENCH_S3_ARGS='--object-size 64MiB --concurrency 16' or
## '--endpoint http://127.0.0.1:9000 --bucket b' (default: an s3s-fs started by the bench, on disk).
BENCH_S3_ARGS ?=
## Tiering benchmark knobs: cold reads from an s3s-fs it starts (or '--endpoint URL --bucket B',
## or '--store dir') beside that server's raw ranged GETs, and Sync appends on a tiered log with a
## backlog of 100 million 100-byte messages vs an empty one, e.g.
## BENCH_TIERING_ARGS='--backlog-messages 10000000' (smaller backlog) or '--backlog-messages 0'.
BENCH_TIERING_ARGS ?=
## Cluster benchmark knobs: 1, 2 and 3 gateways as one cluster on PostgreSQL + s3s-fs started by
## the bench, through a TCP load balancer and following the routes, e.g.
## BENCH_CLUSTER_ARGS='--nodes 1,3 --duration 20s --flush async'.
BENCH_CLUSTER_ARGS ?=
## Tracing cost: the same load against a gateway with tracing off, then on (100 % sampled, OTLP/gRPC
## to a receiver in the bench that discards); throughput and p99 ratios, e.g.
## BENCH_TRACING_ARGS='--producers 8 --flush async'.
BENCH_TRACING_ARGS ?=
BENCH_BIN = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/rmq-gateway
bench:
	$(CARGO) build --release --locked --features nats-bench --bin rmq-gateway
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
	  { echo "installing nats-server (apt)"; apt-get update -qq && apt-get install -y -qq nats-server; }
	bash integration-tests/reference/apache.sh resolve
	$(BENCH_BIN) bench compare --duration $(BENCH_DURATION) $(BENCH_ARGS)
	$(BENCH_BIN) bench compare --duration $(BENCH_DURATION) --batch 16 --paced 0.5 \
	  --systems noop,gateway-async,gateway-sync,nats --out bench-results/batch16 $(BENCH_BATCH_ARGS)
	$(BENCH_BIN) bench storage $(BENCH_STORAGE_ARGS)
	$(BENCH_BIN) bench timers $(BENCH_TIMER_ARGS)
	bash integration-tests/services/s3.sh install s3s-fs
	$(BENCH_BIN) bench s3 $(BENCH_S3_ARGS)
	$(BENCH_BIN) bench tiering $(BENCH_TIERING_ARGS)
	$(BENCH_BIN) bench cluster $(BENCH_CLUSTER_ARGS)
	$(BENCH_BIN) bench tracing --duration $(BENCH_DURATION) --consumers 2 $(BENCH_TRACING_ARGS)
	$(MAKE) bench-metadata
	$(MAKE) bench-soak

## Metadata store: progress transactions/s on a throwaway PostgreSQL (services/postgres.sh,
## loopback, fsync off like the test cluster) and on SQLite in bench-results/; knobs e.g.
## BENCH_METADATA_ARGS='--duration 30s --writers 8 --batches 1,500'.
BENCH_METADATA_ARGS ?=
bench-metadata:
	$(CARGO) build --release --locked --features nats-bench --bin rmq-gateway
	@set -e; eval "$$(bash integration-tests/services/postgres.sh start)"; \
	  trap 'bash integration-tests/services/postgres.sh stop "$$PGTMP"' EXIT; \
	  $(BENCH_BIN) bench metadata --url "$$DATABASE_URL" --name metadata-postgres $(BENCH_METADATA_ARGS)
	rm -f bench-results/metadata-bench.db*
	$(BENCH_BIN) bench metadata --url sqlite://$(CURDIR)/bench-results/metadata-bench.db --name metadata-sqlite $(BENCH_METADATA_ARGS)
	rm -f bench-results/metadata-bench.db*

## Soak (integration-tests/tests/soak.rs) against the release gateway, longer than in `make test`:
## short-lived clients that vanish without a goodbye, a consumer that never acks a tenth, a
## producer flood beyond the in-flight bounds; figures to bench-results/soak.json (and stderr).
SOAK_PRODUCE_SECS ?= 120
SOAK_CLIENTS ?= 30000
SOAK_FLOOD_SECS ?= 10
SOAK_HOLD_SECS ?= 20
bench-soak:
	$(CARGO) build --release --locked --features nats-bench --bin rmq-gateway
	rm -f bench-results/soak.json
	RMQ_GATEWAY_BIN=$(BENCH_BIN) SOAK_RESULTS=$(CURDIR)/bench-results/soak.json \
	  SOAK_PRODUCE_SECS=$(SOAK_PRODUCE_SECS) SOAK_CLIENTS=$(SOAK_CLIENTS) SOAK_FLOOD_SECS=$(SOAK_FLOOD_SECS) \
	  SOAK_HOLD_SECS=$(SOAK_HOLD_SECS) \
	  $(CARGO) test --locked -p integration-tests --test soak -- --nocapture --test-threads=1

clean:
	$(CARGO) clean
	rm -rf integration-tests/sdk/.work
