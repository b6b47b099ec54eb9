"""The MLflow tracking + model-registry server of the local stack, on loopback only.

Runs and registered models live in a SQLite file under the stack's state directory;
artifacts (model packages, plots) go through the server (``--artifacts-destination``)
to the stack's SeaweedFS S3 bucket ``mlflow``, so clients need no S3 credentials of
their own. ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` keeps the server at about
0.5 GB of memory instead of 2.5 GB (its job runner is not used here).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .services import LOOPBACK, ManagedProcess, StackError, free_port, port_open, wait_until

NAME = "mlflow"
DEFAULT_MLFLOW_PORT = 5000
ARTIFACT_BUCKET = "mlflow"
START_TIMEOUT_S = 120.0  # first start migrates the SQLite schema: ~15-40 s on 2 busy cores


@dataclass(frozen=True)
class MLflowEndpoint:
    url: str
    pid: int | None
    managed: bool
    reused: bool


def healthy(url: str, timeout: float = 5.0) -> bool:
    """The server answers ``/health`` and its registry API (the database is up)."""
    import requests

    if requests.get(f"{url}/health", timeout=timeout).status_code != 200:
        return False
    r = requests.get(
        f"{url}/api/2.0/mlflow/registered-models/search",
        params={"max_results": 1},
        timeout=timeout,
    )
    # JSON, not just 200: a web app on the port (Streamlit answers every path) is no MLflow
    return r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json")


class MLflowServer:
    """The MLflow server of one stack state directory, its artifacts on ``s3_url``."""

    def __init__(self, state_dir: Path, port: int = DEFAULT_MLFLOW_PORT) -> None:
        self.state_dir = Path(state_dir)
        self.requested_port = port
        self.proc = ManagedProcess(NAME, self.state_dir)
        self.data_dir = self.state_dir / NAME

    def recorded_port(self) -> int | None:
        return self.proc.read_meta().get("port")

    @staticmethod
    def url(port: int) -> str:
        return f"http://{LOOPBACK}:{port}"

    def _check(self, port: int, timeout: float = 5.0) -> bool:
        try:
            return healthy(self.url(port), timeout)
        except Exception:
            return False

    def command(self, port: int) -> list[str]:
        db = (self.data_dir / "mlflow.db").resolve()
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/artifacts",
            "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        ]  # fmt: skip

    @staticmethod
    def environment(s3_env: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(s3_env)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # the server must use only the stack's S3 credentials, never a user's AWS profile
        env.pop("AWS_PROFILE", None)
        return env

    def up(self, s3_env: dict[str, str], timeout: float = START_TIMEOUT_S) -> MLflowEndpoint:
        """Start the server unless it already runs (then it is reused, not doubled)."""
        pid = self.proc.pid()
        if pid is not None:
            port = self.recorded_port()
            if port is None or not wait_until(lambda: self._check(port), min(timeout, 60), 0.5):
                raise StackError(
                    f"{NAME} runs (pid {pid}) but does not answer at "
                    f"{self.url(port) if port else '(no recorded port)'}; run `mouthmap stack "
                    f"down` and start again. Log {self.proc.log_file}:\n{self.proc.log_tail()}"
                )
            return MLflowEndpoint(self.url(port), pid, managed=True, reused=True)

        port = self.requested_port or self.recorded_port() or free_port()
        if port_open(port):
            if self._check(port, timeout=3.0):  # another checkout's MLflow: use it
                return MLflowEndpoint(self.url(port), None, managed=False, reused=True)
            raise StackError(
                f"port {port} on {LOOPBACK} is in use by a process that is not an MLflow "
                f"server; choose another MLflow port (`mouthmap stack up --mlflow-port`)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(port)
        self.proc.write_meta({"port": port, "command": cmd, "endpoint": self.url(port)})
        pid = self.proc.start(
            cmd,
            lambda: self._check(port),
            timeout=timeout,
            env=self.environment(s3_env),
            cwd=self.data_dir,
        )
        return MLflowEndpoint(self.url(port), pid, managed=True, reused=False)

    def down(self, timeout: float = 15.0) -> bool:
        """Stop the server this state dir started; returns once its port is closed."""
        port = self.recorded_port()
        stopped = self.proc.stop(timeout)
        if stopped and port:
            wait_until(lambda: not port_open(port), 10.0, 0.1)
        return stopped

    def endpoint_if_running(self) -> str | None:
        port = self.recorded_port()
        return self.url(port) if port and self.proc.is_running() else None
