"""Triton Inference Server in the local stack: a model package's streaming service on
loopback (gRPC 8001, HTTP 8000, metrics 8002 by default), the same server `mouthmap serve
up` starts (one state directory, one ``triton`` process).

The repository is (re)built from the package under ``<state>/triton-repo`` only when no
Triton of this state dir runs; a running one is reused, never rebuilt under its feet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mouthmap.serving.protocol import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

if TYPE_CHECKING:
    from mouthmap.serving.server import TritonEndpoint

REPO_DIR = "triton-repo"
DRIFT_DIR = "drift-requests"  # the request features the stream model records (drift sink)


class TritonService:
    def __init__(self, state_dir: Path) -> None:
        # imported here: mouthmap.serving.server itself imports mouthmap.stack.services
        from mouthmap.serving.server import TritonServer

        self.state_dir = Path(state_dir)
        self.server = TritonServer(self.state_dir)
        self.proc = self.server.proc

    def up(
        self,
        model: str | Path,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        timeout: float = 180.0,
    ) -> TritonEndpoint:
        running = self.server.endpoint()
        if running is not None:
            return self.server.up(running.repo, timeout=timeout)  # waits until ready
        from mouthmap.monitor.sink import ENV_SINK
        from mouthmap.serving.repository import build_repo

        repo = build_repo(model, self.state_dir / REPO_DIR)
        return self.server.up(repo, http_port, grpc_port, metrics_port, timeout=timeout,
                              env={ENV_SINK: self.drift_sink()})  # fmt: skip

    def drift_sink(self) -> str:
        """Where the local stack's Triton records request features for the drift monitor:
        ``$MOUTHMAP_DRIFT_SINK`` when set, else ``<state>/drift-requests``."""
        from mouthmap.monitor.sink import ENV_SINK

        if os.environ.get(ENV_SINK):
            return os.environ[ENV_SINK]
        path = self.state_dir / DRIFT_DIR
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def recording_to(self) -> str | None:
        """The drift sink of the running server (None: none runs, or it records nothing)."""
        from mouthmap.monitor.sink import ENV_SINK

        if self.server.endpoint() is None:
            return None
        return self.proc.read_meta().get("env", {}).get(ENV_SINK)

    def endpoint_if_running(self) -> str | None:
        ep = self.server.endpoint()
        return ep.grpc if ep else None

    def healthy(self) -> bool:
        from mouthmap.serving.server import is_ready

        ep = self.server.endpoint()
        return bool(ep and is_ready(ep.http_port))

    def down(self) -> bool:
        return self.server.down()
