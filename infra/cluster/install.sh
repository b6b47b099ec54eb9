#!/usr/bin/env bash
# Install MouthMap's cluster services, pinned (versions.env), in dependency order:
#   1. Kubeflow Pipelines (standalone)   2. the Kubeflow training operator (PyTorchJob)
#   3. MLflow with PostgreSQL and S3     4. the MouthMap chart (Triton, proxy, drift job)
# Needs kubectl >= 1.27 and helm >= 3.12 pointed at the cluster, and the Secrets of
# infra/README.md. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=/dev/null
source ./versions.env
run() { echo "+ $*"; if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi; }

KFP="github.com/kubeflow/pipelines/manifests/kustomize"
run kubectl apply -k "$KFP/cluster-scoped-resources?ref=$KFP_VERSION"
run kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
run kubectl apply -k kubeflow-pipelines
run kubectl apply --server-side -k training-operator
run kubectl apply -k mlflow
run kubectl -n mlflow rollout status deployment/mlflow --timeout=600s
run helm upgrade --install mouthmap ../../charts/mouthmap --namespace mouthmap \
  --create-namespace ${HELM_VALUES:+--values "$HELM_VALUES"}
run helm test mouthmap --namespace mouthmap
