#!/usr/bin/env bash
# Entry of the Triton images: a model package -> a Triton model repository -> Triton in the
# foreground (the container's main process).
#
#   MOUTHMAP_MODEL  a mounted package directory (default /models/package) or a registry
#                   reference such as models:/mouthmap@champion, fetched from
#                   $MLFLOW_TRACKING_URI the way the Helm chart's init container fetches it
#   MOUTHMAP_TRITON ngc (the official server with its ONNX Runtime backend; GPU clusters) or
#                   cpu (the server inside nvidia-pytriton; the triton-cpu image)
#   MOUTHMAP_WORK   where a fetched package and the repository are written (default /tmp/mouthmap)
#
# Extra arguments go to the server (ngc: tritonserver's flags; cpu: `mouthmap serve run`'s).
set -euo pipefail
model="${MOUTHMAP_MODEL:-/models/package}"
work="${MOUTHMAP_WORK:-/tmp/mouthmap}"
repo="${MOUTHMAP_REPO:-$work/repository}"
flavour="${MOUTHMAP_TRITON:-ngc}"
mkdir -p "$work"
if [[ "$model" == models:/* ]]; then
  ref="${model#models:/}"; ref="${ref#*@}"
  rm -rf "$work/package"
  mouthmap registry download "$ref" --out "$work/package"
  model="$work/package"
fi
if [[ "$flavour" == cpu ]]; then
  # pytriton's server has the Python backend only: ONNX Runtime runs inside it
  mouthmap serve build-repo "$model" "$repo" --encoder-backend python --device cpu
  exec mouthmap serve run "$repo" --state-dir "$work/triton" "$@"
fi
mouthmap serve build-repo "$model" "$repo" \
  --encoder-backend onnxruntime --device "${MOUTHMAP_DEVICE:-gpu}"
exec tritonserver --model-repository="$repo" "$@"
