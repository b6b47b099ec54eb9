"""The localiser interface and the registry that picks one by name (``prepare.localiser``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["LOCALISERS", "MouthLocaliser", "MouthTrack", "get_localiser"]


@dataclass
class MouthTrack:
    """Per-frame mouth position: what the ROI cropper needs and nothing more.

    ``centers`` are (x, y) pixels, ``widths`` the lip-corner distance in pixels;
    both are meaningless (NaN or stale) where ``found`` is False.
    """

    centers: np.ndarray  # (T, 2) float32
    widths: np.ndarray  # (T,) float32
    found: np.ndarray  # (T,) bool

    def __post_init__(self) -> None:
        self.centers = np.asarray(self.centers, dtype=np.float32).reshape(-1, 2)
        self.widths = np.asarray(self.widths, dtype=np.float32).reshape(-1)
        self.found = np.asarray(self.found, dtype=bool).reshape(-1)
        t = len(self.centers)
        if len(self.widths) != t or len(self.found) != t:
            raise ValueError(
                f"MouthTrack arrays disagree on length: centers {t}, "
                f"widths {len(self.widths)}, found {len(self.found)}"
            )

    def __len__(self) -> int:
        return len(self.found)

    @property
    def found_ratio(self) -> float:
        """Share of frames where the mouth was found (a data-quality metric)."""
        return float(self.found.mean()) if len(self) else 0.0

    @classmethod
    def empty(cls, n_frames: int) -> MouthTrack:
        """A track with nothing found, to be filled in frame by frame."""
        return cls(
            centers=np.full((n_frames, 2), np.nan, np.float32),
            widths=np.full(n_frames, np.nan, np.float32),
            found=np.zeros(n_frames, bool),
        )


@runtime_checkable
class MouthLocaliser(Protocol):
    """Anything that finds the mouth in every frame of a clip."""

    def locate(self, frames_rgb: np.ndarray) -> MouthTrack:
        """(T, H, W, 3) uint8 RGB frames -> a track of length T."""
        ...


# name -> "module:Class"; imported lazily so choosing "haar" never loads LiteRT.
LOCALISERS: dict[str, str] = {
    "mediapipe": "mouthmap.data.mouth.mediapipe_lite:MediaPipeLocaliser",
    "haar": "mouthmap.data.mouth.haar:HaarLocaliser",
}


def get_localiser(name: str, **kw: Any) -> MouthLocaliser:
    """Build the localiser registered under ``name`` with keyword options ``kw``."""
    try:
        target = LOCALISERS[name]
    except KeyError:
        known = ", ".join(sorted(LOCALISERS))
        raise ValueError(f"unknown mouth localiser {name!r}; known: {known}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**kw)
