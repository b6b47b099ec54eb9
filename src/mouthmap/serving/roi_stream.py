"""Mouth ROIs from a live stream of frames, equal to the offline ROIs of the whole clip.

Offline (`mouthmap transcribe`, `data prepare`) the mouth track of a clip is located,
gaps are interpolated, the track is smoothed with a centred moving average and then
cropped. A centred window needs ``smooth_frames // 2`` frames after the one it smooths,
and a gap is only filled once the mouth is seen again, so a streamed frame's ROI is
*final* once the mouth has been found at least that many frames later. Up to then it is
held back; at the end of the stream the rest is cropped as offline (edge padding).

The smoothing is computed over the track's prefix up to the last found frame with the
very functions used offline: a moving average via a cumulative sum depends only on the
values before it, so the prefix gives bit-identical results (tested against
:func:`mouthmap.data.roi.extract_mouth_rois`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from mouthmap.data.media import to_gray
from mouthmap.data.mouth.base import MouthLocaliser, MouthTrack
from mouthmap.data.roi import NoMouthError, crop_rois, smooth_track

__all__ = ["FrameLocaliser", "NoMouthError", "StreamingRoiExtractor", "prepare_settings"]


def prepare_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The package's ROI preparation (as :class:`~mouthmap.runtime.transcriber.Transcriber`)."""
    prep = meta.get("prepare", {})
    return {
        "localiser": prep.get("localiser", "mediapipe"),
        "size": int(prep.get("roi_size", 96)),
        "scale": float(prep.get("roi_scale", 1.8)),
        "smooth_frames": int(prep.get("smooth_frames", 7)),
    }


class FrameLocaliser:
    """A localiser driven one frame at a time, keeping its tracking state between frames.

    The MediaPipe localiser follows the face from frame to frame (``track_frame``); any other
    localiser is asked about each frame on its own, which is what its ``locate`` does too.
    """

    def __init__(self, localiser: MouthLocaliser) -> None:
        self.localiser = localiser
        self._roi = None
        self._stepper = getattr(localiser, "track_frame", None)

    def push(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Mouth centre (2,), width and found flag of the next frame."""
        if self._stepper is None:
            t = self.localiser.locate(frame_rgb[None])
            return t.centers[0], float(t.widths[0]), bool(t.found[0])
        from mouthmap.data.mouth.mediapipe_lite import mouth_from_landmarks

        pts, _, self._roi, _ = self._stepper(frame_rgb, self._roi)
        if pts is None:
            return np.full(2, np.nan, np.float32), float("nan"), False
        t = mouth_from_landmarks(pts[None], np.ones(1, bool))
        return t.centers[0], float(t.widths[0]), True


class StreamingRoiExtractor:
    """``push`` frames as they are captured, get back the ROIs that became final.

    ``max_pending`` bounds the frames held back while no mouth is in view (a camera
    pointed at a wall must not fill the memory); past it :class:`NoMouthError` is raised.
    """

    def __init__(
        self,
        localiser: MouthLocaliser | str = "mediapipe",
        size: int = 96,
        scale: float = 1.8,
        smooth_frames: int = 7,
        max_pending: int = 250,
    ) -> None:
        if isinstance(localiser, str):
            from mouthmap.data.mouth import get_localiser

            localiser = get_localiser(localiser)
        self.frames = FrameLocaliser(localiser)
        self.size, self.scale, self.window = size, scale, smooth_frames
        self.after = smooth_frames // 2  # frames after t that the centred window reads
        self.max_pending = max_pending
        self._centers: list[np.ndarray] = []
        self._widths: list[float] = []
        self._found: list[bool] = []
        self._last_found = -1
        self._gray: deque[np.ndarray] = deque()  # frames not yet cropped, from index `emitted`
        self.emitted = 0
        self._shape: tuple[int, int] | None = None

    @classmethod
    def for_package(cls, meta: dict[str, Any], **kw: Any) -> StreamingRoiExtractor:
        return cls(**{**prepare_settings(meta), **kw})

    @property
    def seen(self) -> int:
        return len(self._found)

    @property
    def found_ratio(self) -> float:
        return float(np.mean(self._found)) if self._found else 0.0

    def _check(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}"
            )
        if self._shape is None:
            self._shape = frame.shape[:2]
        elif frame.shape[:2] != self._shape:
            raise ValueError(
                f"frame {self.seen} is {frame.shape[1]}x{frame.shape[0]}, the stream's earlier "
                f"frames are {self._shape[1]}x{self._shape[0]}"
            )
        return frame

    def push(self, frame_rgb: np.ndarray) -> np.ndarray:
        """Locate the mouth in one (H, W, 3) uint8 RGB frame -> (k, size, size) final ROIs."""
        frame = self._check(frame_rgb)
        centre, width, found = self.frames.push(frame)
        self._centers.append(np.asarray(centre, np.float32))
        self._widths.append(width)
        self._found.append(found)
        if found:
            self._last_found = self.seen - 1
        self._gray.append(to_gray(frame[None])[0])
        out = self._crop_until(self._last_found - self.after, self._last_found + 1)
        if len(self._gray) > self.max_pending:
            raise NoMouthError(
                f"no mouth found in the last {len(self._gray)} frames (frames "
                f"{self.emitted}-{self.seen - 1}); is a face in view?"
            )
        return out

    def finish(self) -> np.ndarray:
        """The ROIs still held back, cropped as the offline path would at a clip's end."""
        if not self._found:
            return np.zeros((0, self.size, self.size), np.uint8)
        if self._last_found < 0:
            raise NoMouthError(f"no mouth found in any of the {self.seen} frames")
        return self._crop_until(self.seen - 1, self.seen)

    def _crop_until(self, last: int, prefix: int) -> np.ndarray:
        """Crop frames ``emitted..last`` using the smoothed track of the first ``prefix``."""
        if last < self.emitted or prefix <= 0 or self._last_found < 0:
            return np.zeros((0, self.size, self.size), np.uint8)
        track = MouthTrack(
            centers=np.stack(self._centers[:prefix]),
            widths=np.asarray(self._widths[:prefix], np.float32),
            found=np.asarray(self._found[:prefix], bool),
        )
        smooth = smooth_track(track, self.window)
        n = last - self.emitted + 1
        gray = np.stack([self._gray.popleft() for _ in range(n)])
        part = MouthTrack(
            centers=smooth.centers[self.emitted : last + 1],
            widths=smooth.widths[self.emitted : last + 1],
            found=smooth.found[self.emitted : last + 1],
        )
        self.emitted = last + 1
        return crop_rois(gray, part, size=self.size, scale=self.scale)
