# syntax=docker/dockerfile:1
# MouthMap images, one target each (the Python installs of every target live in
# docker/install.sh, which tests/test_docker.py runs in a venv):
#
#   docker build --target pipeline -t mouthmap/pipeline:0.1.0 .                 # CPU (default)
#   docker build --target pipeline --build-arg DEVICE=cuda -t mouthmap/pipeline:0.1.0-cuda .
#   docker build --target triton   -t mouthmap/triton:0.1.0 .                   # Triton serving
#   docker build --target proxy    -t mouthmap/proxy:0.1.0 .                    # WebSocket proxy
#
# The pipeline image is what every Kubeflow component runs in (components/image.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Triton 2.51 = the tritonserver inside nvidia-pytriton 0.7.0, which the tests run here
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# --- common base: Python 3.11, the few system libraries the wheels do not bundle -------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    MOUTHMAP_HOME=/app
# libgomp1: torch/onnxruntime OpenMP; git: the lineage tag (commit) of packages
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.* git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/*
# UID 10001: what the Helm chart runs every pod as (values.yaml securityContext)
RUN useradd --create-home --uid 10001 mouthmap
WORKDIR /app

# --- pipeline: every Kubeflow component (data, training, compression, registry) --------------
FROM base AS pipeline
# cpu | cuda: which PyTorch wheels (CUDA wheels bundle the CUDA runtime; the node needs only
# the NVIDIA driver and container toolkit). ONNX Runtime stays the CPU build here.
ARG DEVICE=cpu
ARG TORCH_CUDA=cu128
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY scripts/deps.py scripts/deps.py
COPY docker/install.sh docker/install.sh
COPY src src
RUN if [ "$DEVICE" = cuda ]; then flavour="$TORCH_CUDA"; else flavour=cpu; fi \
    && TORCH="$flavour" bash docker/install.sh pipeline
COPY params.yaml dvc.yaml ./
COPY data/sample data/sample
COPY data/splits data/splits
COPY components components
COPY pipelines pipelines
COPY mlops mlops
RUN chown -R mouthmap /app
USER 10001
ENTRYPOINT ["mouthmap"]
CMD ["--help"]

# --- proxy: browsers' WebSocket in front of Triton's gRPC stream -----------------------------
FROM base AS proxy
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY scripts/deps.py scripts/deps.py
COPY docker/install.sh docker/install.sh
COPY src src
RUN bash docker/install.sh proxy
USER 10001
EXPOSE 8080
ENTRYPOINT ["mouthmap", "proxy"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--triton", "triton:8001"]

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
COPY docker/install.sh docker/triton-entrypoint.sh docker/
COPY src src
RUN PYTHON=/opt/mouthmap/bin/python TRITON_BACKENDS_DIR=/opt/tritonserver/backends \
    bash docker/install.sh triton
COPY params.yaml ./
COPY mlops mlops
EXPOSE 8000 8001 8002
ENTRYPOINT ["/app/docker/triton-entrypoint.sh"]
