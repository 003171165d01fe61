#!/usr/bin/env bash
# Offline checks of the deploy kit (deploy/): every check prints what it looked at, and
# the script exits non-zero if any failed. A check whose tool is missing fails too
# (a check that could not run has not passed), except the optional ones, which say
# that they were skipped.
#   1. Kubernetes manifests: kubernetes-validate (PyPI; bundled schemas, no cluster),
#      strict, against one pinned Kubernetes version; then the manifests against each
#      other and against the production nats configs.
#   2. systemd units: systemd-analyze verify (any message fails the check, since an
#      unknown or unparsable directive is only a warning to systemd) and the offline
#      security review, with the real binaries in place of /usr/local/bin.
#   3. nats configs: nats-server -t on the production files and on those in the
#      Kubernetes ConfigMaps, with their variables set and throwaway certificates.
#   4. Petrel configs in the ConfigMaps: the built petrel must accept them.
#   5. Optional: promtool on deploy/prometheus (if installed); hadolint is not used.
# Needs: the petrel binary (cargo build --bin petrel), nats-server (scripts/bootstrap.sh),
# kubernetes-validate, systemd-analyze, openssl.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
petrel_find_nats

# The oldest Kubernetes the manifests are meant for is 1.29 (native sidecars on by
# default); validating against 1.31 also covers the fields they use.
K8S_VERSION=1.31.0
# systemd-analyze security's exposure, times ten (0–100): the units score 1.3–1.5
# today; a unit above 2.0 has lost part of its sandbox.
SYSTEMD_EXPOSURE_MAX=20

PETREL_BIN="${PETREL_BIN:-$CARGO_TARGET_DIR/debug/petrel}"
K8S_DIR=deploy/kubernetes
UNIT_DIR=deploy/systemd

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=()
passed=()
skipped=()
pass() { echo "  ok: $*"; passed+=("$*"); }
fail() { echo "  FAIL: $*"; failed+=("$*"); }
skip() { echo "  skipped: $*"; skipped+=("$*"); }
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)

echo "== 1. Kubernetes manifests ($K8S_DIR/*.yaml, Kubernetes $K8S_VERSION, strict)"
kv=""
if [ -n "$py_scripts" ] && [ -x "$py_scripts/kubernetes-validate" ]; then
  kv="$py_scripts/kubernetes-validate"
elif command -v kubernetes-validate >/dev/null 2>&1; then
  kv=$(command -v kubernetes-validate)
fi
if [ -z "$kv" ]; then
  fail "kubernetes-validate is not installed (python3 -m pip install kubernetes-validate; scripts/bootstrap.sh)"
