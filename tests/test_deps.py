"""The locked dependency set (requirements/, scripts/deps.py): the lock agrees with
pyproject.toml, an edit to pyproject.toml without relocking is caught, the environment the
tests run in is the locked one, and resolving again reproduces the committed lock."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "deps.py"


def _deps():
    spec = importlib.util.spec_from_file_location("deps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_project(tmp_path: Path) -> Path:
    """pyproject.toml, the lock and the script in a scratch checkout (check reads only these)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "deps.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "deps.py"), "check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_committed_lock_agrees_with_pyproject():
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "agrees" in proc.stdout


def test_a_dependency_added_without_relocking_is_caught(tmp_path):
    root = _copy_project(tmp_path)
    text = (root / "pyproject.toml").read_text()
    added = text.replace('  "pyyaml>=6",\n', '  "pyyaml>=6",\n  "cowsay>=6",\n')
    assert added != text
    (root / "pyproject.toml").write_text(added)
    proc = _check(root)
    assert proc.returncode == 1
    assert "changed since the lock was written: run `make lock`" in proc.stderr
    assert "cowsay (pyproject.toml) is not in the lock" in proc.stderr


def test_a_lock_whose_pin_breaks_a_requirement_is_caught(tmp_path):
    root = _copy_project(tmp_path)
    lock = root / "requirements" / "lock.txt"
    numpy = _deps().parse_lock(lock)["numpy"][0]
    lock.write_text(lock.read_text().replace(f"\nnumpy=={numpy} ", "\nnumpy==2.0.2 "))
    proc = _check(root)
    assert proc.returncode == 1
    assert "numpy==2.0.2 in the lock does not satisfy 'numpy<2'" in proc.stderr


def test_the_environment_is_the_locked_one():
    """What the tests run on is what a fresh `make install` gives, version for version."""
    deps = _deps()
    locked = deps.parse_lock(deps.LOCK) | deps.parse_lock(deps.TORCH_LOCK)
    wrong = {}
    for name, (version, _hashes) in locked.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"installed versions differ from the lock (locked, installed): {wrong}"
    assert locked["torch"][0].endswith("+cpu")


def test_the_dashboard_tables_can_be_built_with_the_locked_numpy():
    """The failure a fresh install met (pyarrow 26 refuses NumPy 1.x): Streamlit turns every
    table into Arrow, so this is what st.dataframe does first."""
    import pandas as pd
    import pyarrow as pa

    df = pd.DataFrame({"version": [2, 1], "WER %": [6.45, None], "aliases": ["champion", ""]})
    assert pa.Table.from_pandas(df).to_pandas()["WER %"].iloc[0] == 6.45


def test_split_keeps_every_entry_once():
    deps = _deps()
    text = (
        "a==1 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via x\n"
        "torch==2.13.0+cpu \\\n    --hash=sha256:" + "1" * 64 + "\n    # via\n    #   y\n"
        "z==3 \\\n    --hash=sha256:" + "2" * 64 + "\n"
    )
    rest, torch = deps._split_torch(text)
    assert torch.startswith("torch==2.13.0+cpu") and "#   y" in torch
    assert "a==1" in rest and "z==3" in rest and "torch" not in rest


@pytest.mark.integration
def test_resolving_again_reproduces_the_committed_lock(tmp_path):
    """`make lock` with nothing changed rewrites the same files: the lock is what uv resolves
    from pyproject.toml (the current pins are its preferences), not a hand-kept list."""
    deps = _deps()
    try:
        deps._uv()
    except deps.DepsError:
        pytest.fail("uv is not installed: it is in the dev extra (make install)")
    try:
        main, torch = deps.lock(out_dir=tmp_path)
    except deps.DepsError as e:
        if "connect" in str(e).lower() or "dns" in str(e).lower():
            pytest.skip(f"no package index reachable: {e}")
        raise
    assert main.read_text() == deps.LOCK.read_text()
    assert torch.read_text() == deps.TORCH_LOCK.read_text()


@pytest.mark.parametrize("tests_pass", [True, False])
def test_upgrade_keeps_the_new_lock_only_when_the_tests_pass(tmp_path, monkeypatch, tests_pass):
    """`make upgrade` around its real parts (uv, pip, make) stubbed: what it leaves behind."""
    deps = _deps()
    root = _copy_project(tmp_path)
    monkeypatch.setattr(deps, "LOCK", root / "requirements" / "lock.txt")
    monkeypatch.setattr(deps, "TORCH_LOCK", root / "requirements" / "torch-cpu.txt")
    before = deps.LOCK.read_text()
    numpy = deps.parse_lock(deps.LOCK)["numpy"][0]
    upgraded = before.replace(f"\nnumpy=={numpy} ", "\nnumpy==1.26.5 ")

    def fake_lock(upgrade=False, out_dir=None):
        assert upgrade
        deps.LOCK.write_text(upgraded)

    installs: list[str] = []
    monkeypatch.setattr(deps, "lock", fake_lock)
    monkeypatch.setattr(deps, "install", lambda python: installs.append(deps.LOCK.read_text()))
    monkeypatch.setattr(deps.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0 if tests_pass else 1))  # fmt: skip
    if tests_pass:
        deps.upgrade(sys.executable)
        assert deps.LOCK.read_text() == upgraded and installs == [upgraded]
    else:
        with pytest.raises(deps.DepsError, match="old lock is back in place"):
            deps.upgrade(sys.executable)
        assert deps.LOCK.read_text() == before  # and the old set is installed again
        assert installs == [upgraded, before]
