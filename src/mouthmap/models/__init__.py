"""Visual speech recognition models, chosen by name from params.yaml."""

from mouthmap.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
