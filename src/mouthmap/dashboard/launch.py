"""Start the Streamlit dashboard as a child process on loopback (`mouthmap dashboard`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mouthmap.dashboard.settings import APP, Settings

__all__ = ["DashboardError", "command", "start", "wait_ready"]


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


def start(settings: Settings, port: int, address: str = "127.0.0.1", log=None):
    """The Streamlit process (``subprocess.Popen``) for ``settings``; checks the inputs
    first so mistakes are reported here rather than inside the page."""
    if not APP.is_file():
        raise DashboardError(f"{APP} is missing: run the dashboard from a MouthMap checkout")
    from mouthmap.package import ModelPackage, PackageError

    try:
        ModelPackage.load(settings.model)
    except PackageError as e:
        raise DashboardError(f"{e} (pass --model PACKAGE_DIR)") from None
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise DashboardError(f"checkpoint {settings.checkpoint} not found")
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
