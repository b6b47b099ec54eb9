"""The Dockerfile without a Docker daemon: it lints clean (hadolint), every file it copies
exists and is not docker-ignored, each image installs its group of the lock, and the entry
points are real commands. The images themselves are built and run in tests/test_images.py."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
TARGETS = ("pipeline", "proxy", "triton-cpu", "triton")
GROUP = {"pipeline": "pipeline", "proxy": "proxy", "triton-cpu": "triton", "triton": "triton"}


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return str(path)


def _stages() -> dict[str, list[str]]:
    """Instructions of each build stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = m.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def test_hadolint_finds_nothing():
    proc = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_target_installs_its_group_of_the_lock_and_copies_only_what_exists():
    stages = _stages()
    assert set(TARGETS) <= set(stages)
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for target in TARGETS:
        # its locked group is installed in its own stage (or a deps-* stage it copies from)
        own = " ".join(stages[target])
        source = re.search(r"COPY --from=(\S+) /opt/mouthmap", own)
        runs = " ".join(stages[source.group(1)] if source else stages[target])
        assert f"deps.py install /opt/mouthmap/bin/python --group {GROUP[target]}" in runs, target
        for inst in stages[target] + (stages[source.group(1)] if source else []):
            if not inst.startswith("COPY") or "--from" in inst:
                continue
            *sources, _dest = inst.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"{target}: COPY {src}: not in the repo"
                hit = [p for p in ignored if fnmatch.fnmatch(src, p) or src.startswith(p + "/")]
                assert not hit, f"{target}: COPY {src} is excluded by .dockerignore {hit}"


def test_the_entry_points_are_real_commands():
    mouthmap = str(BIN / "mouthmap")
    stages = _stages()
    assert 'ENTRYPOINT ["mouthmap-proxy"]' in stages["proxy"]
    assert 'ENTRYPOINT ["mouthmap"]' in stages["pipeline"]
    entry = (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    assert "mouthmap serve build-repo" in entry and "exec tritonserver" in entry
    for args in (["proxy", "--help"], ["serve", "build-repo", "--help"],
                 ["registry", "download", "--help"], ["pipeline", "params"]):  # fmt: skip
        proc = subprocess.run([mouthmap, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"mouthmap {' '.join(args)}: {proc.stderr[-2000:]}"


def test_the_triton_entrypoint_builds_a_repository_with_its_own_command(tiny_package, tmp_path):
    """The entry script's build-repo line, run as written (the image's ONNX Runtime backend,
    on CPU here): the arguments it passes are the ones the CLI takes."""
    import re
    import shlex

    entry = (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    line = re.search(r"^mouthmap serve build-repo .*?(?<!\\)$", entry.replace("\\\n", " "), re.M)
    assert line, "no build-repo line in docker/triton-entrypoint.sh"
    cmd = line.group(0).replace('"$model"', str(tiny_package))
    cmd = cmd.replace('"$repo"', str(tmp_path / "repo")).replace("${MOUTHMAP_DEVICE:-gpu}", "cpu")
    args = shlex.split(cmd)
    proc = subprocess.run([str(BIN / "mouthmap"), *args[1:]], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = (tmp_path / "repo" / "mouthmap_encoder" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config  # Triton's own ONNX Runtime backend


def test_the_images_run_as_the_user_the_helm_chart_runs_pods_as():
    import yaml

    values = yaml.safe_load((ROOT / "charts" / "mouthmap" / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    assert values["podSecurityContext"]["runAsUser"] == uid
    text = DOCKERFILE.read_text()
    assert f"--uid {uid} " in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and set(users) == {str(uid)}
