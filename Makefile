# rmq-gateway — the README's two commands are `make run` and `make test`.
CARGO ?= cargo
export RUST_BACKTRACE ?= 0

.PHONY: all build run test test-unit test-e2e sdk-setup lint fmt bench clean

all: build

build:
	$(CARGO) build --workspace --locked

## Run the gateway on its embedded defaults (SQLite + local log under ./data; no other service).
run:
	$(CARGO) run --locked --bin rmq-gateway -- serve --config config/gateway.yaml

## Unit tests, protocol tests and the end-to-end tests with the official SDKs.
test: build sdk-setup
	RMQ_E2E_REQUIRED=1 $(CARGO) test --workspace --locked --no-fail-fast

test-unit:
	$(CARGO) test --locked --lib

## Installs the official Rust, Python and Node.js SDKs into integration-tests/sdk/.work.
sdk-setup:
	bash integration-tests/sdk/setup.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (release build); results go to bench-results/.
bench:
	$(CARGO) build --release --locked --bin rmq-gateway
	./target/release/rmq-gateway bench storage --quick

clean:
	$(CARGO) clean
	rm -rf integration-tests/sdk/.work