else
  for f in "$K8S_DIR"/*.yaml; do
    if out=$("$kv" -k "$K8S_VERSION" --strict "$f" 2>&1) && ! grep -q -E '^(ERROR|WARNING)' <<<"$out"; then
      sed 's/^/    /' <<<"$out"
      pass "kubernetes-validate $f"
    else
      sed 's/^/    /' <<<"$out"
      fail "kubernetes-validate $f"
    fi
  done
fi

# What the schemas cannot see: every Secret, ConfigMap and key a manifest reads is one
# that secrets.example.yaml or a manifest defines, and the nats configs in the
# ConfigMaps grant exactly what the production files grant.
if out=$(python3 - "$K8S_DIR" <<'PY' 2>&1
import glob, os, sys
import yaml

k8s = sys.argv[1]
defined = {}  # (kind, name) -> set of keys
docs = []
for path in sorted(glob.glob(os.path.join(k8s, "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        docs.append((path, doc))
        if doc["kind"] in ("Secret", "ConfigMap"):
            keys = set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys())
            defined[(doc["kind"], doc["metadata"]["name"])] = keys

errors = []
def need(where, kind, name, keys=()):
    if (kind, name) not in defined:
        errors.append(f"{where}: {kind} {name} is not defined in {k8s}/")
        return
    for key in keys:
        if key not in defined[(kind, name)]:
            errors.append(f"{where}: {kind} {name} has no key {key}")

def walk(where, node):
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            need(where, "Secret", node["secretKeyRef"]["name"], [node["secretKeyRef"]["key"]])
        if "configMapKeyRef" in node:
            need(where, "ConfigMap", node["configMapKeyRef"]["name"], [node["configMapKeyRef"]["key"]])
        if "secretRef" in node:
            need(where, "Secret", node["secretRef"]["name"])
        if "secretName" in node:
            need(where, "Secret", node["secretName"], [i["key"] for i in node.get("items", [])])
        for kind, field in (("Secret", "secret"), ("ConfigMap", "configMap")):
            src = node.get(field)
            if isinstance(src, dict) and "name" in src:
                need(where, kind, src["name"], [i["key"] for i in src.get("items", [])])
        for v in node.values():
            walk(where, v)
    elif isinstance(node, list):
        for v in node:
            walk(where, v)

for path, doc in docs:
    if doc["kind"] not in ("Secret", "ConfigMap"):
        walk(f"{path} {doc['kind']}/{doc['metadata']['name']}", doc.get("spec"))

def block(text, start, end):
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j].strip()

def configmap(name, key):
    for _, doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return doc["data"][key]
    raise SystemExit(f"ConfigMap {name} not found")

prod_hub = open("deploy/nats/production/hub.conf").read()
prod_leaf = open("deploy/nats/production/leaf.conf").read()
if block(configmap("hub-config", "hub.conf"), "accounts {", "leafnodes {") != block(prod_hub, "accounts {", "leafnodes {"):
    errors.append("hub.yaml: the accounts block of hub.conf differs from deploy/nats/production/hub.conf")
if block(configmap("edge-config", "leaf.conf"), "authorization {", "leafnodes {") != block(prod_leaf, "authorization {", "leafnodes {"):
    errors.append("edge.yaml: the authorization block of leaf.conf differs from deploy/nats/production/leaf.conf")

for e in errors:
    print(e)
print(f"{len(docs)} resources; {sum(1 for k in defined if k[0] == 'Secret')} Secrets and "
      f"{sum(1 for k in defined if k[0] == 'ConfigMap')} ConfigMaps defined")
sys.exit(1 if errors else 0)
PY
); then
  sed 's/^/    /' <<<"$out"
  pass "manifests: every Secret/ConfigMap key read is defined; hub.conf accounts and leaf.conf users equal production's"
else
  sed 's/^/    /' <<<"$out"
  fail "manifests: references or nats permissions out of step"
fi

echo "== 2. systemd units ($UNIT_DIR/*.service)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  fail "systemd-analyze is not installed (Debian: systemd), the units were NOT checked"
elif [ ! -x "$PETREL_BIN" ]; then
  fail "no petrel binary at $PETREL_BIN (cargo build --bin petrel): verify needs the ExecStart binaries"
elif [ -z "${NATS_SERVER_BIN:-}" ]; then
  fail "no nats-server (scripts/bootstrap.sh installs it): verify needs the ExecStart binaries"
else
  mkdir -p "$tmp/units"
  for f in "$UNIT_DIR"/*.service; do
    sed -e "s#/usr/local/bin/petrel#$PETREL_BIN#g" \
        -e "s#/usr/local/bin/nats-server#$NATS_SERVER_BIN#g" "$f" >"$tmp/units/$(basename "$f")"
  done
  echo "    (copies with /usr/local/bin/petrel -> $PETREL_BIN, /usr/local/bin/nats-server -> $NATS_SERVER_BIN)"
  for f in "$tmp"/units/*.service; do
    name=$(basename "$f")
    # Console logging at the default level shows the warnings (unknown keys, values
    # that do not parse) that systemd otherwise ignores with exit status 0; only
    # these units are checked, not the system's units they name.
    out=$(SYSTEMD_LOG_TARGET=console systemd-analyze --man=no --recursive-errors=no verify "$f" 2>&1)
    rc=$?
    if [ "$rc" = 0 ] && [ -z "$out" ]; then
      pass "systemd-analyze verify $UNIT_DIR/$name"
    else
      sed "s#$tmp/units/#$UNIT_DIR/#g; s/^/    /" <<<"$out"
      fail "systemd-analyze verify $UNIT_DIR/$name (exit $rc)"
    fi
    exposure=$(systemd-analyze security --offline=yes --man=no "$f" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if systemd-analyze security --offline=yes --man=no --threshold="$SYSTEMD_EXPOSURE_MAX" "$f" >/dev/null 2>&1; then
      pass "systemd-analyze security $UNIT_DIR/$name: exposure ${exposure:-?} (limit $((SYSTEMD_EXPOSURE_MAX / 10)).$((SYSTEMD_EXPOSURE_MAX % 10)))"
    else
      fail "systemd-analyze security $UNIT_DIR/$name: exposure ${exposure:-?}, above $((SYSTEMD_EXPOSURE_MAX / 10)).$((SYSTEMD_EXPOSURE_MAX % 10))"
    fi
  done
fi

echo "== 3. nats configs (nats-server -t)"
# The ConfigMaps' files, extracted.
python3 - "$K8S_DIR" "$tmp" <<'PY'
import sys, yaml
k8s, out = sys.argv[1], sys.argv[2]
want = {"hub-config": ["hub.conf"], "edge-config": ["leaf.conf", "gateway.toml"],
        "workers-config": ["push.toml", "messages.toml"]}
for f in ("hub.yaml", "edge.yaml", "services.yaml"):
    for doc in yaml.safe_load_all(open(f"{k8s}/{f}")):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in want:
            for key in want[doc["metadata"]["name"]]:
                open(f"{out}/k8s-{key}", "w").write(doc["data"][key])
PY
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  fail "no nats-server (scripts/bootstrap.sh installs it)"
elif ! command -v openssl >/dev/null 2>&1; then
  fail "openssl is missing: the configs name TLS files, which nats-server -t loads"
else
  # A throwaway CA and node certificate: nats-server -t loads the TLS files.
  pki="$tmp/pki"
  mkdir -p "$pki" "$tmp/store" "$tmp/run"
  if ! {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
      -subj /CN=validate-ca -keyout "$pki/ca.key" -out "$pki/ca.pem" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=hub-0 -keyout "$pki/node.key" -out "$pki/node.csr" &&
    printf 'subjectAltName=DNS:*.hub.petrel.svc.cluster.local\nextendedKeyUsage=serverAuth,clientAuth\n' >"$pki/ext" &&
    openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 1 -extfile "$pki/ext" -out "$pki/node.pem"
  } >"$tmp/openssl.log" 2>&1; then
    cat "$tmp/openssl.log"
    fail "could not make test certificates"
  fi
  # A bcrypt hash in the form `nats server passwd` makes ($2a$): read from the
  # environment, it must parse as it is.
  hash='$2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy'
  for conf in deploy/nats/production/hub.conf deploy/nats/production/leaf.conf \
              "$tmp/k8s-hub.conf" "$tmp/k8s-leaf.conf"; do
    shown=$conf
    case "$conf" in
      "$tmp/k8s-hub.conf") shown="$K8S_DIR/hub.yaml ConfigMap hub-config hub.conf" ;;
      "$tmp/k8s-leaf.conf") shown="$K8S_DIR/edge.yaml ConfigMap edge-config leaf.conf" ;;
    esac
    checked="$tmp/check-$(basename "$conf")"
    sed -e "s#/etc/petrel/hub/node.pem#$pki/node.pem#g" \
        -e "s#/etc/petrel/hub/node.key#$pki/node.key#g" \
        -e "s#/etc/petrel/hub/ca.pem#$pki/ca.pem#g" \
        -e "s#/etc/petrel/leaf/ca.pem#$pki/ca.pem#g" \
        -e "s#/var/lib/petrel#$tmp/store#g" \
        -e "s#/var/run/nats#$tmp/run#g" "$conf" >"$checked"
    if out=$(env PETREL_HUB_NAME=hub-0 PETREL_EDGE_NAME=validate-edge-0 \
        PETREL_EDGE_PASSWORD="$hash" PETREL_PUSH_PASSWORD="$hash" PETREL_MESSAGES_PASSWORD="$hash" \
        PETREL_ADMIN_PASSWORD="$hash" PETREL_SYS_PASSWORD="$hash" \
        PETREL_LEAF_GATEWAY_PASSWORD="$hash" PETREL_LEAF_SERVICES_PASSWORD="$hash" \
        PETREL_HUB_URL_0=nats-leaf://petrel-edge:x@hub-0.hub.petrel.svc.cluster.local:7422 \
        PETREL_HUB_URL_1=nats-leaf://petrel-edge:x@hub-1.hub.petrel.svc.cluster.local:7422 \
        PETREL_HUB_URL_2=nats-leaf://petrel-edge:x@hub-2.hub.petrel.svc.cluster.local:7422 \
        "$NATS_SERVER_BIN" -t -c "$checked" 2>&1); then
      pass "nats-server -t $shown"
    else
      sed "s/^/    /" <<<"$out"
      fail "nats-server -t $shown"
    fi
  done
fi

echo "== 4. Petrel configs in the ConfigMaps, read by $PETREL_BIN"
# The binary has no check-only flag: each command is started with its file and
# addresses that lead nowhere (loopback port 1, ephemeral listeners, a scratch
# store), and must get past reading the config (an error there names the file, "in
# config FILE"); it then stops at a missing certificate or an unreachable server, or
# is ended after a few seconds.
if [ ! -x "$PETREL_BIN" ]; then
  fail "no petrel binary at $PETREL_BIN (cargo build --bin petrel)"
else
  nowhere_env=(
    PETREL_GATEWAY_ID=validate-edge-0 PETREL_LISTEN_QUIC=127.0.0.1:0
    PETREL_LISTEN_WEBSOCKET=127.0.0.1:0 PETREL_LISTEN_HTTP=127.0.0.1:0
    PETREL_STORAGE_PATH="$tmp/gateway-store" PETREL_NATS_URL=nats://127.0.0.1:1
    PETREL_REDIS_URL=redis://127.0.0.1:1/0
    PETREL_PUSH_NATS_URL=tls://u:p@127.0.0.1:1 PETREL_PUSH_REDIS_URL=redis://127.0.0.1:1
    PETREL_PUSH_METRICS_LISTEN=127.0.0.1:0
    PETREL_MESSAGES_NATS_URL=tls://u:p@127.0.0.1:1 PETREL_MESSAGES_REDIS_URL=redis://127.0.0.1:1
    PETREL_MESSAGES_POSTGRES_URL=postgres://u:p@127.0.0.1:1/petrel
    PETREL_MESSAGES_METRICS_LISTEN=127.0.0.1:0
  )
  for pair in "gateway:gateway.toml:edge.yaml" "push:push.toml:services.yaml" "messages:messages.toml:services.yaml"; do
    IFS=: read -r cmd file manifest <<<"$pair"
    out=$(env "${nowhere_env[@]}" timeout --kill-after=5s 10s \
      "$PETREL_BIN" "$cmd" --config "$tmp/k8s-$file" 2>&1 </dev/null)
    if grep -q "in config " <<<"$out"; then
      grep "in config " <<<"$out" | sed "s#$tmp/k8s-##g; s/^/    /"
      fail "petrel $cmd refuses $K8S_DIR/$manifest's $file"
    else
      pass "petrel $cmd accepts $K8S_DIR/$manifest's $file ($(tail -n1 <<<"$out" | cut -c1-100))"
    fi
  done
fi

echo "== 5. Optional checks"
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1); then
    pass "promtool check rules deploy/prometheus/alerts.yml"
  else
    sed 's/^/    /' <<<"$out"
    fail "promtool check rules deploy/prometheus/alerts.yml"
  fi
  if out=$(promtool check config deploy/prometheus/prometheus.yml 2>&1); then
    pass "promtool check config deploy/prometheus/prometheus.yml"
  elif grep -q "kubernetes_sd_configs not found" <<<"$out"; then
    # Debian builds Prometheus without Kubernetes discovery: check the rest.
    python3 - deploy/prometheus/prometheus.yml "$tmp/prometheus.yml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["scrape_configs"] = [j for j in c["scrape_configs"] if "kubernetes_sd_configs" not in j]
yaml.safe_dump(c, open(sys.argv[2], "w"))
PY
    cp deploy/prometheus/alerts.yml "$tmp/alerts.yml"
    if out=$(promtool check config "$tmp/prometheus.yml" 2>&1); then
      pass "promtool check config deploy/prometheus/prometheus.yml (without its kubernetes_sd jobs: this promtool was built without Kubernetes discovery)"
    else
      sed 's/^/    /' <<<"$out"
      fail "promtool check config deploy/prometheus/prometheus.yml"
    fi
  else
    sed 's/^/    /' <<<"$out"
    fail "promtool check config deploy/prometheus/prometheus.yml"
  fi
else
  skip "promtool is not installed: deploy/prometheus not checked"
fi
skip "hadolint (not available): deploy/container/Dockerfile is not linted, and no image is built here"

echo "== summary: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
for f in "${failed[@]}"; do echo "  FAIL: $f"; done
[ "${#failed[@]}" = 0 ]
