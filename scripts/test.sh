#!/usr/bin/env bash
# README command 2: run every test (unit, property, end-to-end against real nats-server
# processes), after formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/bootstrap.sh
petrel_find_nats
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"
