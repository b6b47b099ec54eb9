"""MLflow tracking: a local SQLite store by default, the stack's server when given.

MLflow 3 refuses new plain-file stores, so the local default is a SQLite file with
artifacts beside it under ``mlruns/``; nothing needs a server. ``off`` as the URI turns
tracking off (a rented machine without MLflow installed): the run directory's
``history.json``, learning curve and checkpoints are then the record.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

OFF = "off"


def is_off(uri: str | None) -> bool:
    return (uri or "").strip().lower() == OFF


def tracking_uri(uri: str | None, root: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment) for ``uri`` or the default."""
    if uri:
        return uri, None
    store = _local_store(root)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


@contextmanager
def run(uri: str | None, root: Path, experiment: str, run_name: str, enabled: bool = True):
    """An active MLflow run (or a no-op stand-in on non-main DDP ranks and with ``off``)."""
    if not enabled or is_off(uri):
        yield None
        return
    import mlflow

    turi, artifacts = tracking_uri(uri, root)
    mlflow.set_tracking_uri(turi)
    with _first_use_lock(uri, root):
        if mlflow.get_experiment_by_name(experiment) is None:
            try:
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            except mlflow.exceptions.MlflowException:
                if mlflow.get_experiment_by_name(experiment) is None:
                    raise  # not another client creating it first: a real failure
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as active:
        yield active


def _first_use_lock(uri: str | None, root: Path) -> Any:
    """A lock on the local store while it is created: two runs started at once on a fresh
    checkout would both migrate the new SQLite schema ("duplicate column name: step") or both
    create the experiment. A server owns its schema; of clients creating one experiment at
    once, all but the first are told it exists, and use it."""
    if uri:
        return nullcontext()
    from filelock import FileLock

    return FileLock(str(_local_store(root) / "mlflow.db.lock"))


def _local_store(root: Path) -> Path:
    """The default store's directory: SQLite database, its lock and the artifacts."""
    return (root / "mlruns").resolve()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
