"""Real prepared clips as model inputs: for calibration, agreement checks and benchmarks.

Each clip goes through the evaluation transforms (centre crop) and the *package's*
normalisation, exactly as ``mouthmap transcribe`` feeds the deployed model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Clip:
    id: str
    text: str
    frames: np.ndarray  # (T, H, W) float32, normalised


def load_clips(
    prepared_dir: str | Path,
    split: str,
    mean: float,
    std: float,
    limit: int | None = None,
    crop: int = 88,
    exclude: Collection[str] = (),
) -> list[Clip]:
    """Usable clips of ``split``; with ``limit``, that many spread evenly over the split (the
    manifest is sorted by id, so its first N clips would share their first words)."""
    from mouthmap.data import dataset as ds

    data = ds.GridDataset(
        prepared_dir, (split,), ds.eval_transforms(crop), ds.Normalisation(mean, std),
        exclude=exclude,
    )  # fmt: skip
    n = len(data)
    if n == 0:
        raise ValueError(f"{prepared_dir}: no prepared {split} clips")
    picks = range(n) if not limit or limit >= n else np.linspace(0, n - 1, limit).round()
    out = []
    for i in dict.fromkeys(int(i) for i in picks):
        s = data[i]
        out.append(Clip(s.id, s.text, s.video[0].numpy().astype(np.float32)))
    return out


def batch_of(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded (B, 1, T_max, H, W) batch and its lengths (B,) int64."""
    lengths = np.array([len(c.frames) for c in clips], dtype=np.int64)
    _, h, w = clips[0].frames.shape
    video = np.zeros((len(clips), 1, int(lengths.max()), h, w), dtype=np.float32)
    for i, c in enumerate(clips):
        video[i, 0, : len(c.frames)] = c.frames
    return video, lengths
