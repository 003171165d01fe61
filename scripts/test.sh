#!/usr/bin/env bash
# README command 2: run every test (unit, property, end-to-end against real nats-server
# processes, browser tests in headless Chromium), after formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/bootstrap.sh
petrel_find_nats
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== web: generated code matches proto/, typecheck, build"
(cd web && npm run --silent check-gen && npm run --silent typecheck && npm run --silent build)
echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"
echo "== browser tests (headless Chromium against petrel dev)"
cargo build --bin petrel
(cd web && npm test)
