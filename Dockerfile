# MouthMap images, one target each. `make images` (mouthmap images build) builds them all,
# tagged VERSION and VERSION-COMMIT, with a base made from Debian packages where the public
# one cannot be pulled. By hand (the classic builder works; no BuildKit feature is used):
#
#   docker build --target pipeline   -t mouthmap/pipeline:0.1.0 .    # every Kubeflow component (CPU)
#   docker build --target pipeline   --build-arg TORCH=cu128 -t mouthmap/pipeline:0.1.0-cuda .
#   docker build --target proxy      -t mouthmap/proxy:0.1.0 .       # browsers' WebSocket proxy
#   docker build --target triton-cpu -t mouthmap/triton:0.1.0-cpu .  # Triton on CPU, no NGC
#   docker build --target triton     -t mouthmap/triton:0.1.0 .      # NGC Triton (GPU clusters)
#
# Python packages come from the lock (requirements/, hash-checked; scripts/deps.py), one
# group of it per image ([tool.mouthmap.deps-groups] in pyproject.toml). Compilers live only
# in the deps-* stages; the images copy the finished environment (/opt/mouthmap) from them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Triton 2.51 = the tritonserver inside nvidia-pytriton 0.7.0, which the tests run here
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# --- common base: Python 3.11, the one system library the wheels do not bundle --------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    MOUTHMAP_HOME=/app \
    VIRTUAL_ENV=/opt/mouthmap \
    PATH=/opt/mouthmap/bin:$PATH
# libgomp1: torch/onnxruntime OpenMP. UID 10001: what the Helm chart runs every pod as
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 mouthmap
WORKDIR /app

# --- the locked environments (a C++ toolchain builds the one sdist, kenlm; it stays here) ----
# The classic builder builds every stage above the target, so each image's chain is placed
# after the cheaper ones: proxy, then triton-cpu, then pipeline.
FROM base AS deps
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.* python3-dev=3.11.* \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml ./
COPY requirements requirements
COPY scripts/deps.py scripts/deps.py

# --- proxy: browsers' WebSocket in front of Triton's gRPC stream (no PyTorch) ----------------
FROM deps AS deps-proxy
RUN python3 -m venv /opt/mouthmap \
    && python3 scripts/deps.py install /opt/mouthmap/bin/python --group proxy --no-project

FROM base AS proxy
COPY --from=deps-proxy /opt/mouthmap /opt/mouthmap
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-deps --no-build-isolation -e . && rm -rf build
USER 10001
EXPOSE 8080
ENTRYPOINT ["mouthmap-proxy"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--triton-url", "triton:8001"]

# --- triton-cpu: the Triton server of nvidia-pytriton (2.51, CPU), no NGC image needed -------
FROM deps AS deps-triton
RUN python3 -m venv /opt/mouthmap \
    && python3 scripts/deps.py install /opt/mouthmap/bin/python --group triton --no-project

FROM base AS triton-cpu
COPY --from=deps-triton /opt/mouthmap /opt/mouthmap
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-deps --no-build-isolation -e . && rm -rf build
COPY params.yaml ./
COPY mlops mlops
COPY docker/triton-entrypoint.sh docker/
ENV MOUTHMAP_TRITON=cpu \
    MOUTHMAP_DEVICE=cpu
USER 10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["/app/docker/triton-entrypoint.sh"]

# --- pipeline: every Kubeflow component (data, training, compression, registry) --------------
FROM deps AS deps-pipeline
# cpu | a CUDA variant of PyTorch's index (cu128): CUDA wheels bundle the CUDA runtime; the
# node needs only the NVIDIA driver and container toolkit. ONNX Runtime stays the CPU build.
ARG TORCH=cpu
# where the locked CPU torch wheel may also be found (a local wheelhouse, served over HTTP by
# `mouthmap images build`); empty: PyTorch's CPU index only
ARG PIP_FIND_LINKS=""
RUN python3 -m venv /opt/mouthmap \
    && python3 scripts/deps.py install /opt/mouthmap/bin/python --group pipeline \
       --torch "$TORCH" --no-project

FROM base AS pipeline
COPY --from=deps-pipeline /opt/mouthmap /opt/mouthmap
COPY pyproject.toml README.md ./
COPY src src
# editable: the steps find params.yaml, mlops/ and data/ beside the sources
RUN pip install --no-deps --no-build-isolation -e . && rm -rf build
COPY params.yaml dvc.yaml ./
COPY data/sample data/sample
COPY data/splits data/splits
COPY components components
COPY pipelines pipelines
COPY mlops mlops
# the code's commit, for the lineage of the packages a pipeline run makes (no .git in here)
ARG GIT_COMMIT=""
ENV MOUTHMAP_GIT_COMMIT=$GIT_COMMIT
USER 10001
ENTRYPOINT ["mouthmap"]
CMD ["--help"]

# --- triton: the official Triton server + the project's backends and dependencies ------------
FROM ${TRITON_IMAGE} AS triton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    MOUTHMAP_HOME=/app \
    VIRTUAL_ENV=/opt/mouthmap \
    PATH=/opt/mouthmap/bin:/opt/tritonserver/bin:$PATH \
    PYTHONPATH=/opt/mouthmap/lib/python3.11/site-packages
# the image's Python is 3.10; the project and its Python-backend models need 3.11.
# deadsnakes keeps only its newest builds, so a version pin would break the build later.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/mouthmap
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY scripts/deps.py scripts/deps.py
COPY src src
# Triton's Python backend runs model.py in the interpreter its stub was built for; the stub for
# Python 3.11 (the project's) ships in nvidia-pytriton, made for Triton 2.51
RUN python3.11 scripts/deps.py install /opt/mouthmap/bin/python --group triton --no-editable \
    && stub="$(python -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/python_backend_stubs/3.11/triton_python_backend_stub")')" \
    && install -D -m 0755 "$stub" /opt/tritonserver/backends/python/triton_python_backend_stub
COPY params.yaml ./
COPY mlops mlops
COPY docker/triton-entrypoint.sh docker/
USER 10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["/app/docker/triton-entrypoint.sh"]
