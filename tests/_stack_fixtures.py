"""Reusable pieces for tests that need the local S3 stack and DVC.

Import the helpers in a test module (``from _stack_fixtures import running_stack, ...``)
and wrap ``running_stack`` in a fixture of the scope you need (or import ``s3_stack``
through ``pytest_plugins`` in a conftest). Servers are stopped even when a test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from mouthmap.stack import StackInfo, s3_env, stack_down, stack_up

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc") if (BIN / "dvc").exists() else "dvc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_stack(state_dir: Path, s3_port: int | None = None) -> Iterator[StackInfo]:
    """The stack on a free port (or ``s3_port``), stopped on exit whatever happens."""
    try:
        yield stack_up(state_dir, s3_port=s3_port or free_port(), timeout=120)
    finally:
        stack_down(state_dir)


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """One SeaweedFS S3 per test module, on a free loopback port."""
    with running_stack(tmp_path_factory.mktemp("stack")) as info:
        yield info


def tool_env(info: StackInfo, scratch: Path) -> dict[str, str]:
    """The environment for DVC/MLflow child processes talking to ``info``'s S3."""
    env = dict(os.environ)
    env.update(s3_env(info))
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site-cache"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "MouthMap Tests",
            "GIT_AUTHOR_EMAIL": "tests@mouthmap.invalid",
            "GIT_COMMITTER_NAME": "MouthMap Tests",
            "GIT_COMMITTER_EMAIL": "tests@mouthmap.invalid",
            # only the variables above may supply credentials
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
        }
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(
    cmd: list[str],
    cwd: Path,
    env: Mapping[str, str],
    *,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion shows its output."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed with {proc.returncode} in {cwd}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def run_dvc(args: list[str], cwd: Path, env: Mapping[str, str], **kw):
    return run([DVC, *args], cwd, env, **kw)


def init_repo(path: Path, env: Mapping[str, str]) -> Path:
    """A fresh git + DVC repository at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], path, env)
    run_dvc(["init", "-q"], path, env)
    return path


def configure_remote(
    repo: Path, info: StackInfo, prefix: str, env: Mapping[str, str], name: str = "s3store"
) -> None:
    """Default remote ``s3://dvc/<prefix>`` on the stack's endpoint; no credentials in it."""
    run_dvc(["remote", "add", "-f", "-d", name, f"s3://dvc/{prefix}"], repo, env)
    run_dvc(["remote", "modify", name, "endpointurl", info.endpoint_url], repo, env)
