"""Models by name: the named configurations and any frontend/backend combination.

Visual models (``MODELS``: video in) and audio models (``AUDIO_MODELS``: log-mel in, the
audio teacher for cross-modal distillation) share the output contract; a spec with
``"modality": "audio"`` builds an audio model (:mod:`mouthmap.models.audio`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mouthmap.models.backends import BACKENDS
from mouthmap.models.base import VSRModel
from mouthmap.models.frontends import FRONTENDS

MODELS: dict[str, dict[str, Any]] = {
    "teacher": {"frontend": "lipnet3d", "backend": "bilstm", "backend_args": {"hidden": 256}},
    "student": {
        "frontend": "shufflenetv2",
        "frontend_args": {"out_dim": 512},
        "backend": "mstcn",
        "backend_args": {"width": 192, "blocks": 2},
    },
}

# Audio teachers: Conv2d subsampling to 25 frames/s + a back end + CTC (models/audio.py).
AUDIO_MODELS: dict[str, dict[str, Any]] = {
    "audio_teacher": {
        "modality": "audio",
        "encoder": "conformer",
        "encoder_args": {"d_model": 144, "blocks": 4, "heads": 4, "kernel": 15},
        "subsampling_args": {"channels": 64, "subsample_dim": 144},
        "specaugment": {"freq_masks": 2, "freq_width": 10, "time_masks": 2, "time_width": 20},
    },
}


def resolve_spec(name_or_spec: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_spec, dict):
        return name_or_spec
    known = {**MODELS, **AUDIO_MODELS}
    if name_or_spec not in known:
        raise ValueError(f"unknown model {name_or_spec!r}; known models: {', '.join(known)}")
    return known[name_or_spec]


def modality(name_or_spec: str | dict[str, Any]) -> str:
    """``"video"`` or ``"audio"``: which input a model reads."""
    return resolve_spec(name_or_spec).get("modality", "video")


def build_model(name_or_spec: str | dict[str, Any]) -> nn.Module:
    """A model by registered name or by ``{"frontend", "backend", "*_args"}`` spec (visual),
    or ``{"modality": "audio", "encoder", ...}`` (audio, see ``build_audio_model``)."""
    spec = resolve_spec(name_or_spec)
    kind = spec.get("modality", "video")
    if kind == "audio":
        from mouthmap.models.audio import build_audio_model

        return build_audio_model(spec)
    if kind != "video":
        raise ValueError(f"unknown modality {kind!r}; known: video, audio")
    spec = {k: v for k, v in spec.items() if k != "modality"}
    fe, be = spec.get("frontend"), spec.get("backend")
    if fe not in FRONTENDS:
        raise ValueError(f"unknown frontend {fe!r}; known frontends: {', '.join(FRONTENDS)}")
    if be not in BACKENDS:
        raise ValueError(f"unknown backend {be!r}; known backends: {', '.join(BACKENDS)}")
    frontend = FRONTENDS[fe](**spec.get("frontend_args", {}))
    backend = BACKENDS[be](frontend.out_dim, **spec.get("backend_args", {}))
    return VSRModel(frontend, backend)
