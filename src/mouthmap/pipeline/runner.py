"""Compile the training pipeline, run it here with ``kfp.local``, or submit it to a
Kubeflow Pipelines endpoint. The CLI (``mouthmap pipeline ...``) is a thin edge over this.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mouthmap.config import ParamsError
from mouthmap.pipeline.params import mirrored, repo_root, to_config

IR_FILE = "pipelines/training.yaml"
PROFILES = {"quick": "pipelines/quick.yaml", "full": None}


def _pipeline_module():
    """``pipelines.training`` of the checkout (``components`` and ``pipelines`` live at the
    repo root, beside ``src/``)."""
    root = str(repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("pipelines.training")


def compile_pipeline(out: str | Path | None = None) -> Path:
    """The pipeline's IR YAML (default: the committed ``pipelines/training.yaml``)."""
    from kfp import compiler

    path = Path(out) if out else repo_root() / IR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(_pipeline_module().build(), str(path))
    return path


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``name=value`` pairs; values are read as YAML (``3``, ``0.1``, ``true``, ``[s1]``)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ParamsError(f"--set {item!r}: expected NAME=VALUE")
        try:
            out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[name.strip()] = raw
    return out


def resolve_values(profile: str | None, assignments: dict[str, Any]) -> dict[str, Any]:
    """Pipeline arguments: the profile's values, then ``assignments``; validated here, before
    anything runs (raises :class:`ParamsError` naming the bad parameters)."""
    values: dict[str, Any] = {}
    if profile:
        if profile not in PROFILES and not Path(profile).is_file():
            raise ParamsError(
                f"unknown profile {profile!r}: use {' or '.join(PROFILES)}, or a YAML file"
            )
        rel = PROFILES.get(profile, profile)
        if rel:
            path = Path(rel) if Path(rel).is_absolute() else repo_root() / rel
            values.update(yaml.safe_load(path.read_text()) or {})
    values.update(assignments)
    spec = mirrored()
    # the types KFP will check, with a clearer message than its own
    for p in spec:
        if p.name in values and p.type is float and isinstance(values[p.name], int):
            values[p.name] = float(values[p.name])
    to_config(values, spec)
    return values


# --- local runs --------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass
class StepTime:
    name: str
    seconds: float | None = None
    status: str = "RUNNING"


@dataclass
class LocalRun:
    status: str
    seconds: float
    steps: list[StepTime] = field(default_factory=list)
    pipeline_root: Path | None = None
    error: str | None = None

    def table(self) -> str:
        lines = [f"{'step':<26} {'status':<8} {'seconds':>8}"]
        for s in self.steps:
            secs = f"{s.seconds:8.1f}" if s.seconds is not None else "       -"
            lines.append(f"{s.name:<26} {s.status:<8} {secs}")
        lines.append(f"{'total (wall)':<26} {self.status:<8} {self.seconds:8.1f}")
        return "\n".join(lines)


class StepTimer(io.TextIOBase):
    """Per-step wall times from kfp.local's "Executing task" / "Task ... finished" lines.

    kfp.local replaces the root logger's handlers while it runs and logs to ``sys.stdout``,
    so the timer stands in for stdout (passing everything through) rather than logging.
    ``on_finished`` is called with each step as it ends (the demo echoes it)."""

    def __init__(self, stream: Any, on_finished: Callable[[StepTime], None] | None = None) -> None:
        self.stream = stream
        self.on_finished = on_finished
        self.started: dict[str, float] = {}
        self.steps: dict[str, StepTime] = {}
        self._buf = ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self.feed(line, time.time())
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def feed(self, line: str, when: float) -> None:
        msg = _ANSI.sub("", line)
        if m := _START.search(msg):
            self.started[m.group(1)] = when
            self.steps.setdefault(m.group(1), StepTime(m.group(1)))
        elif m := _END.search(msg):
            step = self.steps.setdefault(m.group(1), StepTime(m.group(1)))
            first = step.status == "RUNNING"  # kfp.local may log the end twice
            step.status = m.group(2)
            if m.group(1) in self.started:
                step.seconds = round(when - self.started[m.group(1)], 2)
            if first and self.on_finished is not None:
                self.on_finished(step)


RUNNERS = ("subprocess", "docker")


def _runner(kind: str, root: Path):
    """kfp.local's runner: each step a subprocess of this Python, or a container of the
    pipeline image (what a Kubeflow cluster runs) on the host network, so the steps reach the
    local MLflow and S3 on loopback."""
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise ValueError(f"unknown runner {kind!r}: use {' or '.join(RUNNERS)}")
    from mouthmap.images import require_daemon

    require_daemon()
    # the image runs as UID 10001 and writes its outputs under the bind-mounted root
    root.chmod(0o1777)
    return local.DockerRunner(
        network_mode="host",
        entrypoint=[""],  # the image's `mouthmap` entry point would swallow the step's command
        environment={"HOME": "/home/mouthmap", "PYTHONUNBUFFERED": "1"},
    )


def run_local(
    values: dict[str, Any],
    pipeline_root: str | Path,
    registry_uri: str,
    *,
    cache: bool = False,
    runner: str = "subprocess",
) -> LocalRun:
    """The whole pipeline here (``kfp.local``): each step a subprocess of this Python, or a
    container of the pipeline image (``runner="docker"``)."""
    from kfp import local

    values = {**values, "registry_uri": registry_uri}
    resolve_values(None, values)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=_runner(runner, root), pipeline_root=str(root),
        raise_on_error=True, enable_caching=cache,
    )  # fmt: skip
    pipeline = _pipeline_module().build()
    timer = StepTimer(sys.stdout)
    t0 = time.perf_counter()
    status, error = "SUCCESS", None
    try:
        with contextlib.redirect_stdout(timer):
            pipeline(**values)
    except Exception as e:  # kfp.local raises RuntimeError naming the failed task
        status, error = "FAILURE", _ANSI.sub("", str(e))
    return LocalRun(status, round(time.perf_counter() - t0, 1), list(timer.steps.values()),
                    root, error)  # fmt: skip


def local_registry_uri(uri: str | None) -> str:
    """``uri``, ``$MLFLOW_TRACKING_URI``, or the local stack's MLflow (started if needed)."""
    import os

    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return (uri or os.environ["MLFLOW_TRACKING_URI"]).rstrip("/")
    from mouthmap.stack import stack_up

    with contextlib.redirect_stdout(sys.stderr):
        info = stack_up(mlflow_port=5000)
    return info.mlflow_uri


# --- a Kubeflow Pipelines endpoint ---------------------------------------------------------------


def run_host(
    host: str,
    values: dict[str, Any],
    *,
    experiment: str = "mouthmap",
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """Submit the compiled pipeline to a KFP endpoint; returns the run id and its URL."""
    import tempfile

    import kfp

    resolve_values(None, values)
    with tempfile.TemporaryDirectory() as tmp:
        ir = compile_pipeline(Path(tmp) / "training.yaml")
        try:
            client = kfp.Client(host=host, namespace=namespace, existing_token=token)
            run = client.create_run_from_pipeline_package(
                str(ir), arguments=values, experiment_name=experiment,
                run_name=run_name or f"mouthmap-{time.strftime('%Y%m%d-%H%M%S')}",
                namespace=namespace,
            )  # fmt: skip
        except Exception as e:  # connection refused, auth, 404 ...: name the endpoint
            raise ConnectionError(
                f"could not submit to Kubeflow Pipelines at {host}: {type(e).__name__}: {e}"
            ) from None
    return {"run_id": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}
