"""Training components: visual teacher, audio teacher, distilled student (checkpoints)."""

# no `from __future__ import annotations`: KFP reads the real annotations
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import COMPONENT


@dsl.component(**COMPONENT)
def train_teacher(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """The visual teacher (3D-CNN + Bi-LSTM + CTC by default): a GPU step in a cluster."""
    from mouthmap.pipeline import steps

    extras = steps.load_config(config)["extras"]
    values = steps.train_model(
        config, prepared.path, quarantined, checkpoint.path,
        extras["teacher_model"], extras.get("teacher_spec") or None,
    )  # fmt: skip
    for k, v in values.items():
        metrics.log_metric(k, v)


@dsl.component(**COMPONENT)
def train_audio_teacher(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """The audio teacher (log-mel ASR + CTC) for cross-modal distillation."""
    from mouthmap.pipeline import steps

    values = steps.train_model(
        config, prepared.path, quarantined, checkpoint.path,
        steps.load_config(config)["extras"]["audio_teacher_model"],
    )  # fmt: skip
    for k, v in values.items():
        metrics.log_metric(k, v)


@dsl.component(**COMPONENT)
def distil_student(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    visual_teacher: Input[Model],
    audio_teacher: Input[Model],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """The student (``model.*``): CTC + response KD + cross-modal KD: a GPU step."""
    from mouthmap.pipeline import steps

    values = steps.distil_student(
        config, prepared.path, quarantined, visual_teacher.path, audio_teacher.path,
        checkpoint.path,
    )  # fmt: skip
    for k, v in values.items():
        metrics.log_metric(k, v)
