"""Compression components: ONNX export (the model package) and INT8 (PTQ / QAT)."""

# no `from __future__ import annotations`: KFP reads the real annotations
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import COMPONENT


@dsl.component(**COMPONENT)
def export_onnx(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    checkpoint: Input[Model],
    package: Output[Model],
    metrics: Output[Metrics],
):
    """Checkpoint -> model package: FP32 ONNX (parity-checked), word LM, tuned decoder."""
    from mouthmap.pipeline import steps

    values = steps.export_onnx(config, prepared.path, quarantined, checkpoint.path, package.path)
    for k, v in values.items():
        metrics.log_metric(k, v)


@dsl.component(**COMPONENT)
def quantize_model(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    package: Input[Model],
    checkpoint: Input[Model],
    quantized: Output[Model],
    metrics: Output[Metrics],
):
    """INT8 variants (PTQ, PT2E QAT, dynamic); the better of PTQ/QAT on val deploys."""
    from mouthmap.pipeline import steps

    values = steps.quantize(
        config, prepared.path, quarantined, package.path, checkpoint.path, quantized.path
    )
    for k, v in values.items():
        metrics.log_metric(k, v)
