"""The GitHub workflows: actionlint passes, every script they call exists, and the scripts
themselves work (the sanity training reduces the loss; promote.sh refuses to run blind).
promote.sh against a real MLflow server is in test_registry_integration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint_finds_nothing():
    tool = BIN / "actionlint" if (BIN / "actionlint").exists() else shutil.which("actionlint")
    if not tool:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]'")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    proc = subprocess.run([str(tool), *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_lint_tests_sanity_training_helm_and_every_image():
    ci = _load("ci.yml")
    assert {"lint", "test", "sanity-train", "helm", "docker", "pipeline-ir"} <= set(ci["jobs"])
    targets = {row["target"] for row in ci["jobs"]["docker"]["strategy"]["matrix"]["include"]}
    import re

    dockerfile = (WORKFLOWS.parents[1] / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    images = {s for s in stages if s != "base" and not s.startswith("deps")}
    assert images == {"pipeline", "proxy", "triton-cpu", "triton"}
    assert targets == images  # every image target is built
    runs = " ".join(s.get("run", "") for job in ci["jobs"].values() for s in job["steps"])
    for needle in ("ruff check", "ruff format --check", "make test", "hadolint", "actionlint",
                   "helm lint", "docker build", "scripts/sanity_train.py"):  # fmt: skip
        assert needle in runs, needle


def test_promote_runs_on_dispatch_or_tag_with_the_server_from_secrets():
    wf = _load("promote.yml")
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as true
    assert "workflow_dispatch" in on and on["push"]["tags"] == ["promote-v*"]
    job = wf["jobs"]["gate-and-promote"]
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert any("mlops/promote.sh" in s.get("run", "") for s in job["steps"])


def test_every_script_the_workflows_call_is_in_the_repo():
    text = " ".join(p.read_text() for p in WORKFLOWS.glob("*.yml"))
    paths = set(re.findall(r"\b((?:scripts|mlops|charts)/[\w./-]+\.(?:py|sh))", text))
    assert {"scripts/sanity_train.py", "mlops/promote.sh", "scripts/k8s_tools.sh"} <= paths
    for rel in paths:
        assert (ROOT / rel).is_file(), rel
    assert any((ROOT / "charts").glob("*/Chart.yaml")), "helm lint needs a chart under charts/"


def test_promote_script_refuses_to_run_without_a_server():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(["bash", str(ROOT / "mlops" / "promote.sh")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in proc.stderr


@pytest.mark.slow
def test_the_sanity_training_reduces_the_loss(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sanity_train.py"), "--epochs", "2",
         "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [float(x) for x in re.search(r"per epoch: (.*)", proc.stdout).group(1).split()]
    assert len(losses) == 2 and losses[-1] < losses[0]
