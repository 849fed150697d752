# studio-relay — the two commands a newcomer needs are `make run` and `make test`.
CARGO        ?= cargo
PREFIX       ?= /usr/local
DESTDIR      ?=
CONFIG_DIR   ?= /etc/studio-relay
UNIT_DIR     ?= /etc/systemd/system
# What `make install` copies; build it first (`make release`), as yourself:
# install does not build, so `sudo make install` never runs cargo as root.
BIN          ?= target/release/studio-relay
REDIS_URL    ?= redis://127.0.0.1:6379

.PHONY: all build release run test lint fmt demo bench bench-compare bench-smoke bench-micro install uninstall clean

all: build

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --workspace

# The one release build `make run` and `make demo` share. Building the
# example enables the dev-dependencies' features (tokio "process",
# tokio-tungstenite "connect"); building the binary alone would resolve other
# features and compile most of the tree a second time.
RUN_BUILD     = $(CARGO) build --release --bin studio-relay --example client
RELEASE_DIR  ?= target/release

## Run the relay with the repo's relay.toml against Redis on 127.0.0.1:6379 (or $REDIS_URL).
run:
	$(RUN_BUILD)
	REDIS_URL=$(REDIS_URL) $(RELEASE_DIR)/studio-relay --config relay.toml

## Every test: unit tests beside the code, black-box tests in tests/ (each starts its own redis-server).
test:
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## A private redis-server, the relay, a client, and a few published events
## (the release build `make run` uses; needs redis-server and redis-cli).
demo:
	$(RUN_BUILD)
	bash scripts/demo.sh $(RELEASE_DIR)

## Benchmarks print numbers; they are not tests. `make bench` is every
## load-generator scenario against studio-relay, then the in-process hot
## path (decode, encode, route, history on/off, resumes).
bench: release
	bash bench/bench.sh
	$(CARGO) bench --bench hotpath

## A few seconds of the load generator against the debug build (run by CI).
bench-smoke:
	$(CARGO) build --workspace
	bash bench/smoke.sh

## The per-event hot path (decode, encode, route) in-process, ns per operation.
bench-micro:
	$(CARGO) bench --bench hotpath

bench-compare: release
	bash bench/compare.sh

## Install binary, units and (unless one exists) /etc/studio-relay/relay.toml. Run `make release` first.
install:
	@test -x $(BIN) || { echo "no $(BIN): run 'make release' first (install does not build)"; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/studio-relay
	install -D -m 0644 systemd/studio-relay.service $(DESTDIR)$(UNIT_DIR)/studio-relay.service
	install -D -m 0644 systemd/studio-relay.socket $(DESTDIR)$(UNIT_DIR)/studio-relay.socket
	sed -i 's|/usr/local/bin/studio-relay|$(PREFIX)/bin/studio-relay|g; s|/etc/studio-relay/relay.toml|$(CONFIG_DIR)/relay.toml|g' $(DESTDIR)$(UNIT_DIR)/studio-relay.service
	@if [ -e $(DESTDIR)$(CONFIG_DIR)/relay.toml ]; then \
		echo "keeping existing $(DESTDIR)$(CONFIG_DIR)/relay.toml"; \
	else \
		install -D -m 0644 relay.toml $(DESTDIR)$(CONFIG_DIR)/relay.toml; \
	fi
	@echo "installed; next: systemctl daemon-reload && systemctl enable --now studio-relay"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/studio-relay
	rm -f $(DESTDIR)$(UNIT_DIR)/studio-relay.service $(DESTDIR)$(UNIT_DIR)/studio-relay.socket
	@echo "left $(DESTDIR)$(CONFIG_DIR)/relay.toml in place (remove it by hand if wanted)"

clean:
	$(CARGO) clean
