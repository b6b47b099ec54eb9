#!/usr/bin/env bash
# On a lent GPU machine (or any CUDA box with PyTorch): unpack the corpus that
# scripts/gpu_bundle.sh packed, train within a wall-time budget, and leave the slim best
# checkpoint, its history and learning curve in $OUT (the device tool brings $OUT back).
#
# usage: bash scripts/gpu_train.sh MINUTES [section.key=value ...]
#   e.g. bash scripts/gpu_train.sh 7 train.align_weight=2.0 train.splice_p=0.5
# The overrides apply to params.yaml. A 2-epoch probe times an epoch first, so the real run's
# train.epochs (and its cosine schedule) fit in what is left of MINUTES, unless
# train.epochs is given; train.max_minutes stops it in time either way. Without a GPU it stops
# at once, unless ALLOW_CPU=1.
set -euo pipefail
minutes=${1:?usage: gpu_train.sh MINUTES [section.key=value ...]}
shift
start=$(date +%s)
mkdir -p "${OUT:-runs/gpu_out}"
out=$(cd "${OUT:-runs/gpu_out}" && pwd)  # absolute: the script moves to the repository root
cd "$(dirname "$0")/.."
if [ ! -f .gpu/grid.tar ]; then
  echo "error: .gpu/grid.tar is missing: run scripts/gpu_bundle.sh first and carry .gpu" >&2
  exit 1
fi
if ! python3 -c "import pydantic, jiwer" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# fail in seconds, not after the budget, where PyTorch cannot use the GPU
python3 - <<'PY' || exit 1
import os, sys
import torch
if torch.cuda.is_available():
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
elif os.environ.get("ALLOW_CPU") == "1":
    print(f"torch {torch.__version__}: no GPU, training on the CPU (ALLOW_CPU=1)")
else:
    sys.exit("error: PyTorch sees no GPU (ALLOW_CPU=1 trains on the CPU anyway)")
PY

# the run's parameter file: params.yaml, the GPU's DataLoader workers, then the overrides
# (in the repository root: relative paths in a parameter file are read from where it lies)
p=params.gpu.yaml
write_params() {  # $p (and its copy in $out) from params.yaml and the overrides given
  python3 - "$p" "$@" <<'PY'
import sys
import yaml
raw = yaml.safe_load(open("params.yaml"))
raw["train"].update(num_workers=8, mlflow_uri="off")
for item in sys.argv[2:]:
    key, _, value = item.partition("=")
    section, _, field = key.partition(".")
    if not field or section not in raw:
        sys.exit(f"error: override {item!r} is not section.key=value")
    raw[section][field] = yaml.safe_load(value)
yaml.safe_dump(raw, open(sys.argv[1], "w"), sort_keys=False)
PY
  cp "$p" "$out/params.yaml"
}
write_params "$@"
python3 -m mouthmap data unpack .gpu/grid.tar -p "$p" -j 16 2>&1 | tail -1

left() { echo "$(( minutes * 60 - ($(date +%s) - start) ))"; }
epochs_given=$(printf '%s\n' "$@" | grep -c '^train\.epochs=' || true)
if [ "$epochs_given" = 0 ]; then
  python3 -m mouthmap train -p "$p" --epochs 2 --out runs/gpu_probe > "$out/probe.log" 2>&1 || {
    tr '\r' '\n' < "$out/probe.log" | tail -30
    exit 1
  }
  read -r per_epoch epochs < <(python3 - "$(left)" <<'PY'
import json, sys
per_epoch = json.load(open("runs/gpu_probe/history.json"))[-1]["epoch_seconds"]  # past warm-up
print(f"{per_epoch:.2f}", max(1, int(0.9 * float(sys.argv[1]) / per_epoch)))
PY
)
  echo "probe: $per_epoch s/epoch; training $epochs epochs in $(left) s"
  write_params "$@" "train.epochs=$epochs"
fi
budget=$(python3 -c "print(max(0.5, $(left) / 60))")
python3 -m mouthmap train -p "$p" --out runs/gpu --max-minutes "$budget" > "$out/train.log" 2>&1 || {
  tr '\r' '\n' < "$out/train.log" | tail -20
  exit 1
}
tr '\r' '\n' < "$out/train.log" | grep -a -E "^(epoch [0-9]+:|trained )"
python3 -m mouthmap models slim runs/gpu/best.pt "$out/best.pt"
cp runs/gpu/history.json runs/gpu/learning_curve.png "$out/" 2>/dev/null || true
echo "done in $(( $(date +%s) - start )) s: $out/best.pt"
