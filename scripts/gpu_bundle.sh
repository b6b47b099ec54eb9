#!/usr/bin/env bash
# Builds .gpu/ (git-ignored): what a lent GPU machine needs to train MouthMap in one call.
#   .gpu/grid.tar  the prepared corpus as `mouthmap data pack` writes it (~20 MB for GRID s1)
#   .gpu/whl/      wheels (CPython 3.12, x86-64) of the training's needs its image lacks
# Run it here, once, after `mouthmap data prepare` and `mouthmap data validate`; then
# scripts/gpu_train.sh runs on the lent machine (docs/training.md, "Training on a lent GPU").
# usage: bash scripts/gpu_bundle.sh [PARAMS]      (default params.yaml)
set -euo pipefail
params=${1:-params.yaml}
cd "$(git rev-parse --show-toplevel)"
mkdir -p .gpu/whl
python -m mouthmap data pack .gpu/grid.tar -p "$params"
# the GPU image has torch, numpy, pandas, OpenCV, PyYAML, tqdm and matplotlib; not pydantic or
# jiwer (nor MLflow: the script trains with tracking off). Its typer and click may be other
# versions than the CLI was written for, so those travel too. Pinned to what runs here.
pins=$(python - <<'PY'
from importlib.metadata import version
names = ["pydantic", "pydantic_core", "annotated-types", "typing-inspection", "jiwer", "rapidfuzz",
         "typer", "click"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
rm -f .gpu/whl/*.whl
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl $pins
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -sb .gpu | cut -f1)
total=$(( (tracked + extra) / 1048576 ))
echo "bundle: .gpu $(( extra / 1048576 )) MiB + tracked files $(( tracked / 1048576 )) MiB = ${total} MiB (limit 64)"
if [ "$total" -ge 64 ]; then
  echo "error: over the 64 MiB a device call carries: pack with a higher --crf" >&2
  exit 1
fi
