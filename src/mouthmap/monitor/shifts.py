"""Input shifts a deployed lip reader meets: a darker room, a soft camera, a noisy sensor.

They act on decoded video frames (``(T, H, W, 3)`` RGB or ``(T, H, W)`` grey, uint8) before
the mouth is located, as the camera would, so the monitor is tested on what the serving path
really sees. Used to check that drift is caught and to measure how much shift it takes.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# Default severities: clearly visible to a person, not so strong that the mouth is lost.
DEFAULT_SEVERITY = {"dark": 0.5, "blur": 2.0, "noise": 12.0}


def darken(frames: np.ndarray, factor: float = 0.5, seed: int = 0) -> np.ndarray:
    """Scale the light by ``factor`` (0.5: one stop darker)."""
    return np.clip(frames.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def blur(frames: np.ndarray, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels (of the video frame), like a camera out of focus."""
    if sigma <= 0:
        return frames.copy()
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=sigma) for f in frames])


def noise(frames: np.ndarray, sigma: float = 12.0, seed: int = 0) -> np.ndarray:
    """Additive Gaussian sensor noise of ``sigma`` grey levels, new in every frame."""
    rng = np.random.default_rng(seed)
    noisy = frames.astype(np.float32) + rng.normal(0.0, sigma, frames.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


SHIFTS: dict[str, Callable[..., np.ndarray]] = {"dark": darken, "blur": blur, "noise": noise}


def apply_shift(frames: np.ndarray, kind: str, severity: float | None = None, seed: int = 0):
    """``frames`` shifted by the named shift at ``severity`` (its default when None)."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown shift {kind!r}; choose one of {', '.join(SHIFTS)}")
    value = DEFAULT_SEVERITY[kind] if severity is None else severity
    return SHIFTS[kind](frames, value, seed=seed)
