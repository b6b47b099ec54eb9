"""Evaluation component: WER/CER per split and the PyTorch-vs-ONNX Runtime benchmark."""

# no `from __future__ import annotations`: KFP reads the real annotations
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import COMPONENT


@dsl.component(**COMPONENT)
def evaluate_model(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    package: Input[Model],
    checkpoint: Input[Model],
    teacher: Input[Model],
    report: Output[HTML],
    report_files: Output[Artifact],
    metrics: Output[Metrics],
) -> dict:
    """Score the package (greedy, beam+LM) and benchmark it; returns the metrics."""
    from mouthmap.pipeline import steps

    values = steps.evaluate_and_bench(
        config, prepared.path, quarantined, package.path, checkpoint.path, teacher.path,
        report_files.path, report.path,
    )  # fmt: skip
    for k, v in values.items():
        metrics.log_metric(k, v)
    return values
