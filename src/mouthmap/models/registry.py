"""Models by name: the named configurations and any frontend/backend combination."""

from __future__ import annotations

from typing import Any

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


def resolve_spec(name_or_spec: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_spec, dict):
        return name_or_spec
    if name_or_spec not in MODELS:
        raise ValueError(f"unknown model {name_or_spec!r}; known models: {', '.join(MODELS)}")
    return MODELS[name_or_spec]


def build_model(name_or_spec: str | dict[str, Any]) -> VSRModel:
    """A model by registered name or by ``{"frontend", "backend", "*_args"}`` spec."""
    spec = resolve_spec(name_or_spec)
    fe, be = spec.get("frontend"), spec.get("backend")
    if fe not in FRONTENDS:
        raise ValueError(f"unknown frontend {fe!r}; known frontends: {', '.join(FRONTENDS)}")
    if be not in BACKENDS:
        raise ValueError(f"unknown backend {be!r}; known backends: {', '.join(BACKENDS)}")
    frontend = FRONTENDS[fe](**spec.get("frontend_args", {}))
    backend = BACKENDS[be](frontend.out_dim, **spec.get("backend_args", {}))
    return VSRModel(frontend, backend)
