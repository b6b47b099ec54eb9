"""Per-request features the drift monitor compares with the training reference.

One request is one clip: its mouth ROIs (the model's input) and, when the model ran, its
per-frame log-probabilities. Every feature is one number per request, cheap enough to compute
on the serving path (about 2 ms for a 3 s clip on one core), and each one moves under a shift
a user would notice: a darker room (brightness, contrast), a soft or out-of-focus camera
(sharpness), sensor noise or compression (sharpness, motion energy), other clip lengths, a
model that is less sure of itself (confidence, entropy, blank share) or that sees inputs
unlike its training data (embedding statistics).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

# Column order of the reference and of every window; the schema the drift check expects.
IMAGE_FEATURES = (
    "brightness",  # mean ROI grey level (0-255)
    "contrast",  # mean per-frame standard deviation of the grey levels (RMS contrast)
    "sharpness",  # mean per-frame variance of the Laplacian
    "motion_energy",  # mean absolute grey-level change between consecutive frames
    "clip_seconds",  # clip length
)
TRACK_FEATURES = ("mouth_found",)  # share of frames where the localiser found the mouth
MODEL_FEATURES = (
    "confidence",  # mean over frames of the most likely symbol's probability
    "entropy",  # mean per-frame entropy of the output distribution (nats)
    "blank_share",  # share of frames whose most likely symbol is the CTC blank
    "emb_mean",  # statistics of the per-frame embedding (the log-probability vector by
    "emb_std",  # default, or the encoder features when the serving path has them)
    "emb_norm",
    "emb_delta",  # mean change of the embedding between frames (how much the model "moves")
)
ALL_FEATURES = IMAGE_FEATURES + TRACK_FEATURES + MODEL_FEATURES
CAPTION = {
    "brightness": "mouth-ROI brightness (mean grey level)",
    "contrast": "mouth-ROI contrast (per-frame std of grey levels)",
    "sharpness": "mouth-ROI sharpness (variance of the Laplacian)",
    "motion_energy": "motion energy (mean |frame - previous frame|)",
    "clip_seconds": "clip length (s)",
    "mouth_found": "share of frames with a mouth found",
    "confidence": "decoder confidence (mean max probability per frame)",
    "entropy": "output entropy per frame (nats)",
    "blank_share": "share of frames decoded as CTC blank",
    "emb_mean": "embedding mean",
    "emb_std": "embedding standard deviation",
    "emb_norm": "embedding L2 norm per frame",
    "emb_delta": "embedding change between frames",
}


class FeatureError(ValueError):
    """Input a feature cannot be computed from (wrong shape, no frames)."""


def image_features(rois: np.ndarray, fps: float = 25.0) -> dict[str, float]:
    """Brightness, contrast, sharpness, motion energy and length of ``(T, H, W)`` grey ROIs.

    Accepts uint8 (0-255) or float in [0, 1] (as the model sees them before normalisation).
    """
    x = np.asarray(rois)
    if x.ndim != 3 or x.shape[0] == 0:
        raise FeatureError(f"expected (T, H, W) grey ROIs with T >= 1, got shape {x.shape}")
    x = x.astype(np.float32) * (255.0 if x.dtype.kind == "f" and x.max() <= 1.0 else 1.0)
    lap = np.array([cv2.Laplacian(f, cv2.CV_32F, ksize=1).var() for f in x])
    motion = float(np.abs(np.diff(x, axis=0)).mean()) if len(x) > 1 else 0.0
    return {
        "brightness": float(x.mean()),
        "contrast": float(x.reshape(len(x), -1).std(axis=1).mean()),
        "sharpness": float(lap.mean()),
        "motion_energy": motion,
        "clip_seconds": float(len(x) / fps),
    }


def model_features(log_probs: np.ndarray, embeddings: np.ndarray | None = None) -> dict[str, float]:
    """Confidence, entropy and blank share of ``(T, C)`` log-probabilities, and statistics of
    the per-frame embeddings ``(T, D)`` (the log-probabilities themselves when none are given)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim == 3 and lp.shape[0] == 1:
        lp = lp[0]
    if lp.ndim != 2 or lp.shape[0] == 0:
        raise FeatureError(f"expected (T, C) log-probabilities, got shape {lp.shape}")
    p = np.exp(lp)
    emb = lp if embeddings is None else np.asarray(embeddings, dtype=np.float64)
    if emb.ndim == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise FeatureError(f"expected (T, D) embeddings, got shape {emb.shape}")
    emb = np.maximum(emb, -30.0)  # log(0) from a saturated softmax would make every stat -inf
    delta = np.linalg.norm(np.diff(emb, axis=0), axis=1).mean() if len(emb) > 1 else 0.0
    return {
        "confidence": float(p.max(axis=1).mean()),
        "entropy": float(-(p * np.maximum(lp, -30.0)).sum(axis=1).mean()),
        "blank_share": float((lp.argmax(axis=1) == 0).mean()),
        "emb_mean": float(emb.mean()),
        "emb_std": float(emb.std()),
        "emb_norm": float(np.linalg.norm(emb, axis=1).mean()),
        "emb_delta": float(delta),
    }


def request_features(
    rois: np.ndarray,
    log_probs: np.ndarray | None = None,
    *,
    fps: float = 25.0,
    mouth_found: float | np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """All features of one request. Model features are present only when ``log_probs`` is
    given; ``mouth_found`` is a share or the per-frame ``found`` flags of the mouth track."""
    out = image_features(rois, fps)
    if mouth_found is not None:
        found = np.asarray(mouth_found, dtype=np.float64)
        out["mouth_found"] = float(found.mean()) if found.ndim else float(found)
    if log_probs is not None:
        out.update(model_features(log_probs, embeddings))
    return out


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """Drop non-finite numbers (JSON has no NaN) so a sink never writes an unreadable line."""
    return {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}
