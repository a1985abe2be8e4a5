# Remedy's entry points. `make run` and `make test` are all a new user needs.

CARGO ?= cargo
SHELL := /usr/bin/env bash

.PHONY: run build test lint fmt e2e cluster-bins bench fuzz toolchain deps clean

## Build everything and start a coordinator and an agent on this machine.
run: build
	@scripts/run.sh

build:
	$(CARGO) build --workspace --bins

## Format check, clippy with -D warnings, every test that needs no cluster
## (unit tests, then real processes and a real Alertmanager on loopback, and
## nftables in network namespaces the tests make: needs root).
test: toolchain deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --lib --bins --tests --exclude remedy-e2e
	$(CARGO) test -p remedy-e2e --test core --test alertmanager --test engine --test ctl_engine --test directives --test log_tailer --test log_signals --test nft_blocking --test process_signals --test local_actions --test cluster_blocking --test own_infrastructure --test trust --test faults --test data_plane --test escalation --test listings --test secrets --test database_tls --test connections --test mail --test chat_ops --test self_metrics

lint: toolchain
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Tests against a real Kubernetes control plane built from Go modules
## (P0-002's failover on it also runs real PostgreSQL, from `make deps`).
e2e: toolchain deps cluster-bins
	$(CARGO) build --workspace --bins
	$(CARGO) test -p remedy-e2e --test cluster_harness --test leader --test kube_actuators --test agent_pods --test deploy --test runbooks_on_cluster --test cluster_store --test failover --test failover_repoint

## etcd, kube-apiserver, controller-manager, scheduler, kubectl and kwok,
## built from the Go module proxy and cached under ~/.cache/remedy.
cluster-bins:
	@command -v go >/dev/null || { echo "make cluster-bins: the Go toolchain (go >= 1.26) is required and was not found on PATH" >&2; exit 1; }
	tests/cluster/build.sh

## Benchmarks; figures and how to read them are in docs/benchmarks.md.
bench:
	scripts/bench.sh

## Fuzzes every parser of outside input, FUZZ_SECONDS (default 30) per target;
## crashes land in fuzz/regressions/ (docs/fuzzing.md). Needs cargo-fuzz.
FUZZ_SECONDS ?= 30
fuzz: toolchain
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) fuzz/run.sh

## The real services tests start (Alertmanager), from Debian's packages.
deps:
	@scripts/deps.sh

## rustfmt and clippy come with the toolchain on most machines; add them where not.
toolchain:
	@command -v cargo >/dev/null || { echo "make: cargo is required (https://rustup.rs)" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

clean:
	$(CARGO) clean
	rm -rf .remedy
