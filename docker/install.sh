#!/usr/bin/env bash
# The Python install steps of each image target of the Dockerfile, in one place: the
# Dockerfile runs `docker/install.sh TARGET` and tests/test_docker.py runs the same script
# in a virtual environment, so the image's installs are tested without a Docker daemon.
#
#   docker/install.sh pipeline   # every Kubeflow component: the whole project
#   docker/install.sh proxy      # the WebSocket proxy (mouthmap proxy)
#   docker/install.sh triton     # the project's Triton backends and their dependencies
#
# Environment: PYTHON (default: python3), TORCH_INDEX_URL (the PyTorch wheel index of the
# device: .../whl/cpu or .../whl/cu128; empty: the configured pip index), PIP_EXTRA_ARGS.
set -euo pipefail
target="${1:?usage: docker/install.sh pipeline|proxy|triton}"
python="${PYTHON:-python3}"
torch_pin="torch==2.13.0"   # keep in step with pyproject.toml
cd "$(dirname "$0")/.."

pip_install() {
  # shellcheck disable=SC2086  # PIP_EXTRA_ARGS is a list of flags
  "$python" -m pip install --no-cache-dir --disable-pip-version-check ${PIP_EXTRA_ARGS:-} "$@"
}

install_torch() {
  # torch first, from the device's index: PyPI's default Linux wheel is the CUDA build
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    pip_install --index-url "$TORCH_INDEX_URL" "$torch_pin"
  else
    pip_install "$torch_pin"
  fi
}

case "$target" in
  pipeline|proxy|triton)
    install_torch
    # editable: the steps find params.yaml, mlops/ and data/ beside the sources; the three
    # images install the same package (one dependency set) and differ in base and entry
    pip_install -e .
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
"$python" -m pip check
"$python" -c "import mouthmap, onnxruntime; print('mouthmap', mouthmap.__version__, 'ready for', '$target')"
