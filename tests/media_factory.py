"""Make broken or unusual videos from real clips, for bad-input tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def reencode(src: Path, dst: Path, fps: int = 25, keep_audio: bool = True) -> Path:
    """Re-encode ``src``'s frames at ``fps`` (same frames, new rate), optionally without audio."""
    with av.open(str(src)) as inp:
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    audio = None
    if keep_audio:
        with av.open(str(src)) as inp:
            audio = np.concatenate([f.to_ndarray() for f in inp.decode(audio=0)], axis=1)
    _write(dst, frames, fps, audio)
    return dst


def noise_video(dst: Path, n_frames: int = 75, fps: int = 25) -> Path:
    """A face-less clip: smooth grey noise, with a silent audio track."""
    rng = np.random.default_rng(0)
    frames = [
        np.repeat(rng.integers(90, 160, (288, 360, 1), dtype=np.uint8), 3, axis=2)
        for _ in range(n_frames)
    ]
    _write(dst, frames, fps, np.zeros((1, 16000 * n_frames // fps), dtype=np.float32))
    return dst


def _write(dst: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None) -> None:
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        a_stream = None
        if audio is not None:
            a_stream = out.add_stream("aac", rate=16000)
            a_stream.layout = "mono"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if a_stream is not None:
            af = av.AudioFrame.from_ndarray(
                audio[:1].astype(np.float32), format="fltp", layout="mono"
            )
            af.sample_rate = 16000
            for packet in a_stream.encode(af):
                out.mux(packet)
            for packet in a_stream.encode():
                out.mux(packet)
