#!/usr/bin/env bash
# Gate a registered version against the champion and promote it when it passes; what the
# promote workflow (.github/workflows/promote.yml) runs. The MLflow server comes from
# MLFLOW_TRACKING_URI (a repository secret there). The gate needs the prepared test split:
# the corpus of DATA_SOURCE (default: the params file's data.source) is imported and
# prepared first (resumable: nothing is redone when it is up to date).
#
#   mlops/promote.sh [VERSION]        # a version number, an alias (default: challenger), latest
#
# Environment: MLFLOW_TRACKING_URI (required), MOUTHMAP_PARAMS (default params.yaml),
# DATA_SOURCE (a corpus directory), GATE_POLICY (default mlops/gate.yaml).
# Exit: 0 promoted (or already champion), 1 refused by the gate, 2 an error.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-challenger}"
params="${MOUTHMAP_PARAMS:-params.yaml}"
policy="${GATE_POLICY:-mlops/gate.yaml}"
mouthmap="${MOUTHMAP:-mouthmap}"

if [[ -z "${MLFLOW_TRACKING_URI:-}" ]]; then
  echo "error: MLFLOW_TRACKING_URI is not set (the MLflow server to promote on)" >&2
  exit 2
fi
source_dir="${DATA_SOURCE:-$("${PYTHON:-python}" -c 'import sys
from mouthmap.config import load_params
p = load_params(sys.argv[1])
print(p.path(p.data.source))' "$params")}"
"$mouthmap" data fetch --from "$source_dir" -p "$params"
"$mouthmap" data prepare -p "$params"
"$mouthmap" registry show
set +e
"$mouthmap" registry promote --version "$version" --policy "$policy" -p "$params"
rc=$?
set -e
"$mouthmap" registry show
exit "$rc"
