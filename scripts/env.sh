# Sourced by the scripts: shared cargo settings.
# Keep cargo's target dir outside the clone, so RocksDB (about 10 minutes to build on
# 2 cores) is built once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/petrel/target}"
