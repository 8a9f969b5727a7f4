#!/usr/bin/env bash
# Validates skiff's Kubernetes manifests: every YAML file in deploy/ and examples/kubernetes/.
#
# Offline, always:
#   1. each manifest against the Kubernetes 1.36 OpenAPI schemas, strictly (unknown fields are
#      errors): kubernetes-validate from PyPI, installed into target/venv-kv when missing;
#   2. the skiff resources inside ConfigMaps labelled skiff.io/type (site.yaml, listener.yaml,
#      connector.yaml) and the skiff.io/* annotations of Services;
#   3. each kustomization, rendered with `kubectl kustomize`, as in 1 (skipped, and said so,
#      when there is no kubectl); every manifest of deploy/ must be listed in its kustomization.
# With KUBECONFIG set (a test API server is up), also:
#   4. `kubectl apply --dry-run=server` of each manifest and kustomization, in the namespace
#      $SKIFF_VALIDATE_NAMESPACE (default: default). Kinds the server does not serve are
#      reported as skipped, not as failures.
#
# Stops at the first invalid file, saying which and why, with a non-zero exit.
# kubectl: target/kube-apiserver/root/usr/bin/kubectl if present, else `kubectl` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.36.0
VENV=target/venv-kv
KV="$VENV/bin/kubernetes-validate"
NAMESPACE="${SKIFF_VALIDATE_NAMESPACE:-default}"

fail() {
  echo "validate.sh: FAILED: $*" >&2
  exit 1
}

if [ ! -x "$KV" ]; then
  echo "installing kubernetes-validate into $VENV"
  python3 -m venv "$VENV" || fail "cannot make a Python venv at $VENV (apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate \
    || fail "cannot install kubernetes-validate from PyPI into $VENV"
fi

KUBECTL=""
if [ -x target/kube-apiserver/root/usr/bin/kubectl ]; then
  KUBECTL=target/kube-apiserver/root/usr/bin/kubectl
elif command -v kubectl >/dev/null 2>&1; then
  KUBECTL=$(command -v kubectl)
fi

mapfile -t manifests < <(find deploy examples/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name kustomization.yaml | sort)
mapfile -t kustomizations < <(find deploy examples/kubernetes -type f -name kustomization.yaml \
  -printf '%h\n' | sort)
