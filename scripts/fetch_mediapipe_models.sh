#!/usr/bin/env bash
# Reproduce src/mouthmap/assets/mediapipe/ from the mediapipe 0.10.21 wheel on PyPI.
# Why: the last mediapipe releases that bundle these models pin protobuf<5, which
# clashes with kfp/tritonclient; we only need the two .tflite files (Apache-2.0),
# which run in LiteRT without mediapipe itself.
set -euo pipefail

VERSION="${MEDIAPIPE_VERSION:-0.10.21}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${ROOT}/src/mouthmap/assets/mediapipe"
PIP="${PIP:-${ROOT}/.venv/bin/pip}"
[ -x "${PIP}" ] || PIP="python -m pip"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# --platform pins a wheel whose contents we know; the .tflite files are identical on every platform.
${PIP} download --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "${WORK}" "mediapipe==${VERSION}"
WHEEL="$(ls "${WORK}"/mediapipe-"${VERSION}"-*.whl)"

mkdir -p "${DEST}"
python3 - "${WHEEL}" "${DEST}" "${VERSION}" <<'PY'
import sys, zipfile, pathlib
wheel, dest, version = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
members = {
    "mediapipe/modules/face_detection/face_detection_short_range.tflite": "face_detection_short_range.tflite",
    "mediapipe/modules/face_landmark/face_landmark.tflite": "face_landmark.tflite",
    f"mediapipe-{version}.dist-info/LICENSE": "LICENSE",
}
with zipfile.ZipFile(wheel) as zf:
    for src, name in members.items():
        (dest / name).write_bytes(zf.read(src))
        print(f"extracted {src} -> {dest / name}")
PY
sha256sum "${DEST}"/*.tflite
