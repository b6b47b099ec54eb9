"""`dvc repro` runs import -> prepare -> validate on the sample; push/pull restore it in a clone."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from _stack_fixtures import configure_remote, run, run_dvc, running_stack, tool_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "data/sample", "data/splits", "src/mouthmap"]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as info:
        yield info


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_repro_push_and_pull_into_a_fresh_clone_round_trips_the_pipeline(tmp_path, s3_stack):
    env = tool_env(s3_stack, tmp_path)
    origin = tmp_path / "origin"
    origin.mkdir()
    for rel in PROJECT_FILES:
        src, dst = ROOT / rel, origin / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    for ignore in (".gitignore", "data/.gitignore", "reports/.gitignore"):
        (origin / ignore).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / ignore, origin / ignore)
    run(["git", "init", "-q", "-b", "main"], origin, env)
    run_dvc(["init", "-q"], origin, env)
    configure_remote(origin, s3_stack, f"pipeline-{uuid.uuid4().hex[:8]}", env)

    run_dvc(["repro", "validate"], origin, env, timeout=600)  # data stages only
    quality = json.loads((origin / "reports" / "data_quality.json").read_text())
    assert quality["success"] and quality["n_clips"] == 20
    assert (origin / "reports" / "data_docs" / "index.html").is_file()
    manifest = (origin / "data" / "prepared" / "manifest.csv").read_text()
    assert manifest.count("\n") == 21  # header + 20 clips

    status = run_dvc(["status", "validate"], origin, env).stdout
    assert "up to date" in status.lower()  # a second repro would do nothing

    run(["git", "add", "-A"], origin, env)
    run(["git", "commit", "-q", "-m", "pipeline on the sample"], origin, env)
    run_dvc(["push", "--with-deps", "validate"], origin, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "data" / "prepared").exists()
    run_dvc(["pull", "--with-deps", "validate"], clone, env)
    for out in ("data/grid", "data/prepared", "reports/data_docs"):
        assert _files(clone / out) == _files(origin / out), out
    assert "up to date" in run_dvc(["status", "validate"], clone, env).stdout.lower()
