"""Pieces of the training pipeline run for real with kfp.local (each step a subprocess,
as in `mouthmap pipeline run --local`): the data steps on the committed sample, and the
registry steps against a real MLflow server with the gate deciding promotion (dsl.If).
The whole quick-profile pipeline is too long for CI; it is run by hand (README)."""

# no `from __future__ import annotations`: KFP reads the pipelines' real annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest

from _stack_fixtures import free_port
from mouthmap.pipeline import runner
from mouthmap.pipeline.params import mirrored, to_config
from mouthmap.registry import Registry
from mouthmap.stack import stack_down, stack_up

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def local_runner(tmp_path):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    return tmp_path / "kfp"


def _run(pipeline, **args) -> runner.LocalRun:
    """Run with the same step timer as `mouthmap pipeline run --local`."""
    timer = runner.StepTimer(sys.stdout)
    with contextlib.redirect_stdout(timer):
        pipeline(**args)
    return runner.LocalRun("SUCCESS", 0.0, list(timer.steps.values()))


def test_data_steps_prepare_validate_and_publish_the_data_docs(local_runner):
    import components as c
    from kfp import dsl

    spec = mirrored()
    check = c.make_check_params(spec)

    @dsl.pipeline(name="data-steps")
    def data_steps(train_epochs: int = 1):
        config = check(train_epochs=train_epochs, prepare_workers=2).output
        imported = c.import_data(config=config)
        prepared = c.prepare_data(config=config, corpus=imported.outputs["corpus"])
        c.validate_data(config=config, prepared=prepared.outputs["prepared"])

    run = _run(data_steps)
    steps = {s.name: s for s in run.steps}
    assert set(steps) == {"check-params", "import-data", "prepare-data", "validate-data"}
    assert all(s.status == "SUCCESS" and s.seconds is not None for s in steps.values())
    (out,) = [p for p in local_runner.iterdir() if p.name.startswith("data-steps")]
    manifest = (out / "prepare-data" / "prepared" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 21  # header + the 20 sample clips
    page = (out / "validate-data" / "data_docs").read_text()
    assert "Data validation (Great Expectations)" in page and "all clips pass" in page
    assert (out / "validate-data" / "data_docs_site" / "index.html").is_file()
    executor = json.loads((out / "validate-data" / "executor_output.json").read_text())
    assert executor["parameterValues"]["quarantined"] == []


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    state = tmp_path_factory.mktemp("pipeline-stack")
    info = stack_up(state, s3_port=free_port(), mlflow_port=free_port(), timeout=300)
    try:
        yield info.mlflow_uri
    finally:
        stack_down(state)


def _registry_steps(config: str, package_uri: str, prepared_uri: str):
    import components as c
    from kfp import dsl
    from kfp.dsl import Dataset, Model

    @dsl.pipeline(name="registry-steps")
    def registry_steps(run_id: str = "local-test"):
        package = dsl.importer(artifact_uri=package_uri, artifact_class=Model, reimport=False)
        prepared = dsl.importer(artifact_uri=prepared_uri, artifact_class=Dataset, reimport=False)
        registered = c.register_model(
            config=config, package=package.output, evaluation={"test_wer_beam": 0.5},
            pipeline_run_id=run_id,
        )  # fmt: skip
        judged = c.gate(config=config, prepared=prepared.output, quarantined=[],
                        version=registered.output)  # fmt: skip
        with dsl.If(judged.outputs["Output"] == True):  # noqa: E712
            c.promote_model(config=config, version=registered.output,
                            gate_report=judged.outputs["report_files"])  # fmt: skip

    return registry_steps


def test_register_gate_and_promote_steps_move_the_champion_only_when_it_passes(
    local_runner, mlflow_uri, tiny_package, prepared_sample, tmp_path
):
    relaxed = tmp_path / "relaxed.yaml"  # latency on a loaded test machine is not the point
    relaxed.write_text("max_latency_ms: 1000000\nmax_latency_ratio: 1000\n")
    config = json.dumps(to_config({"registry_uri": mlflow_uri, "gate_policy": str(relaxed)}))
    registry_steps = _registry_steps(config, str(tiny_package), str(prepared_sample / "prepared"))

    first = _run(registry_steps, run_id="run-a")
    assert "promote-model" in {s.name for s in first.steps}  # no champion yet: promoted
    reg = Registry(mlflow_uri)
    assert reg.champion().version == "1"
    assert reg.version("1").tags["lineage.pipeline_run_id"] == "run-a"

    # the same package again ties with the champion (tolerance 0): passes, champion moves
    second = _run(registry_steps, run_id="run-b")
    assert {s.name for s in second.steps} >= {"register-model", "gate", "promote-model"}
    assert reg.champion().version == "2"
    assert reg.version("2").tags["previous_champion"] == "1"

    # a policy whose size budget the package breaks: gate refuses, promote-model never runs
    strict = tmp_path / "strict.yaml"
    strict.write_text("max_size_mb: 0.001\n")
    config = json.dumps(to_config({"registry_uri": mlflow_uri, "gate_policy": str(strict)}))
    refused = _run(_registry_steps(config, str(tiny_package), str(prepared_sample / "prepared")),
                   run_id="run-c")  # fmt: skip
    names = {s.name for s in refused.steps}
    assert "gate" in names and "promote-model" not in names
    assert reg.champion().version == "2"
    assert reg.alias("challenger").version == "3"
