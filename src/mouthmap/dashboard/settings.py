"""What the dashboard runs with: passed by `mouthmap dashboard` to the Streamlit process as
environment variables (Streamlit scripts have no command line of their own)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mouthmap.package import DEFAULT_PACKAGE

ROOT = Path(__file__).resolve().parents[3]  # the checkout: dashboard/, data/, reports/
APP = ROOT / "dashboard" / "app.py"
SAMPLES = ROOT / "data" / "sample" / "s1"

ENV = {
    "model": "MOUTHMAP_DASHBOARD_MODEL",
    "checkpoint": "MOUTHMAP_DASHBOARD_CHECKPOINT",
    "decoder": "MOUTHMAP_DASHBOARD_DECODER",
    "samples": "MOUTHMAP_DASHBOARD_SAMPLES",
    "reports": "MOUTHMAP_DASHBOARD_REPORTS",
    "triton": "MOUTHMAP_TRITON_URL",
    "mlflow": "MLFLOW_TRACKING_URI",
    "threads": "MOUTHMAP_DASHBOARD_THREADS",
    "live_fps": "MOUTHMAP_DASHBOARD_LIVE_FPS",
}


@dataclass(frozen=True)
class Settings:
    model: Path
    checkpoint: Path | None
    decoder: str
    samples: Path
    reports: Path
    triton: str | None  # None: look for the local stack's Triton
    mlflow: str | None  # None: $MLFLOW_TRACKING_URI or the local stack's
    threads: int  # torch/ORT threads: 1 keeps a shared machine responsive
    live_fps: float  # pace of the live transcript (0: as fast as it runs)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env

        def get(key: str) -> str | None:
            return e.get(ENV[key]) or None

        ckpt = get("checkpoint")
        return cls(
            model=Path(get("model") or DEFAULT_PACKAGE),
            checkpoint=Path(ckpt) if ckpt else None,
            decoder=get("decoder") or "beam",
            samples=Path(get("samples") or SAMPLES),
            reports=Path(get("reports") or ROOT / "reports"),
            triton=get("triton"),
            mlflow=get("mlflow"),
            threads=int(get("threads") or 1),
            live_fps=float(get("live_fps") or 25.0),
        )

    def as_env(self) -> dict[str, str]:
        values = {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "decoder": self.decoder,
            "samples": self.samples,
            "reports": self.reports,
            "triton": self.triton,
            "mlflow": self.mlflow,
            "threads": self.threads,
            "live_fps": self.live_fps,
        }
        return {ENV[k]: str(v) for k, v in values.items() if v is not None}
