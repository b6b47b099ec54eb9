"""The Kubeflow pipeline: its committed IR is current, its parameters mirror params.yaml,
it asks a cluster for GPUs/secrets/node selectors, promotes only under the gate, and a bad
parameter is refused before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mouthmap.cli import app
from mouthmap.config import ParamsError, load_params
from mouthmap.pipeline import runner
from mouthmap.pipeline.params import (
    ARTIFACT_PATHS,
    PIPELINE_EXTRAS,
    check_params_function,
    mirrored,
    to_config,
)

ROOT = Path(__file__).resolve().parents[1]
IR = ROOT / "pipelines" / "training.yaml"


def _compile(out: Path) -> Path:
    """Compile in a fresh interpreter with the default image (as `mouthmap pipeline compile`)."""
    env = {k: v for k, v in os.environ.items() if k != "MOUTHMAP_PIPELINE_IMAGE"}
    subprocess.run(
        [sys.executable, "-m", "mouthmap", "pipeline", "compile", "--out", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    """The pipeline spec, with the platform (Kubernetes) spec of the second document."""
    text = _compile(tmp_path_factory.mktemp("ir") / "training.yaml").read_text()
    spec, platform = yaml.safe_load_all(text)
    return {**spec, **platform}


def test_the_committed_ir_is_what_the_code_compiles_to(tmp_path):
    fresh = _compile(tmp_path / "training.yaml").read_text()
    assert IR.is_file(), "pipelines/training.yaml is missing: run `mouthmap pipeline compile`"
    assert IR.read_text() == fresh, (
        "pipelines/training.yaml is stale (the pipeline, its components or params.yaml "
        "changed): run `mouthmap pipeline compile` and commit the result"
    )


def test_every_hyper_parameter_of_params_yaml_is_a_pipeline_parameter_with_its_default(ir):
    params = load_params(ROOT / "params.yaml").model_dump(by_alias=True)
    inputs = ir["root"]["inputDefinitions"]["parameters"]
    mirrored_keys = 0
    for section, values in params.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            name = f"{section}_{key}"
            if dotted in ARTIFACT_PATHS:
                assert name not in inputs, f"{name} is a path the pipeline replaces"
                continue
            assert name in inputs, f"params.yaml {dotted} has no pipeline parameter {name}"
            default = inputs[name].get("defaultValue")
            expected = {} if value is None and key == "spec" else value
            if value is None:
                expected = {"STRING": "", "NUMBER_INTEGER": 0, "NUMBER_DOUBLE": 0.0, "STRUCT": {}}[
                    inputs[name]["parameterType"]
                ]
            assert default == expected, f"{name}: IR default {default!r} != params.yaml {value!r}"
            mirrored_keys += 1
    assert mirrored_keys > 40
    assert set(PIPELINE_EXTRAS) <= set(inputs)


def test_the_pipeline_runs_every_stage_and_promotes_only_when_the_gate_passed(ir):
    tasks = ir["root"]["dag"]["tasks"]
    assert {
        "check-params", "import-data", "prepare-data", "validate-data", "train-teacher",
        "train-audio-teacher", "distil-student", "export-onnx", "quantize-model",
        "evaluate-model", "register-model", "gate",
    } <= set(tasks)  # fmt: skip
    cond = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert "gate" in cond["dependentTasks"]
    assert "gate-Output" in cond["triggerPolicy"]["condition"]  # the gate's bool
    inner = ir["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"promote-model"}
    # every other step depends (directly or not) on check-params: a bad value stops all
    assert tasks["import-data"]["dependentTasks"] == ["check-params"]


def test_training_steps_ask_for_a_gpu_node_and_registry_steps_get_the_mlflow_secret(ir):
    executors = ir["deploymentSpec"]["executors"]
    for step in ("train-teacher", "train-audio-teacher", "distil-student"):
        res = executors[f"exec-{step}"]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "1"
    k8s = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    teacher = k8s["exec-train-teacher"]
    assert teacher["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert teacher["tolerations"][0]["key"] == "nvidia.com/gpu"
    for step in ("register-model", "gate", "promote-model", "train-teacher"):
        secret = k8s[f"exec-{step}"]["secretAsEnv"][0]
        assert secret["secretName"] == "mouthmap-mlflow"
        assert secret["keyToEnv"][0]["envVar"] == "MLFLOW_TRACKING_URI"
    image = executors["exec-prepare-data"]["container"]["image"]
    assert image == "mouthmap/pipeline:0.1.0"


def test_an_invalid_parameter_is_named_before_anything_runs():
    with pytest.raises(ParamsError) as e:
        runner.resolve_values("quick", {"train_epochs": 0, "quantize_method": "fast"})
    text = str(e.value)
    assert "train_epochs (train.epochs)" in text and "quantize_method" in text
    with pytest.raises(ParamsError, match="unknown pipeline parameter.*train_epoch"):
        runner.resolve_values(None, {"train_epoch": 3})
    with pytest.raises(ParamsError, match="bench_repeats: expected int"):
        runner.resolve_values(None, {"bench_repeats": "many"})
    with pytest.raises(ParamsError, match="unknown profile"):
        runner.resolve_values("fastest", {})


def test_the_first_step_refuses_a_bad_value_a_cluster_run_was_given():
    """What a run started from the Kubeflow UI with a bad value meets: check-params fails."""
    check = check_params_function()
    assert '"data_source"' not in check(train_epochs=2)  # JSON text of the validated config
    with pytest.raises(ParamsError, match="train_lr"):
        check(train_lr=-1.0)


def test_cli_run_with_a_bad_parameter_exits_2_and_starts_nothing(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["pipeline", "run", "--local", "--set", "train_batch_size=0", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "train_batch_size (train.batch_size)" in result.output
    assert not out.exists()
    both = CliRunner().invoke(app, ["pipeline", "run"])
    assert both.exit_code == 2 and "--local or --host" in both.output


def test_values_round_trip_through_kfp_structs():
    """KFP turns every number inside a struct into a float; the model spec must survive."""
    spec = mirrored()
    config = to_config({"teacher_spec": {"backend_args": {"hidden": 64.0}}, "model_spec": {}})
    assert config["extras"]["teacher_spec"]["backend_args"]["hidden"] == 64
    assert isinstance(config["extras"]["teacher_spec"]["backend_args"]["hidden"], int)
    assert config["params"]["model"]["spec"] is None  # {} means "none"
    assert config["params"]["train"]["limit_train"] is None  # 0 means "none"
    assert len(spec) == len({p.name for p in spec})


def test_parse_assignments_reads_yaml_values():
    got = runner.parse_assignments(["train_epochs=3", "data_speakers=[s1, s2]", "x=true"])
    assert got == {"train_epochs": 3, "data_speakers": ["s1", "s2"], "x": True}
    with pytest.raises(ParamsError, match="NAME=VALUE"):
        runner.parse_assignments(["novalue"])


def test_submitting_to_an_endpoint_that_is_not_there_names_it():
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        runner.run_host("http://127.0.0.1:9", runner.resolve_values(None, {}))
