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
# stay.
find "$CARGO_TARGET_DIR"/debug/deps -maxdepth 1 -type f -executable -mtime +2 -delete 2>/dev/null || true
# Every stage is bounded, so a regression that hangs fails the run instead of holding
# CI for its whole limit (nextest also ends a single test after 4 minutes).
bounded() { local limit=$1; shift; timeout --kill-after=30s "$limit" "$@"; }
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== web: generated code matches proto/, typecheck, build"
(cd web && npm run --silent check-gen && npm run --silent typecheck && npm run --silent build)
echo "== tests"
cargo nextest run --workspace --no-run "$@"
cargo build --bin petrel
echo "== deploy kit (systemd units, Kubernetes manifests, nats configs)"
bounded 5m scripts/validate-deploy.sh
bounded 30m cargo nextest run --workspace --no-fail-fast "$@"
echo "== browser tests (headless Chromium against petrel dev)"
(cd web && bounded 15m npm test)
# The stable part of fuzzing (every corpus input and a mutation smoke per target) ran
# with the tests above; this is the coverage-guided short run, on nightly.
echo "== fuzz smoke (cargo-fuzz, ${PETREL_FUZZ_SECONDS:-10} s per target)"
if cargo +nightly --version >/dev/null 2>&1; then
  bounded 15m scripts/fuzz.sh --seconds "${PETREL_FUZZ_SECONDS:-10}" --scratch
else
  echo "fuzz smoke: no nightly toolchain on this machine; only the stable corpus replay ran"
fi
