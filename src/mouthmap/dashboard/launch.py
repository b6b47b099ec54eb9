"""Start the Streamlit dashboard on loopback: as a child process until Ctrl+C (`mouthmap
dashboard`), or in the background beside the local stack (`mouthmap demo`), its pid, log
and settings in the stack's state directory so a later `mouthmap demo down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mouthmap.dashboard.settings import APP, Settings

__all__ = [
    "DashboardError",
    "background_url",
    "command",
    "start",
    "start_background",
    "stop_background",
    "wait_ready",
]

SERVICE = "dashboard"  # <state_dir>/dashboard.{pid,log,json}
DEFAULT_PORT = 8501


class DashboardError(RuntimeError):
    """The dashboard cannot start (no app, no package) or did not come up."""


def command(port: int, address: str = "127.0.0.1", app: Path = APP) -> list[str]:
    """``streamlit run`` on ``address:port``: headless, no usage statistics (no network
    here), no file watcher (it would poll the whole checkout on a 2-core machine)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", address, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--server.runOnSave", "false",
        "--server.maxUploadSize", "50", "--theme.base", "light",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def check_inputs(settings: Settings) -> None:
    """Raise :class:`DashboardError` for a missing app, package or checkpoint."""
    if not APP.is_file():
        raise DashboardError(f"{APP} is missing: run the dashboard from a MouthMap checkout")
    from mouthmap.package import ModelPackage, PackageError

    try:
        ModelPackage.load(settings.model)
    except PackageError as e:
        raise DashboardError(f"{e} (pass --model PACKAGE_DIR)") from None
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise DashboardError(f"checkpoint {settings.checkpoint} not found")


def start(settings: Settings, port: int, address: str = "127.0.0.1", log=None):
    """The Streamlit process (``subprocess.Popen``) for ``settings``; checks the inputs
    first so mistakes are reported here rather than inside the page."""
    check_inputs(settings)
    env = {**os.environ, **settings.as_env()}
    return subprocess.Popen(
        command(port, address), env=env, cwd=str(APP.parent.parent),
        stdout=log, stderr=subprocess.STDOUT if log is not None else None,
    )  # fmt: skip


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Until Streamlit's health endpoint answers (or the process died, or the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DashboardError(f"the dashboard exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise DashboardError(f"the dashboard did not answer at {url} within {timeout:g} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def start_background(
    settings: Settings,
    state_dir: str | Path,
    port: int = DEFAULT_PORT,
    address: str = "127.0.0.1",
    timeout: float = 120.0,
) -> tuple[str, bool]:
    """The dashboard in the background (own session, log ``<state_dir>/dashboard.log``);
    returns its URL and whether a running one was reused. One already running with the
    same settings is reused; one with other settings (another model, Triton, registry) is
    restarted. ``port=0``, or a ``port`` another process holds, picks a free port."""
    from mouthmap.stack.services import ManagedProcess, StackError, free_port, port_is_free

    proc = ManagedProcess(SERVICE, Path(state_dir))
    env = settings.as_env()
    if proc.is_running():
        meta = proc.read_meta()
        if meta.get("env") == env and meta.get("url") and _healthy(meta["url"]):
            return meta["url"], True
        proc.stop()
    check_inputs(settings)
    recorded = proc.read_meta().get("port")
    if not port or not port_is_free(port, address):
        port = recorded if recorded and port_is_free(recorded, address) else free_port(address)
    url = f"http://{address}:{port}"
    proc.write_meta({"port": port, "url": url, "env": env})
    try:
        proc.start(
            command(port, address), lambda: _healthy(url), timeout=timeout,
            env={**os.environ, **env}, cwd=APP.parent.parent,
        )  # fmt: skip
    except StackError as e:
        raise DashboardError(str(e)) from None
    return url, False


def background_url(state_dir: str | Path) -> str | None:
    """The URL of the background dashboard of ``state_dir`` while it runs."""
    from mouthmap.stack.services import ManagedProcess

    proc = ManagedProcess(SERVICE, Path(state_dir))
    return proc.read_meta().get("url") if proc.is_running() else None


def stop_background(state_dir: str | Path, timeout: float = 15.0) -> bool:
    """Stop the background dashboard of ``state_dir``; True if one ran."""
    from mouthmap.stack.services import ManagedProcess

    return ManagedProcess(SERVICE, Path(state_dir)).stop(timeout)
