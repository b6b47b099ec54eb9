"""The local MLflow store under concurrent use."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest


def _start_a_run(root: str, barrier, i: int, results) -> None:
    import mlflow

    from mouthmap.train import tracking

    barrier.wait()  # every process past its imports: they reach the fresh store together
    try:
        with tracking.run(None, Path(root), "mouthmap", f"run{i}"):
            mlflow.log_param("i", i)
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - the failure is what the test reports
        results.put(f"{type(err).__name__}: {err}"[:300])


def test_runs_started_at_once_on_a_fresh_checkout_all_log_to_one_local_store(tmp_path):
    """Without a lock, the processes all create the new SQLite store's tables and fail with
    "duplicate column name: step" or "table ... already exists" (a sweep started at once)."""
    import mlflow

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_start_a_run, args=(str(tmp_path), barrier, i, results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mouthmap"])
    assert sorted(runs["params.i"]) == ["0", "1", "2", "3"]


def test_a_run_uses_the_experiment_another_client_created_after_it_looked(tmp_path, monkeypatch):
    """With a tracking server (no local lock), another client may create the experiment
    between this one's lookup and its create_experiment: the run goes on in that experiment."""
    import mlflow

    from mouthmap.train import tracking

    uri = f"sqlite:///{tmp_path / 'server.db'}"  # given explicitly, as a server's URI would be
    mlflow.set_tracking_uri(uri)
    theirs = mlflow.create_experiment("mouthmap", artifact_location=(tmp_path / "a").as_uri())
    real, looked = mlflow.get_experiment_by_name, []

    def lookup(name: str):  # the first lookup came before the other client's create
        looked.append(name)
        return None if len(looked) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup)
    with tracking.run(uri, tmp_path, "mouthmap", "late") as active:
        assert active.info.experiment_id == theirs
    monkeypatch.undo()

    def refused(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("the store refused it")

    monkeypatch.setattr(mlflow, "create_experiment", refused)  # a failure of any other kind
    with (
        pytest.raises(mlflow.exceptions.MlflowException, match="refused"),
        tracking.run(uri, tmp_path, "never-made", "y"),
    ):
        pass
