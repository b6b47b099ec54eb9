"""The PyTorch model behind a model package, for explanations that need gradients.

A released package keeps a slim copy of its checkpoint (``files.checkpoint``), which travels
with it; an older package only records the checkpoint it was exported from in its lineage
(``lineage.checkpoint``, with its SHA-256), a path on the machine that made it. A
``--checkpoint`` given by hand wins over both. Whichever is used is checked against the
package's FP32 ONNX on a real clip, so a saliency map is never drawn from a different model
than the one that read the lips.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mouthmap.package import ModelPackage

__all__ = ["CheckpointMismatch", "ExplainModel", "file_sha256", "find_checkpoint", "load_explainer"]

PARITY_TOLERANCE = 1e-3  # max |log-prob difference| between ONNX and PyTorch (export: ~1e-6)


class CheckpointMismatch(ValueError):
    """No usable checkpoint, or one whose outputs differ from the package's ONNX model."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_checkpoint(pkg: ModelPackage, override: str | Path | None = None) -> Path:
    """``override``, else the checkpoint the package keeps, else its ``lineage.checkpoint``
    (absolute, or relative to the package); raises :class:`CheckpointMismatch` naming what is
    missing."""
    if override:
        p = Path(override)
        if not p.is_file():
            raise CheckpointMismatch(f"checkpoint {p} not found")
        return p
    if pkg.checkpoint_path is not None:
        return pkg.checkpoint_path
    recorded = (pkg.meta.get("lineage") or {}).get("checkpoint")
    if not recorded:
        raise CheckpointMismatch(
            f"{pkg.root} does not record its checkpoint (lineage.checkpoint): pass "
            "--checkpoint PATH to `mouthmap dashboard`"
        )
    p = Path(recorded)
    p = p if p.is_absolute() else pkg.root / p
    if not p.is_file():
        raise CheckpointMismatch(
            f"the package's checkpoint {p} is not on this machine: pass --checkpoint PATH"
        )
    return p


@dataclass
class ExplainModel:
    model: object  # torch.nn.Module in eval mode
    checkpoint: Path
    parity: float | None = None  # max |ONNX - PyTorch| on the last clip checked

    def check_parity(self, pkg: ModelPackage, rois: np.ndarray) -> float:
        """Max |log-prob| difference between this model and the package's FP32 ONNX on
        ``rois``; raises :class:`CheckpointMismatch` above :data:`PARITY_TOLERANCE`."""
        import torch

        from mouthmap.runtime.runner import OnnxRunner

        crop = int(pkg.meta["input"]["height"])
        off = (rois.shape[1] - crop) // 2
        x = rois[:, off : off + crop, off : off + crop].astype(np.float32) / 255.0
        x = (x - pkg.mean) / pkg.std
        onnx_lp = OnnxRunner(pkg.fp32_path, threads=1).clip(x)
        with torch.no_grad():
            torch_lp = self.model(torch.from_numpy(x)[None, None], torch.tensor([len(x)]))[0]
        self.parity = float(np.abs(torch_lp.numpy() - onnx_lp).max())
        if self.parity > PARITY_TOLERANCE:
            raise CheckpointMismatch(
                f"checkpoint {self.checkpoint} is not the model of {pkg.root}: its log-probs "
                f"differ from model_fp32.onnx by up to {self.parity:.3g} (tolerance "
                f"{PARITY_TOLERANCE:g}); pass the checkpoint that was exported"
            )
        return self.parity


def load_explainer(pkg: ModelPackage, override: str | Path | None = None) -> ExplainModel:
    from mouthmap.train.checkpoint import CheckpointError
    from mouthmap.train.trainer import load_for_inference

    path = find_checkpoint(pkg, override)
    try:
        model, _ = load_for_inference(path)
    except CheckpointError as e:
        raise CheckpointMismatch(str(e)) from None
    return ExplainModel(model=model, checkpoint=path)
