"""A real Triton Inference Server on loopback, serving a MouthMap model repository.

The ``tritonserver`` binary (Triton 2.51, CPU) comes inside the ``nvidia-pytriton`` wheel.
It serves an ordinary repository once the Python backend (``libtriton_python.so`` and the
stub built for this Python) sits in a backends directory; we link those from the wheel
into the state directory. It needs the wheel's bundled libraries and this Python's
``libpython`` on ``LD_LIBRARY_PATH``, and this venv's ``python`` first on ``PATH`` (the
stub runs the models with the interpreter it finds there, so they import ``mouthmap``).

Health: ``/v2/health/ready`` (HTTP); Prometheus metrics on the metrics port
(``/metrics``), with the stream model's own ``mouthmap_*`` series beside Triton's.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import os
import shutil
import signal
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mouthmap.serving.protocol import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from mouthmap.stack.services import (
    LOOPBACK,
    ManagedProcess,
    StackError,
    free_port,
    port_open,
    wait_until,
)

NAME = "triton"
SHM_DEFAULT_BYTES = 32 * 2**20  # per stub; tmpfs pages it touches stay in RAM
SHM_GROWTH_BYTES = 32 * 2**20


@dataclass(frozen=True)
class TritonEndpoint:
    http_port: int
    grpc_port: int
    metrics_port: int
    repo: Path
    pid: int | None
    reused: bool = False

    @property
    def grpc(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def metrics(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("Triton is not installed: pip install nvidia-pytriton==0.7.0")
    return Path(next(iter(spec.submodule_search_locations)))


def triton_binary() -> Path:
    path = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file():
        raise StackError(f"{path} is missing: reinstall nvidia-pytriton")
    return path


def prepare_backends(target: Path) -> Path:
    """``target/python/`` holding the Python backend and the stub for this interpreter."""
    dist = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise StackError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    files = {
        "libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": dist
        / "backends"
        / "python"
        / "triton_python_backend_utils.py",  # noqa: E501
        "triton_python_backend_stub": stub,
    }
    py = target / "python"
    py.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dst = py / name
        # the backend chmods its stub before starting it, which a user who does not own the
        # installed file (an image's UID 10001) may not: that one is a copy of its own
        copy = name == "triton_python_backend_stub" and src.stat().st_uid != os.geteuid()
        if not copy and dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if copy and dst.is_file() and not dst.is_symlink() and filecmp.cmp(dst, src, False):
            continue
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        if copy:
            shutil.copy2(src, dst)
        else:
            dst.symlink_to(src)
    return target


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [
        str(_pytriton_dir().parent / "nvidia_pytriton.libs"),
        str(Path(sys.base_prefix) / "lib"),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback)
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def is_ready(http_port: int) -> bool:
    try:
        return _get(f"http://{LOOPBACK}:{http_port}/v2/health/ready")[0] == 200
    except OSError:
        return False


def metrics_text(metrics_port: int) -> str:
    status, body = _get(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=5.0)
    if status != 200:
        raise StackError(f"Triton metrics answered HTTP {status}")
    return body


class TritonServer:
    """The Triton process of one state directory (``triton.pid``/``.log``/``.json``)."""

    def __init__(self, state_dir: str | Path, name: str = NAME) -> None:
        self.state_dir = Path(state_dir)
        self.proc = ManagedProcess(name, self.state_dir)

    def endpoint(self) -> TritonEndpoint | None:
        """The running server's ports, or None."""
        pid = self.proc.pid()
        meta = self.proc.read_meta()
        if pid is None or "ports" not in meta:
            return None
        p = meta["ports"]
        return TritonEndpoint(p["http"], p["grpc"], p["metrics"], Path(meta["repo"]), pid, True)

    def healthy(self) -> bool:
        ep = self.endpoint()
        return bool(ep and is_ready(ep.http_port))

    def command(
        self, repo: Path, ports: dict[str, int], log_verbose: int = 0, address: str = LOOPBACK
    ) -> list[str]:
        backends = prepare_backends(self.state_dir / f"{self.proc.name}-backends")
        prefix = _prefix(ports)  # shared-memory names: two servers never collide
        return [
            str(triton_binary()),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={prefix}",
            # tensors pass between server and stubs through shared memory; a 75-frame clip
            # is 2.3 MB, a batch of 16 about 37 MB: grow in steps of 32 MB, not 1 MB
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            f"--http-address={address}",
            f"--grpc-address={address}",
            f"--metrics-address={address}",
            f"--http-port={ports['http']}",
            f"--grpc-port={ports['grpc']}",
            f"--metrics-port={ports['metrics']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--exit-timeout-secs=5",
            f"--log-verbose={log_verbose}",
        ]

    def up(
        self,
        repo: str | Path,
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        timeout: float = 180.0,
        log_verbose: int = 0,
        env: dict[str, str] | None = None,
    ) -> TritonEndpoint:
        """Start Triton on ``repo`` unless this state dir already serves it (then reuse).

        A port of 0 picks a free one; ``env`` is added to the server's environment (and
        recorded in its meta file). Raises :class:`StackError` naming the cause (a port
        taken by another process, a model that failed to load: the log's tail is included).
        """
        repo = Path(repo).resolve()
        from mouthmap.serving.repository import read_manifest

        read_manifest(repo)  # a clear error for a directory that is not ours
        running = self.endpoint()
        if running is not None:
            if running.repo != repo:
                raise StackError(
                    f"Triton of {self.state_dir} already serves {running.repo}; "
                    "stop it first (`mouthmap serve down`)"
                )
            if not wait_until(lambda: is_ready(running.http_port), min(timeout, 60.0)):
                raise StackError(
                    f"Triton (pid {running.pid}) runs but is not ready; "
                    f"log {self.proc.log_file}:\n{self.proc.log_tail()}"
                )
            return running
        ports: dict[str, int] = {}
        for key, want in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
            port = want or free_port(avoid=set(ports.values()))
            if port_open(port):
                raise StackError(
                    f"port {port} ({key}) on {LOOPBACK} is in use by another process; "
                    f"choose another with --{key}-port (0: any free port)"
                )
            ports[key] = port
        self._cleanup(self.proc.read_meta())  # what a server that died here left behind
        cmd = self.command(repo, ports, log_verbose)
        meta = {"ports": ports, "repo": str(repo), "command": cmd, "shm_prefix": _prefix(ports),
                "env": dict(env or {})}  # fmt: skip
        self.proc.write_meta(meta)
        try:
            pid = self.proc.start(
                cmd,
                lambda: is_ready(ports["http"]),
                timeout=timeout,
                env={**server_env(), **(env or {})},
                cwd=self.state_dir,
            )
        finally:
            started = self.proc.pid()
            self.proc.write_meta({**meta, "pgid": started})  # its stubs share its group
            if started is None:
                self._cleanup({**meta, "pgid": None})
        return TritonEndpoint(ports["http"], ports["grpc"], ports["metrics"], repo, pid, False)

    def exec_foreground(
        self, repo: str | Path, ports: dict[str, int], address: str = "0.0.0.0",
        log_verbose: int = 0,
    ) -> None:  # fmt: skip
        """Replace this process with Triton serving ``repo`` (a container's main process:
        signals reach the server, its exit is the container's)."""
        from mouthmap.serving.repository import read_manifest

        repo = Path(repo).resolve()
        read_manifest(repo)  # a clear error for a directory that is not ours
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(repo, ports, log_verbose, address)
        os.execve(cmd[0], cmd, server_env())

    def down(self, timeout: float = 20.0) -> bool:
        """Stop the server this state dir started; True if one ran. Also ends Python-backend
        stubs and removes shared memory that a crashed server of this state dir left."""
        meta = self.proc.read_meta()
        stopped = self.proc.stop(timeout)
        if stopped:
            for port in meta.get("ports", {}).values():
                wait_until(lambda p=port: not port_open(p), 10.0, 0.1)
        self._cleanup(meta)
        return stopped

    @staticmethod
    def _cleanup(meta: dict) -> None:
        pgid = meta.get("pgid")
        if pgid:
            for stub in _stubs_in_group(pgid):
                with contextlib.suppress(OSError):
                    os.kill(stub, signal.SIGKILL)
        prefix = meta.get("shm_prefix")
        if prefix:
            for f in Path("/dev/shm").glob(f"{prefix}*"):
                with contextlib.suppress(OSError):
                    f.unlink()


def _prefix(ports: dict[str, int]) -> str:
    return f"mouthmap{ports['grpc']}_"


def _stubs_in_group(pgid: int) -> list[int]:
    """Python-backend stubs still in Triton's process group (a crashed server's orphans)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and b"triton_python_backend_stub" in cmd:
            out.append(int(d.name))
    return out
