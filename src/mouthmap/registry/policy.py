"""The gate policy (``mlops/gate.yaml``): WER tolerance, latency and size budgets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_HERE = Path(__file__).resolve().parents[3]
REPO_ROOT = Path(os.environ.get("MOUTHMAP_HOME") or _HERE)  # $MOUTHMAP_HOME in the images
DEFAULT_POLICY = REPO_ROOT / "mlops" / "gate.yaml"


class PolicyError(ValueError):
    """The gate policy file is missing or holds an invalid value."""


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = "mouthmap"
    split: Literal["test", "val"] = "test"
    decoder: Literal["greedy", "beam"] = "beam"
    wer_tolerance: float = Field(0.0, ge=0.0, le=1.0)
    max_latency_ms: float = Field(250.0, gt=0)
    max_latency_ratio: float = Field(1.5, gt=0)
    latency_threads: int = Field(1, ge=1, le=64)
    max_size_mb: float = Field(20.0, gt=0)
    promote_first: bool = True


def load_policy(path: str | Path | None = None) -> GatePolicy:
    """``mlops/gate.yaml`` of the checkout (or ``path``), validated."""
    p = Path(path) if path else DEFAULT_POLICY
    if not p.is_file():
        if path is None:
            return GatePolicy()  # installed without the repo: the documented defaults
        raise PolicyError(f"gate policy {p} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
        return GatePolicy.model_validate(raw)
    except yaml.YAMLError as e:
        raise PolicyError(f"{p}: not valid YAML: {e}") from None
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise PolicyError(f"{p}: invalid gate policy:\n" + "\n".join(lines)) from None
