"""Background processes the local stack owns: start with a log and a pid file, wait
until healthy, stop by pid, report status.

One :class:`ManagedProcess` per service (SeaweedFS S3 now; MLflow and Triton later).
Everything a service leaves behind lives under its state directory, so ``stack down``
and ``stack status`` work from a fresh shell and never touch processes the stack did
not start (the pid file records the process start time to survive pid reuse).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STATE_ENV = "MOUTHMAP_STACK_DIR"
LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A stack service could not be started, reached or stopped."""


def default_state_dir() -> Path:
    """``$MOUTHMAP_STACK_DIR``, else ``.mouthmap/stack`` in the enclosing repo root, else CWD."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d / ".mouthmap" / "stack"
    return cwd / ".mouthmap" / "stack"


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise `up`/`down` of one state dir across processes (CLI, DVC stages, tests)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port(host: str = LOOPBACK, avoid: set[int] | None = None) -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    avoid = avoid or set()
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise StackError("could not find a free TCP port")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could listen on ``port`` (SO_REUSEADDR, as servers bind: old
    TIME_WAIT connections of a stopped server do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing paren
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it first when it is our own exited child."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X")


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:  # a health check that raises is simply "not yet"
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class ProcessStatus:
    name: str
    running: bool
    pid: int | None
    log: Path
    meta: dict


class ManagedProcess:
    """One background service: ``<state_dir>/<name>.pid``, ``<name>.log``, ``<name>.json``."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.state_dir = Path(state_dir)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def meta_file(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    # -- state -------------------------------------------------------------------
    def read_meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_meta(self, meta: Mapping) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_file.with_name(self.meta_file.name + ".tmp")
        tmp.write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.meta_file)

    def pid(self) -> int | None:
        """The live pid of this service, or None (stale pid files are removed)."""
        try:
            text = self.pid_file.read_text().split()
            pid, started = int(text[0]), int(text[1]) if len(text) > 1 else None
        except (OSError, ValueError, IndexError):
            return None
        if pid_alive(pid) and (started is None or _proc_start_time(pid) == started):
            return pid
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def status(self) -> ProcessStatus:
        pid = self.pid()
        return ProcessStatus(self.name, pid is not None, pid, self.log_file, self.read_meta())

    def log_tail(self, lines: int = 30) -> str:
        try:
            data = self.log_file.read_bytes()[-16384:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------------
    def start(
        self,
        cmd: Sequence[str],
        health: Callable[[], bool],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``cmd`` detached (own session, output to the log) and wait for ``health``.

        Raises :class:`StackError` with the log tail when the process exits or is not
        healthy within ``timeout`` seconds (it is stopped then).
        """
        if (pid := self.pid()) is not None:
            raise StackError(f"{self.name} already runs (pid {pid})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n--- {stamp} start: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(cmd),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                )
            except OSError as e:
                raise StackError(f"cannot start {self.name}: {cmd[0]}: {e}") from e
        started = _proc_start_time(proc.pid)
        self.pid_file.write_text(f"{proc.pid} {started if started is not None else ''}\n")

        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited with code {proc.returncode} while starting; "
                    f"log {self.log_file}:\n{self.log_tail()}"
                )
            try:
                if health():
                    return proc.pid
            except Exception:
                pass
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                raise StackError(
                    f"{self.name} did not become healthy within {timeout:.0f} s; "
                    f"log {self.log_file}:\n{tail}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the service's process group, SIGKILL after ``timeout``. True if one ran."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid), timeout, 0.1):
            self._signal(pid, signal.SIGKILL)
            if not wait_until(lambda: not pid_alive(pid), 10.0, 0.1):
                raise StackError(f"{self.name} (pid {pid}) did not stop after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        # the service was started in its own session, so its group id is its pid;
        # signal the group only when that still holds (children go down with it)
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
