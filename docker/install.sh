#!/usr/bin/env bash
# The Python install steps of each image target of the Dockerfile, in one place: the
# Dockerfile runs `docker/install.sh TARGET` and tests/test_docker.py runs the same script
# in a virtual environment, so the image's installs are tested without a Docker daemon.
#
#   docker/install.sh pipeline   # every Kubeflow component: the whole project
#   docker/install.sh proxy      # the WebSocket proxy (mouthmap proxy)
#   docker/install.sh triton     # the project's Triton backends and their dependencies
#
# Environment: PYTHON (default: python3), TORCH (cpu, the locked CPU build, or a CUDA variant
# of PyTorch's index such as cu128), DEPS_INSTALLER (uv, the default, or pip).
# Everything comes from the lock (requirements/, hash-checked, no resolving: scripts/deps.py).
set -euo pipefail
target="${1:?usage: docker/install.sh pipeline|proxy|triton}"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

case "$target" in
  pipeline|proxy|triton)
    # editable: the steps find params.yaml, mlops/ and data/ beside the sources; the three
    # images install the same locked set (one dependency set) and differ in base and entry.
    # --no-sync: nothing the environment already holds is removed
    "$python" scripts/deps.py install "$python" --torch "${TORCH:-cpu}" --no-sync
    ;;
  *)
    echo "unknown target $target: use pipeline, proxy or triton" >&2
    exit 2
    ;;
esac
if [[ "$target" == triton && -n "${TRITON_BACKENDS_DIR:-}" ]]; then
  # Triton's Python backend runs model.py in the interpreter its stub was built for; the
  # stub for Python 3.11 (the project's) ships in nvidia-pytriton, made for Triton 2.51
  stub="$("$python" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/python_backend_stubs/3.11/triton_python_backend_stub")')"
  install -D -m 0755 "$stub" "$TRITON_BACKENDS_DIR/python/triton_python_backend_stub"
fi
"$python" -c "import mouthmap, onnxruntime; print('mouthmap', mouthmap.__version__, 'ready for', '$target')"
