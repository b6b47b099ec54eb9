"""The end-to-end demo (`make demo`): every step but the training pipeline run for real
(S3, MLflow, the baseline champion, Triton, gRPC streams, the dashboard), then run again
to show it reuses what runs, once more after the champion changed (Triton and the dashboard
follow it), then `demo down`. The pipeline step itself is the
`pipeline run --local` code path (tests/test_pipeline_local.py; the whole quick profile
is too long for CI and is timed by hand, README)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from conftest import SAMPLE
from mouthmap import demo, stages
from mouthmap.config import load_params
from mouthmap.data import splits
from mouthmap.stack.services import port_open

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["stack", "baseline", "pipeline", "gate", "serve", "stream", "drift", "dashboard"]


def _health(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:  # noqa: S310
        return r.status


@pytest.mark.integration
@pytest.mark.slow
def test_demo_serves_the_baseline_champion_streams_test_clips_and_demo_down_stops_all(
    tiny_package, tmp_path
):
    from mouthmap.registry import Registry
    from mouthmap.serving.repository import read_manifest
    from mouthmap.serving.server import TritonServer
    from mouthmap.stack.services import ManagedProcess

    sd = tmp_path / "stack"
    opts = demo.DemoOptions(
        state_dir=sd, baseline=tiny_package, pipeline=False, corpus=SAMPLE, clips=2,
        s3_port=0, mlflow_port=0, triton_port=0, dashboard_port=0, reports=tmp_path / "reports",
    )  # fmt: skip
    lines: list[str] = []
    try:
        first = demo.run_demo(opts, lines.append)
        assert [s.name for s in first.steps] == STEPS
        assert {s.name: s.status for s in first.steps}["pipeline"] == "skipped"
        assert all(s.status in ("ok", "skipped") for s in first.steps)

        # the released (here: tiny) package became the champion and is what Triton serves
        reg = Registry(first.mlflow_uri)
        assert first.champion == "1" and reg.champion().version == "1"
        assert reg.version("1").tags[demo.BASELINE_TAG] == "released"
        served = read_manifest(TritonServer(sd).endpoint().repo)
        assert served["package"] == str(first.champion_package.resolve())

        # held-out test clips went through Triton over gRPC and were printed with the truth
        assignment = splits.load(ROOT / "data" / "splits" / "grid_s1.json")
        assert len(first.readings) == 2
        assert all(assignment[r.id] == "test" and r.text is not None for r in first.readings)
        assert sum("(truth: " in line for line in lines) == 2
        assert first.wer is not None and any("WER" in line for line in lines)

        # Triton recorded each stream's features, and the demo checked them for drift: the
        # Drift page has a report to show after a first demo
        from mouthmap.monitor.sink import load_window

        recorded = load_window(sd / "drift-requests")
        assert len(recorded) == 2 and {"brightness", "confidence"} <= set(recorded.columns)
        assert first.drift_report == tmp_path / "reports" / "drift" / "report.html"
        assert "drift" in first.drift_report.read_text().lower()
        assert first.drifted is not None and any("requests vs" in line for line in lines)

        # the dashboard answers, pointed at that Triton and MLflow
        assert _health(first.dashboard_url) == 200
        env = ManagedProcess("dashboard", sd).read_meta()["env"]
        assert env["MOUTHMAP_TRITON_URL"] == first.triton_grpc
        assert env["MLFLOW_TRACKING_URI"] == first.mlflow_uri
        assert env["MOUTHMAP_DASHBOARD_REPORTS"] == str(tmp_path / "reports")
        assert "total" in first.table() and first.seconds > 0

        # again: everything is reused, nothing doubled
        pids = {n: ManagedProcess(n, sd).pid() for n in ("triton", "mlflow", "dashboard")}
        again = demo.run_demo(opts, lines.append)
        assert {n: ManagedProcess(n, sd).pid() for n in pids} == pids
        assert (again.triton_grpc, again.dashboard_url) == (first.triton_grpc, first.dashboard_url)
        assert [v.version for v in reg.versions()] == ["1"]

        # a new champion (as a pipeline whose model passed the gate leaves it) is served next
        reg.promote(reg.register(tiny_package).version, force=True)
        third = demo.run_demo(opts, lines.append)
        assert third.champion == "2"
        assert read_manifest(TritonServer(sd).endpoint().repo)["package"] == str(
            third.champion_package.resolve()
        )
        assert ManagedProcess("triton", sd).pid() != pids["triton"]
        env = ManagedProcess("dashboard", sd).read_meta()["env"]
        assert env["MOUTHMAP_DASHBOARD_MODEL"] == str(third.champion_package)
        assert _health(third.dashboard_url) == 200
    finally:
        stopped = demo.demo_down(sd)
    assert set(stopped) == {"dashboard", "triton", "mlflow", "seaweedfs"}
    ports = [int(first.triton_grpc.rsplit(":", 1)[1]), int(first.dashboard_url.rsplit(":", 1)[1])]
    assert not any(port_open(p) for p in ports)
    assert demo.demo_down(sd) == []  # a second down finds nothing to stop


# --- the code around the real parts ---------------------------------------------------------------


def test_a_failing_step_is_named_with_its_log_and_the_table_keeps_the_steps_that_ran():
    result = demo.DemoResult()
    with demo._step(result, "stack") as step:
        step.note = "up"
    with pytest.raises(demo.DemoError) as err, demo._step(result, "serve", Path("/x/triton.log")):
        raise RuntimeError("model failed to load")
    assert str(err.value) == (
        "step 'serve' failed: RuntimeError: model failed to load; log: /x/triton.log"
    )
    assert [(s.name, s.status) for s in result.steps] == [("stack", "ok"), ("serve", "failed")]
    table = result.table().splitlines()
    assert table[0].split()[:3] == ["step", "status", "seconds"]
    assert table[-1].split()[0] == "total"


def test_the_pipeline_progress_prints_each_finished_step_once(tmp_path):
    import io

    log, console, seen = io.StringIO(), io.StringIO(), []
    progress = demo._progress(log, seen.append, console)
    progress.write("\x1b[32mExecuting task 'import-data'\x1b[0m\n")
    progress.write("Task 'import-data' finished with status SUCCESS\nother output\n")
    progress.write("Task 'import-data' finished with status SUCCESS\n")
    assert len(seen) == 1 and seen[0].split()[:2] == ["import-data", "SUCCESS"]
    assert "other output" in log.getvalue()  # everything else goes to the log only


def test_the_streamed_clips_are_a_spread_of_the_test_split():
    params = load_params(ROOT / "params.yaml")
    all_test = stages.held_out_clips(params, SAMPLE)
    assignment = splits.load(ROOT / "data" / "splits" / "grid_s1.json")
    assert all_test and all(assignment[c.id] == "test" for c in all_test)
    assert stages.held_out_clips(params, SAMPLE, limit=99) == all_test
    two = stages.held_out_clips(params, SAMPLE, limit=2)
    assert [c.id for c in two] == [all_test[0].id, all_test[len(all_test) // 2].id]


def test_demo_down_with_nothing_running_says_so(tmp_path):
    from typer.testing import CliRunner

    from mouthmap.cli import app

    res = CliRunner().invoke(app, ["demo", "down", "--state-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "nothing was running" in res.output