[ ${#manifests[@]} -gt 0 ] || fail "no manifests found in deploy/ or examples/kubernetes/"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The skiff part of a manifest: resources inside skiff.io/type ConfigMaps, skiff.io/*
# annotations on Services, token Secrets. Fields as in site-controller/src/resources.rs.
cat >"$tmp/skiff_check.py" <<'PY'
import sys
import yaml

RESOURCES = {  # label value: (key, kind, spec fields, required spec fields)
    "site": ("site.yaml", "Site", {"linkAccess", "linkHosts", "linkPort", "edge"}, set()),
    "listener": ("listener.yaml", "Listener",
                 {"routingKey", "priority", "weighted", "host", "port", "type"}, {"port"}),
    "connector": ("connector.yaml", "Connector",
                  {"routingKey", "host", "port", "advertisedPort", "type"}, {"routingKey", "port"}),
}
PROTOCOLS = ("tcp", "http", "http2")
SERVICE_ANNOTATIONS = {"skiff.io/expose", "skiff.io/routing-key", "skiff.io/type"}


def port_ok(v):
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def check_resource(label, text):
    key, kind, fields, required = RESOURCES[label]
    try:
        r = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"{key} is not YAML: {e}"]
    if not isinstance(r, dict):
        return [f"{key} must hold one {kind} resource"]
    errs = []
    if r.get("apiVersion") != "skiff.io/v1alpha1":
        errs.append(f"{key}: apiVersion must be skiff.io/v1alpha1, not {r.get('apiVersion')!r}")
    if r.get("kind") != kind:
        errs.append(f"{key}: kind must be {kind} (label skiff.io/type: {label}), not {r.get('kind')!r}")
    extra = set(r) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        errs.append(f"{key}: unknown fields {sorted(extra)}")
    meta = r.get("metadata") or {}
    if not isinstance(meta, dict) or not meta.get("name") or set(meta) - {"name"}:
        errs.append(f"{key}: metadata must be {{name: NAME}}")
    spec = r.get("spec") or {}
    if not isinstance(spec, dict):
        return errs + [f"{key}: spec must be a mapping"]
    if label == "site" and "id" in spec:
        errs.append(f"{key}: no spec.id in Kubernetes (the id is made at first start, kept in Secret skiff-site-identity)")
    unknown = set(spec) - fields - ({"id"} if label == "site" else set())
    if unknown:
        errs.append(f"{key}: unknown spec fields {sorted(unknown)}; known: {sorted(fields)}")
    missing = required - set(spec)
    if missing:
        errs.append(f"{key}: spec needs {sorted(missing)}")
    for p in ("port", "linkPort", "advertisedPort"):
        if p in spec and not port_ok(spec[p]):
            errs.append(f"{key}: spec.{p} must be a port number 1-65535, not {spec[p]!r}")
    if spec.get("type", "tcp") not in PROTOCOLS:
        errs.append(f"{key}: spec.type must be one of {PROTOCOLS}")
    if label == "listener" and sum(1 for k in ("routingKey", "priority", "weighted") if k in spec) > 1:
        errs.append(f"{key}: at most one of routingKey, priority, weighted")
    if label == "site" and spec.get("edge") and spec.get("linkAccess"):
        errs.append(f"{key}: an edge site cannot have link access")
    return errs


def check(doc):
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    label = labels.get("skiff.io/type")
    errs = []
    if kind == "ConfigMap" and label is not None:
        if label not in RESOURCES:
            return [f"label skiff.io/type on a ConfigMap must be one of {sorted(RESOURCES)}, not {label!r}"]
        key = RESOURCES[label][0]
        data = doc.get("data") or {}
        if key not in data:
            return [f"a ConfigMap labelled skiff.io/type: {label} needs the key {key}"]
        errs += check_resource(label, data[key])
    if kind == "Secret" and label == "token":
        if "token.yaml" not in (doc.get("data") or {}) and "token.yaml" not in (doc.get("stringData") or {}):
            errs.append("a Secret labelled skiff.io/type: token needs the key token.yaml")
    if kind == "Service":
        ours = {k for k in annotations if k.startswith("skiff.io/")}
        if ours - SERVICE_ANNOTATIONS:
            errs.append(f"unknown annotations {sorted(ours - SERVICE_ANNOTATIONS)}; known: {sorted(SERVICE_ANNOTATIONS)}")
        if annotations.get("skiff.io/expose", "true") not in ("true", "false"):
            errs.append('skiff.io/expose must be "true" or "false"')
        if annotations.get("skiff.io/type", "tcp") not in PROTOCOLS:
            errs.append(f"skiff.io/type must be one of {PROTOCOLS}")
    return errs


failed = False
with open(sys.argv[1]) as f:
    for doc in yaml.safe_load_all(f):
        if not isinstance(doc, dict):
            continue
        where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        for e in check(doc):
            print(f"{sys.argv[1]}: {where}: {e}", file=sys.stderr)
            failed = True
sys.exit(1 if failed else 0)
PY

# Schema check of one file ($1), shown as $2. kubernetes-validate exits 0 on a kind it has no
# schema for (a typo in apiVersion or kind): its WARN lines count as failures here.
schema_check() {
  local out
  if ! out=$("$KV" --strict --kubernetes-version "$K8S_VERSION" --quiet "$1" 2>&1) \
      || grep -qE '^(WARN|ERROR)' <<<"$out"; then
    echo "$out" >&2
    fail "$2 is not valid Kubernetes $K8S_VERSION (kubernetes-validate --strict)"
  fi
}

# 1 and 2: each manifest.
for f in "${manifests[@]}"; do
  schema_check "$f" "$f"
  if ! out=$("$VENV/bin/python" "$tmp/skiff_check.py" "$f" 2>&1); then
    echo "$out" >&2
    fail "$f: skiff resource or annotation not valid"
  fi
  echo "ok  $f"
done

# 3: each kustomization, rendered.
rendered_count=0
if [ -z "$KUBECTL" ]; then
  echo "SKIPPED: kustomizations (${kustomizations[*]}): no kubectl to render them"
else
  for d in "${kustomizations[@]}"; do
    rendered="$tmp/$(echo "$d" | tr / _).yaml"
    if ! out=$("$KUBECTL" kustomize "$d" 2>&1 >"$rendered"); then
      echo "$out" >&2
      fail "$d/kustomization.yaml does not render (kubectl kustomize $d)"
    fi
    schema_check "$rendered" "$d/kustomization.yaml (rendered)"
    if ! out=$("$VENV/bin/python" "$tmp/skiff_check.py" "$rendered" 2>&1); then
      echo "$out" >&2
      fail "$d/kustomization.yaml (rendered): skiff resource or annotation not valid"
    fi
    echo "ok  $d/kustomization.yaml"
    rendered_count=$((rendered_count + 1))
  done
fi
for f in deploy/*.yaml; do
  case "$f" in deploy/kustomization.yaml) continue ;; esac
  grep -qE "^  - $(basename "$f")\$" deploy/kustomization.yaml \
    || fail "$f is not listed under resources in deploy/kustomization.yaml"
done

# 4: server-side dry run, when an API server is configured.
if [ -z "${KUBECONFIG:-}" ]; then
  echo "offline checks passed (${#manifests[@]} manifests, $rendered_count of ${#kustomizations[@]} kustomizations rendered); KUBECONFIG not set: no server dry-run"
  exit 0
fi
[ -n "$KUBECTL" ] || fail "KUBECONFIG is set but there is no kubectl"
"$KUBECTL" get namespace "$NAMESPACE" >/dev/null 2>&1 \
  || fail "namespace $NAMESPACE not found on the API server of $KUBECONFIG; create it or set SKIFF_VALIDATE_NAMESPACE"

skipped=()
# Dry-run one source: $1 is -f or -k, $2 the file or folder.
server_check() {
  local out rest
  if out=$("$KUBECTL" apply --dry-run=server --validate=strict -n "$NAMESPACE" "$1" "$2" 2>&1); then
    echo "ok  $2 (server dry-run)"
    return
  fi
  # A kind the server does not serve is not an invalid manifest; anything else is.
  rest=$(grep -vE 'resource mapping not found|ensure CRDs are installed first|\(server dry run\)$|^Warning:' <<<"$out" || true)
  if [ -n "$rest" ]; then
    echo "$out" >&2
    fail "$2 refused by the API server (kubectl apply --dry-run=server)"
  fi
  skipped+=("$2: $(grep -oE 'no matches for kind "[^"]+" in version "[^"]+"' <<<"$out" | sort -u | paste -sd ';' -)")
  echo "ok  $2 (server dry-run; some kinds not served, see below)"
}
for f in "${manifests[@]}"; do server_check -f "$f"; done
for d in "${kustomizations[@]}"; do server_check -k "$d"; done
if [ ${#skipped[@]} -gt 0 ]; then
  echo "not checked by this API server (kinds it does not serve):"
  printf '  %s\n' "${skipped[@]}"
fi
echo "all checks passed (${#manifests[@]} manifests, ${#kustomizations[@]} kustomizations, server dry-run against $KUBECONFIG)"
