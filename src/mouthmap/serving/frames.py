"""Frame sources for the streaming clients: a video file (decoded like offline, frame by
frame) or a camera (OpenCV), both as RGB uint8 frames, optionally paced in real time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mouthmap.data.media import MediaError


def video_frames(path: str | Path) -> tuple[float, Iterator[np.ndarray]]:
    """``(fps, frames)`` of a video file, decoded with PyAV exactly as
    :func:`mouthmap.data.media.probe_and_decode_video` does, but lazily."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file does not exist")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise MediaError(f"{path}: not a readable video container ({e})") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        container.close()
        raise MediaError(f"{path}: video stream has no frame rate")

    def gen() -> Iterator[np.ndarray]:
        n = 0
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, EOFError) as e:
            if not n:
                raise MediaError(f"{path}: no video frame could be decoded ({e})") from e
        finally:
            container.close()

    return float(rate), gen()


def camera_frames(index: int | str, fps: float = 25.0) -> tuple[float, Iterator[np.ndarray]]:
    """``(fps, frames)`` from an OpenCV capture device (``--webcam N``) or URL/file."""
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise MediaError(f"cannot open camera {index!r} (is it connected, and not in use?)")
    cap.set(cv2.CAP_PROP_FPS, fps)
    got = cap.get(cv2.CAP_PROP_FPS)
    rate = float(got) if got and 1 <= got <= 120 else fps

    def gen() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return rate, gen()


def paced(frames: Iterator[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """Yield no faster than ``fps`` (a file played as if it were a live camera)."""
    t0 = time.monotonic()
    for i, f in enumerate(frames):
        wait = t0 + i / fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield f
