"""OpenCV Haar-cascade fallback localiser.

Weaker than the MediaPipe localiser, and kept only as a dependency-light
fallback: it sees a frontal face box, not the lips, so the mouth is placed by
face proportions. It misses turned or tilted faces, jitters more from frame to
frame (smoothing hides part of it), cannot follow an open or off-centre mouth,
and is about 5x slower per frame (no tracking). Needs ``opencv-python-headless<5``
(5.x dropped ``CascadeClassifier`` and the cascade files).
"""

from __future__ import annotations

import cv2
import numpy as np

from mouthmap.data.media import to_gray
from mouthmap.data.mouth.base import MouthTrack

__all__ = ["HaarLocaliser"]

# Mouth placement inside the cascade's face box, measured against the MediaPipe
# lip landmarks on GRID s1 (135 frames of 9 clips, std in brackets): centre at
# x = 0.52 (0.006) and y = 0.82 (0.010) of the box, i.e. in its lower third;
# lip-corner width = 0.28 (0.011) of the box width. (Half the box width would
# overstate the width, and so the ROI, by 1.8x.)
MOUTH_X = 0.52
MOUTH_Y = 0.82
MOUTH_WIDTH = 0.28


class HaarLocaliser:
    """Mouth = a fixed point of the largest frontal-face box in each frame."""

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.15,
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError("this OpenCV build has no CascadeClassifier; use opencv<5")
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if self._cascade.empty():
            raise RuntimeError(f"could not load Haar cascade {cascade!r}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction

    def locate(self, frames_rgb: np.ndarray) -> MouthTrack:
        gray = to_gray(frames_rgb)
        track = MouthTrack.empty(len(gray))
        for i, frame in enumerate(gray):
            side = max(1, int(self.min_face_fraction * min(frame.shape)))
            faces = self._cascade.detectMultiScale(
                frame,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(side, side),
            )
            if len(faces) == 0:
                continue
            x, y, w, h = max(faces, key=lambda r: r[2] * r[3])
            track.centers[i] = (x + MOUTH_X * w, y + MOUTH_Y * h)
            track.widths[i] = MOUTH_WIDTH * w
            track.found[i] = True
        return track
