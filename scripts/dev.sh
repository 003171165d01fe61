#!/usr/bin/env bash
# README command 1: start a local edge (hub + leaf nats-server, streams, gateway).
# Extra arguments go to `petrel dev` (e.g. --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/bootstrap.sh
petrel_find_nats
cargo build --bin petrel
(cd web && npm run --silent build)
exec "$CARGO_TARGET_DIR/debug/petrel" dev --web-dir web/dist "$@"
