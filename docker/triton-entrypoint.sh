#!/usr/bin/env bash
# Entry of the Triton image: a model package -> a Triton model repository -> tritonserver in
# the foreground (the container's main process). MOUTHMAP_MODEL is a mounted package
# directory (default /models/package) or a registry reference such as
# models:/mouthmap@champion, fetched from $MLFLOW_TRACKING_URI. Extra arguments go to
# tritonserver.
set -euo pipefail
model="${MOUTHMAP_MODEL:-/models/package}"
repo="${MOUTHMAP_REPO:-/models/repository}"
if [[ "$model" == models:/* ]]; then
  ref="${model#models:/}"; ref="${ref#*@}"
  mouthmap registry download "$ref" --out /models/package
  model=/models/package
fi
mouthmap serve build-repo "$model" "$repo" \
  --encoder-backend onnxruntime --device "${MOUTHMAP_DEVICE:-gpu}"
exec tritonserver --model-repository="$repo" "$@"
