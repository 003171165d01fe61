#!/usr/bin/env bash
# README command 2: run every test (unit, property, end-to-end against real nats-server
# processes, browser tests in headless Chromium), after formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/bootstrap.sh
petrel_find_nats
# The shared target dir outlives clones: every clone's test binaries (~400 MB each, with
# RocksDB linked in) would pile up there until the disk is full. Test executables not
# rebuilt for two days are removed (cargo relinks one if it is needed again); libraries
# stay. Incremental compilation buys nothing for a full test run and costs gigabytes.
find "$CARGO_TARGET_DIR"/debug/deps -maxdepth 1 -type f -executable -mtime +2 -delete 2>/dev/null || true
export CARGO_INCREMENTAL=0
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
