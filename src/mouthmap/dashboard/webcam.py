"""The webcam on the Read page: a small Streamlit component (``webcam/index.html``, plain
JS) that records a few seconds from the browser camera at exactly 25 fps and hands the
frames back; they are saved as an MP4 and read like any other clip.

Streamlit's own ``st.camera_input`` takes single photos, which cannot be lip-read; a WebRTC
component would stream, but needs aiortc's ICE to reach the browser. The live camera
through Triton is `mouthmap proxy`'s page (README, Serving).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.dashboard.inputs import save_upload

__all__ = ["frames_from_value", "save_recording", "webcam_recorder"]

_COMPONENT = None
MAX_FRAMES = 25 * 20  # 20 s


def _component():
    global _COMPONENT
    if _COMPONENT is None:
        import streamlit.components.v1 as components

        _COMPONENT = components.declare_component(
            "mouthmap_webcam", path=str(Path(__file__).with_name("webcam"))
        )
    return _COMPONENT


def frames_from_value(value: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The component's value (base64 JPEG frames) -> ``(T, H, W, 3)`` RGB and the frame rate;
    ValueError on anything else."""
    import cv2

    raw = value.get("frames") if isinstance(value, dict) else None
    if not raw or not isinstance(raw, list):
        raise ValueError("the camera sent no frames")
    if len(raw) > MAX_FRAMES:
        raise ValueError(f"the camera sent {len(raw)} frames; at most {MAX_FRAMES} are read")
    frames = []
    for i, b64 in enumerate(raw):
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"camera frame {i} is not a JPEG image")
        frames.append(img[..., ::-1])
    if len({f.shape for f in frames}) != 1:
        raise ValueError("the camera frames differ in size")
    return np.stack(frames), float(value.get("fps") or 25.0)


def save_recording(value: dict[str, Any], directory: Path | None = None) -> Path:
    """The recording as an H.264 MP4 file (content-addressed, so reruns reuse it)."""
    from mouthmap.explain.overlay import encode_mp4

    frames, fps = frames_from_value(value)
    return save_upload("webcam.mp4", encode_mp4(frames, fps), directory)


def webcam_recorder(seconds: float = 3.0, key: str | None = None, **flags: Any) -> Path | None:
    """The component on the page; the last recording's MP4 path, or None before one.
    ``flags`` (``autostart``, ``autorecord``) are for tests driving a fake camera."""
    import streamlit as st

    value = _component()(
        seconds=seconds, fps=25, width=360, height=288, key=key, default=None, **flags
    )
    if value is None:
        st.caption("Start the camera, then Record: the clip is read like an upload.")
        return None
    try:
        return save_recording(value)
    except ValueError as e:
        st.error(f"Webcam recording unusable: {e}")
        return None
