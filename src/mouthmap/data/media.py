"""Video and audio decoding with PyAV.

Real corpora hold damaged files (truncated downloads, broken macroblocks), so
decoding keeps every frame it can and only fails when nothing usable is left.
Every failure is a ``MediaError`` whose message names the file and the cause, so
a data-validation report can point at the clip to fix or drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

__all__ = ["MediaError", "VideoClip", "decode_audio", "probe_and_decode_video", "to_gray"]


class MediaError(ValueError):
    """A media file that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class VideoClip:
    """Decoded RGB frames of one clip, plus the frame rate the models rely on."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    path: Path

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps


def _open(path: Path) -> av.container.InputContainer:
    import av  # imported where files are decoded: the proxy image converts frames only

    if not path.exists():
        raise MediaError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable video/audio container ({exc})") from exc


def probe_and_decode_video(path: str | Path) -> VideoClip:
    """Decode all frames of the first video stream as RGB.

    A stream that breaks part-way (truncated file, corrupt packets) yields the
    frames decoded before the break, with a warning; zero frames is an error.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise MediaError(f"{path}: video stream has no frame rate")
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
        except (av.FFmpegError, EOFError) as exc:
            if not frames:
                raise MediaError(f"{path}: no video frame could be decoded ({exc})") from exc
            log.warning("%s: decoding stopped after %d frames: %s", path, len(frames), exc)
    if not frames:
        raise MediaError(f"{path}: no video frame could be decoded (truncated or corrupt file)")
    return VideoClip(frames=np.stack(frames), fps=float(rate), path=path)


def decode_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream to float32 mono in [-1, 1] at ``sample_rate``.

    Resampling here (not in the feature code) means features never depend on the
    source encoding's rate or channel layout.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, EOFError) as exc:
            if not chunks:
                raise MediaError(f"{path}: no audio could be decoded ({exc})") from exc
            log.warning("%s: audio decoding stopped early: %s", path, exc)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise MediaError(f"{path}: no audio could be decoded (truncated or corrupt file)")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    return np.clip(audio, -1.0, 1.0)


def to_gray(frames: np.ndarray) -> np.ndarray:
    """RGB (T, H, W, 3) uint8 -> luma (T, H, W) uint8 (BT.601, as the ROI models expect)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) RGB frames, got shape {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        return np.zeros((0, h, w), np.uint8)
    flat = np.ascontiguousarray(frames, dtype=np.uint8).reshape(t * h, w, 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(t, h, w)
