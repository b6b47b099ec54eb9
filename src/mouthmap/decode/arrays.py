"""Accept model outputs as NumPy arrays or torch tensors without importing torch here.

Decoders run in places (Triton Python backend, CLI) where torch may be absent or slow
to import, so tensors are recognised by duck typing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A float64 NumPy view of an array or a (possibly CUDA, grad-tracking) torch tensor.

    float64 because pyctcdecode does its per-token arithmetic in Python, where
    ``np.float64`` (a ``float`` subclass) is much cheaper than ``np.float32``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def frames(log_probs: Any, length: int | None = None) -> np.ndarray:
    """One clip's ``(T, C)`` matrix, cut to its true ``length`` (padding frames dropped)."""
    arr = to_numpy(log_probs)
    if arr.ndim != 2:
        raise ValueError(f"expected log-probs of shape (T, C), got shape {arr.shape}")
    if length is not None:
        length = int(length)  # also a NumPy or torch scalar
        if not 0 <= length <= arr.shape[0]:
            raise ValueError(f"length {length} is outside 0..{arr.shape[0]} frames")
        arr = arr[:length]
    return arr


def clips(log_probs: Any, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Split a ``(B, T, C)`` batch (or a list of ``(T, C)`` matrices) into trimmed clips."""
    items = list(log_probs) if isinstance(log_probs, list | tuple) else list(to_numpy(log_probs))
    if lengths is not None and len(lengths) != len(items):
        raise ValueError(f"{len(lengths)} lengths for a batch of {len(items)} clips")
    return [
        frames(item, None if lengths is None else int(lengths[i])) for i, item in enumerate(items)
    ]
