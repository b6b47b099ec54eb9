"""The Dockerfile without a Docker daemon: it lints clean (hadolint), every file it copies
exists and is not docker-ignored, each target's install commands (docker/install.sh) work
in a fresh virtual environment, and the entry points are real commands."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
TARGETS = ("pipeline", "proxy", "triton")


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


def test_each_target_runs_its_install_script_and_copies_only_what_exists():
    stages = _stages()
    assert set(TARGETS) <= set(stages)
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for target in TARGETS:
        runs = " ".join(i for i in stages[target] if i.startswith("RUN"))
        assert f"docker/install.sh {target}" in runs, f"{target} does not run its install step"
        for inst in stages[target]:
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
    assert 'ENTRYPOINT ["mouthmap", "proxy"]' in stages["proxy"]
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


def _venv(path: Path) -> Path:
    """A fresh venv that also sees this environment's packages (a .pth line), so the
    install commands resolve against what is already downloaded instead of fetching
    2.5 GB again; whatever the commands install goes into the new venv."""
    base = getattr(sys, "_base_executable", None) or shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(path)], check=True, timeout=120)
    site = next((path / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and str(BIN.parent) in p)
    (site / "_mouthmap_parent_env.pth").write_text(ours + "\n")
    return path / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pipeline", "triton"])  # proxy: the pipeline's commands
def test_the_install_commands_of_each_target_work_in_a_venv(target, tmp_path):
    python = _venv(tmp_path / "venv")
    env = {**os.environ, "PYTHON": str(python), "TRITON_BACKENDS_DIR": str(tmp_path / "backends"),
           "TORCH": "cpu", "DEPS_INSTALLER": "pip"}  # fmt: skip
    # pip (not uv) sees the parent environment through the .pth line: nothing is fetched twice
    proc = subprocess.run(
        ["bash", str(ROOT / "docker" / "install.sh"), target],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ready for {target}" in proc.stdout
    # the project itself went into the new venv, and its CLI runs from there
    assert any((python.parent.parent / "lib").glob("python3*/site-packages/*mouthmap*"))
    run = subprocess.run([str(python), "-m", "mouthmap", "version"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip()
    if target == "triton":
        stub = tmp_path / "backends" / "python" / "triton_python_backend_stub"
        assert stub.is_file() and os.access(stub, os.X_OK)


def test_the_proxy_installs_exactly_what_the_pipeline_installs():
    """So the venv run of the pipeline's install commands covers the proxy's too."""
    script = (ROOT / "docker" / "install.sh").read_text()
    assert re.search(r"^\s*pipeline\|proxy\|triton\)", script, re.M)
    assert script.count("scripts/deps.py install") == 1


def test_install_script_refuses_an_unknown_target():
    proc = subprocess.run(["bash", str(ROOT / "docker" / "install.sh"), "gpu"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "unknown target gpu" in proc.stderr


def test_the_images_run_as_the_user_the_helm_chart_runs_pods_as():
    import yaml

    values = yaml.safe_load((ROOT / "charts" / "mouthmap" / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    assert values["podSecurityContext"]["runAsUser"] == uid
    text = DOCKERFILE.read_text()
    assert f"--uid {uid} " in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and set(users) == {str(uid)}
