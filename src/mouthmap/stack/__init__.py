"""The local stack of backing services, started by the project on loopback ports.

Now: SeaweedFS S3 (DVC remote, MLflow artifacts). MLflow and Triton join through the
same :class:`~mouthmap.stack.services.ManagedProcess` mechanism. State (pid files,
logs, data) lives in ``.mouthmap/stack/`` of the repo (or ``$MOUTHMAP_STACK_DIR``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .mlflow_server import MLflowServer
from .seaweed import (
    DEFAULT_BUCKETS,
    DEFAULT_S3_PORT,
    REGION,
    STOP_GRACE_S,
    S3Credentials,
    SeaweedS3,
    s3_client,
)
from .services import ManagedProcess, StackError, default_state_dir, free_port, state_lock
from .triton import TritonService

__all__ = [
    "ManagedProcess",
    "ServiceStatus",
    "StackError",
    "StackInfo",
    "default_state_dir",
    "free_port",
    "s3_client",
    "s3_env",
    "stack_down",
    "stack_status",
    "stack_up",
]


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack is and how to talk to it."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    buckets: tuple[str, ...]
    region: str
    state_dir: Path
    pid: int | None  # SeaweedFS pid; None when an S3 the stack did not start was reused
    managed: bool  # started (now or earlier) by this state dir, so `stack_down` stops it
    reused: bool  # it was already running before this call
    mlflow_uri: str | None = None  # the MLflow tracking + registry server (None: not started)
    triton_grpc: str | None = None  # Triton's gRPC address, host:port (None: not started)

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.access_key, self.secret_key)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    endpoint: str | None
    healthy: bool
    log: Path


def _state(state_dir: str | Path | None) -> Path:
    return Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()


def stack_up(
    state_dir: str | Path | None = None,
    s3_port: int = DEFAULT_S3_PORT,
    *,
    buckets: tuple[str, ...] = DEFAULT_BUCKETS,
    timeout: float = 90.0,
    mlflow_port: int | None = None,
    triton_model: str | Path | None = None,
    triton_grpc_port: int = 8001,
) -> StackInfo:
    """Start the local services (idempotent: a running stack is reused, not doubled).

    ``s3_port=0`` picks a free port. When the stack of ``state_dir`` already runs, its
    recorded port wins over ``s3_port``. A ``mlflow_port`` (0: a free one) starts the
    MLflow server too, its artifacts on the stack's S3 (bucket ``mlflow``); with None an
    MLflow this state dir already runs is only reported (``mlflow_uri``), not started.
    A ``triton_model`` (a model package) starts Triton with its streaming service
    (``triton_grpc``; HTTP and metrics on the next two ports); with None a running one is
    only reported.
    """
    sd = _state(state_dir)
    with state_lock(sd):
        ep = SeaweedS3(sd, s3_port=s3_port, buckets=buckets).up(timeout=timeout)
        mlflow_uri = MLflowServer(sd).endpoint_if_running()
        if mlflow_port is not None:
            creds = {"AWS_ACCESS_KEY_ID": ep.credentials.access_key,
                     "AWS_SECRET_ACCESS_KEY": ep.credentials.secret_key,
                     "AWS_DEFAULT_REGION": REGION, "MLFLOW_S3_ENDPOINT_URL": ep.url}  # fmt: skip
            mlflow_uri = MLflowServer(sd, port=mlflow_port).up(creds, timeout=max(timeout, 120)).url
        triton_grpc = TritonService(sd).endpoint_if_running()
        if triton_model is not None:
            p = triton_grpc_port
            ports = (p, p - 1, p + 1) if p else (0, 0, 0)  # grpc, http, metrics: 8001, 8000, 8002
            triton_grpc = TritonService(sd).up(triton_model, *ports, timeout=max(timeout, 180)).grpc
    return StackInfo(
        endpoint_url=ep.url,
        access_key=ep.credentials.access_key,
        secret_key=ep.credentials.secret_key,
        buckets=ep.buckets,
        region=REGION,
        state_dir=sd,
        pid=ep.pid,
        managed=ep.managed,
        reused=ep.reused,
        mlflow_uri=mlflow_uri,
        triton_grpc=triton_grpc,
    )


def stack_down(state_dir: str | Path | None = None, timeout: float = STOP_GRACE_S) -> list[str]:
    """Stop the services this state dir started; returns the names of those stopped."""
    sd = _state(state_dir)
    stopped = []
    with state_lock(sd):
        if TritonService(sd).down():
            stopped.append("triton")
        if MLflowServer(sd).down():  # before S3: it may still be writing artifacts
            stopped.append("mlflow")
        if SeaweedS3(sd).down(timeout):
            stopped.append("seaweedfs")
    return stopped


def stack_status(state_dir: str | Path | None = None) -> dict[str, ServiceStatus]:
    """Each service: running (live pid), endpoint and whether it answers."""
    sd = _state(state_dir)
    s3 = SeaweedS3(sd)
    st = s3.proc.status()
    port = s3.recorded_port()
    healthy = bool(st.running and port and s3._check(port))
    return {
        "seaweedfs": ServiceStatus(
            name="seaweedfs",
            running=st.running,
            pid=st.pid,
            endpoint=s3.url(port) if port else None,
            healthy=healthy,
            log=st.log,
        ),
        **({"mlflow": _mlflow_status(sd)} if MLflowServer(sd).proc.meta_file.exists() else {}),
        **({"triton": _triton_status(sd)} if TritonService(sd).proc.meta_file.exists() else {}),
    }


def _mlflow_status(sd: Path) -> ServiceStatus:
    """Listed once this state dir has started MLflow (a stack without it is not 'down')."""
    server = MLflowServer(sd)
    st = server.proc.status()
    port = server.recorded_port()
    return ServiceStatus(
        name="mlflow",
        running=st.running,
        pid=st.pid,
        endpoint=server.url(port) if port else None,
        healthy=bool(st.running and port and server._check(port)),
        log=st.log,
    )


def _triton_status(sd: Path) -> ServiceStatus:
    """Listed once this state dir has started Triton (`stack up` or `serve up`)."""
    service = TritonService(sd)
    st = service.proc.status()
    return ServiceStatus(
        name="triton",
        running=st.running,
        pid=st.pid,
        endpoint=service.endpoint_if_running(),
        healthy=service.healthy(),
        log=st.log,
    )


def s3_env(info: StackInfo) -> dict[str, str]:
    """Environment for child processes (DVC, MLflow, boto3) to use the stack's S3."""
    return {
        "AWS_ACCESS_KEY_ID": info.access_key,
        "AWS_SECRET_ACCESS_KEY": info.secret_key,
        "AWS_ENDPOINT_URL": info.endpoint_url,
        "AWS_DEFAULT_REGION": info.region,
        "MLFLOW_S3_ENDPOINT_URL": info.endpoint_url,
        **({"MLFLOW_TRACKING_URI": info.mlflow_uri} if info.mlflow_uri else {}),
    }
