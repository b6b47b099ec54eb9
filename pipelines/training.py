"""The training pipeline: data -> teachers -> distilled student -> ONNX -> INT8 ->
evaluation -> registry -> gate -> (only if it passed) promotion to champion.

Its parameters mirror ``params.yaml`` (``<section>_<key>``, same defaults; see
:mod:`mouthmap.pipeline.params`). Compile with ``mouthmap pipeline compile``; the
committed ``pipelines/training.yaml`` is that output and a test fails when it is stale.
"""

from __future__ import annotations

import inspect

import components as c
from kfp import dsl, kubernetes

from mouthmap.pipeline.params import PipelineParam, mirrored

NAME = "mouthmap-training"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")  # set by NVIDIA's GPU feature discovery
# kubectl create secret generic mouthmap-mlflow --from-literal=tracking_uri=http://mlflow:5000
MLFLOW_SECRET = "mouthmap-mlflow"


def _gpu(task, cpu: str = "4", memory: str = "16G"):
    """One NVIDIA GPU on a GPU node (and tolerate the usual GPU taint)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def _cpu(task, cpu: str = "2", memory: str = "8G"):
    return task.set_cpu_request(cpu).set_memory_request(memory)


def _mlflow(task):
    """MLFLOW_TRACKING_URI from the cluster secret (optional: the registry_uri parameter
    may name the server instead)."""
    kubernetes.use_secret_as_env(
        task, secret_name=MLFLOW_SECRET, secret_key_to_env={"tracking_uri": "MLFLOW_TRACKING_URI"},
        optional=True,
    )  # fmt: skip
    return task


def build(spec: list[PipelineParam] | None = None):
    """The pipeline function, its signature generated from ``params.yaml``."""
    spec = spec or mirrored()
    names = [p.name for p in spec]
    check_params = c.make_check_params(spec)

    def mouthmap_training(*args, **kwargs):
        kwargs.update(zip(names, args, strict=False))
        config = check_params(**kwargs).set_display_name("check parameters").output

        imported = _cpu(c.import_data(config=config))
        prepared_task = _cpu(c.prepare_data(config=config, corpus=imported.outputs["corpus"]))
        prepared = prepared_task.outputs["prepared"]
        validated = _cpu(c.validate_data(config=config, prepared=prepared))
        quarantined = validated.outputs["quarantined"]
        data = {"config": config, "prepared": prepared, "quarantined": quarantined}

        teacher = _mlflow(_gpu(c.train_teacher(**data)))
        audio_teacher = _mlflow(_gpu(c.train_audio_teacher(**data)))
        student = _mlflow(_gpu(c.distil_student(
            **data, visual_teacher=teacher.outputs["checkpoint"],
            audio_teacher=audio_teacher.outputs["checkpoint"],
        )))  # fmt: skip
        ckpt = student.outputs["checkpoint"]
        package = _cpu(c.export_onnx(**data, checkpoint=ckpt))
        quantized = _cpu(c.quantize_model(**data, package=package.outputs["package"],
                                          checkpoint=ckpt), memory="12G")  # fmt: skip
        deployable = quantized.outputs["quantized"]
        evaluated = _cpu(c.evaluate_model(**data, package=deployable, checkpoint=ckpt,
                                          teacher=teacher.outputs["checkpoint"]))  # fmt: skip

        registered = _mlflow(_cpu(c.register_model(
            config=config, package=deployable, evaluation=evaluated.outputs["Output"],
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ), cpu="1", memory="2G"))  # fmt: skip
        judged = _mlflow(_cpu(c.gate(**data, version=registered.output)))
        # a single bool output: kfp.local 2.17 cannot read a NamedTuple field in a condition
        with dsl.If(judged.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
            promoted = _mlflow(_cpu(c.promote_model(
                config=config, version=registered.output,
                gate_report=judged.outputs["report_files"],
            ), cpu="1", memory="1G"))  # fmt: skip
        for task in (registered, judged, promoted):
            task.set_caching_options(False)  # the registry changes between runs

    signature = [
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default,
                          annotation=p.type)
        for p in spec
    ]  # fmt: skip
    mouthmap_training.__signature__ = inspect.Signature(signature)
    return dsl.pipeline(name=NAME, description=__doc__.split("\n\n")[0])(mouthmap_training)


training_pipeline = build()
