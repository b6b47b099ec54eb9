"""Mouth regions of interest: fill gaps in the track, smooth it, crop.

Per-frame landmarks jitter by a pixel or two; a ROI that shakes with them adds
motion the lip-reading model would have to learn to ignore, so the track is
smoothed over a few frames before cropping. The crop side follows the mouth
width, so ROIs are scale-normalised across speakers and distances.
"""

from __future__ import annotations

import cv2
import numpy as np

from mouthmap.data.media import to_gray
from mouthmap.data.mouth.base import MouthLocaliser, MouthTrack

__all__ = ["NoMouthError", "crop_rois", "extract_mouth_rois", "smooth_track"]


class NoMouthError(ValueError):
    """No frame of a clip had a mouth, so there is nothing to crop."""


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0, edge-padded so the length is kept."""
    if window <= 1 or len(x) == 0:
        return x.copy()
    before, after = (window - 1) // 2, window // 2
    pad = [(before, after)] + [(0, 0)] * (x.ndim - 1)
    padded = np.pad(x.astype(np.float64), pad, mode="edge")
    csum = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), padded]), axis=0)
    return ((csum[window:] - csum[:-window]) / window).astype(x.dtype)


def smooth_track(track: MouthTrack, window: int) -> MouthTrack:
    """Interpolate frames without a mouth from found neighbours, then smooth.

    Gaps at the ends take the nearest found value. ``found`` keeps the
    localiser's flags, so callers can still tell measured frames from filled ones.
    """
    found = track.found & np.isfinite(track.widths) & np.isfinite(track.centers).all(1)
    if not found.any():
        raise NoMouthError(f"no mouth found in any of the {len(track)} frames")
    t = np.arange(len(track))
    idx = np.flatnonzero(found)
    filled = np.stack(
        [
            np.interp(t, idx, track.centers[idx, 0]),
            np.interp(t, idx, track.centers[idx, 1]),
            np.interp(t, idx, track.widths[idx]),
        ],
        axis=1,
    ).astype(np.float32)
    smooth = _moving_average(filled, window)
    return MouthTrack(centers=smooth[:, :2], widths=smooth[:, 2], found=track.found.copy())


def crop_rois(
    frames_gray: np.ndarray, track: MouthTrack, size: int = 96, scale: float = 1.8
) -> np.ndarray:
    """Square crops of side ``scale * width`` centred on the mouth -> (T, size, size) uint8.

    Parts of the square outside the image repeat the border pixels, so a mouth
    near the edge still gives a full-size ROI. ``track`` must be complete
    (see :func:`smooth_track`).
    """
    if frames_gray.ndim != 3:
        raise ValueError(f"expected (T, H, W) grayscale frames, got shape {frames_gray.shape}")
    if len(frames_gray) != len(track):
        raise ValueError(f"{len(frames_gray)} frames but a track of {len(track)}")
    if not (np.isfinite(track.centers).all() and np.isfinite(track.widths).all()):
        raise ValueError("track has missing frames; run smooth_track first")
    out = np.empty((len(frames_gray), size, size), np.uint8)
    _, h, w = frames_gray.shape
    for i, (frame, (cx, cy), width) in enumerate(
        zip(frames_gray, track.centers, track.widths, strict=True)
    ):
        side = max(2, round(scale * float(width)))
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        x1, y1 = x0 + side, y0 + side
        pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
        patch = frame[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        if patch.size == 0:  # the square lies wholly outside: replicate the nearest edge pixel
            patch = frame[
                min(max(y0, 0), h - 1) : min(max(y0, 0), h - 1) + 1,
                min(max(x0, 0), w - 1) : min(max(x0, 0), w - 1) + 1,
            ]
            pads = (0, side - 1, 0, side - 1)
        if any(pads):
            patch = cv2.copyMakeBorder(patch, *pads, borderType=cv2.BORDER_REPLICATE)
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def extract_mouth_rois(
    frames_rgb: np.ndarray,
    localiser: MouthLocaliser,
    size: int = 96,
    scale: float = 1.8,
    smooth_frames: int = 7,
) -> tuple[np.ndarray, MouthTrack]:
    """Locate, smooth and crop: (T, size, size) uint8 ROIs and the raw (unsmoothed) track.

    The raw track is returned for data-quality checks (share of frames found).
    """
    raw = localiser.locate(frames_rgb)
    smooth = smooth_track(raw, smooth_frames)
    return crop_rois(to_gray(frames_rgb), smooth, size=size, scale=scale), raw
