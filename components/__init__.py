"""Kubeflow components of MouthMap: one thin typed wrapper per stage over
:mod:`mouthmap.pipeline.steps` (which calls :mod:`mouthmap.stages`), all in the pipeline
image (:mod:`components.image`). No logic lives here."""

from components.compress import export_onnx, quantize_model
from components.data import import_data, prepare_data, validate_data
from components.evaluation import evaluate_model
from components.params import make_check_params
from components.registry import gate, promote_model, register_model
from components.training import distil_student, train_audio_teacher, train_teacher

__all__ = [
    "distil_student",
    "evaluate_model",
    "export_onnx",
    "gate",
    "import_data",
    "make_check_params",
    "prepare_data",
    "promote_model",
    "quantize_model",
    "register_model",
    "train_audio_teacher",
    "train_teacher",
    "validate_data",
]
