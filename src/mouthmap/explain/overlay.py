"""Pictures of what the model saw: the mouth ROI marked on the video, saliency as a heat
overlay on the ROI, and both encoded as MP4 (H.264, plays in every browser) or GIF."""

from __future__ import annotations

import io

import cv2
import numpy as np

from mouthmap.data.mouth.base import MouthTrack

__all__ = ["draw_rois", "encode_gif", "encode_mp4", "heat_overlay", "roi_boxes"]


def roi_boxes(track: MouthTrack, scale: float) -> np.ndarray:
    """(T, 4) integer ``x0, y0, x1, y1`` of the square each ROI was cropped from (as
    :func:`mouthmap.data.roi.crop_rois` cuts it) from a complete (smoothed) track."""
    side = np.maximum(2, np.round(scale * track.widths))
    x0 = np.round(track.centers[:, 0] - side / 2)
    y0 = np.round(track.centers[:, 1] - side / 2)
    return np.stack([x0, y0, x0 + side, y0 + side], 1).astype(int)


def draw_rois(
    frames_rgb: np.ndarray, boxes: np.ndarray, found: np.ndarray | None = None
) -> np.ndarray:
    """Copies of the frames with each ROI square drawn: green where the mouth was found in
    that frame, orange where the track was filled in from its neighbours."""
    out = frames_rgb.copy()
    thick = max(1, round(frames_rgb.shape[2] / 240))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = (40, 220, 90) if found is None or found[i] else (255, 150, 0)
        cv2.rectangle(out[i], (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), colour, thick)
    return out


def heat_overlay(rois: np.ndarray, cam: np.ndarray, alpha: float = 0.45, scale: int = 2):
    """Grayscale ROIs ``(T, S, S)`` under a JET heat map of ``cam`` (same shape, in [0, 1]),
    enlarged ``scale`` times -> ``(T, S*scale, S*scale, 3)`` uint8 RGB. Cold parts of the map
    stay see-through, so the lips remain visible where the model did not look."""
    gray = np.repeat(rois[..., None], 3, axis=-1).astype(np.float32)
    heat = np.stack(
        [cv2.applyColorMap(np.uint8(255 * c), cv2.COLORMAP_JET)[..., ::-1] for c in cam]
    ).astype(np.float32)
    a = alpha * np.clip(cam, 0, 1)[..., None] ** 0.5
    mixed = ((1 - a) * gray + a * heat).round().clip(0, 255).astype(np.uint8)
    if scale != 1:
        size = (mixed.shape[2] * scale, mixed.shape[1] * scale)
        mixed = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_NEAREST) for f in mixed])
    return mixed


def _even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # yuv420p needs even sides
    return frames[:, :h, :w]


def encode_mp4(frames_rgb: np.ndarray, fps: float = 25.0) -> bytes:
    """H.264 MP4 (yuv420p, fast-start) of ``(T, H, W, 3)`` uint8 RGB frames."""
    import tempfile
    from pathlib import Path

    frames = _even(np.ascontiguousarray(frames_rgb))
    with tempfile.TemporaryDirectory(prefix="mouthmap-mp4-") as tmp:
        path = Path(tmp) / "clip.mp4"  # fast-start rewrites the file: it needs a real one
        _write_mp4(path, frames, fps)
        return path.read_bytes()


def _write_mp4(path, frames: np.ndarray, fps: float) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def encode_gif(frames_rgb: np.ndarray, fps: float = 25.0, loop: int = 0) -> bytes:
    """Animated GIF (loops forever by default) of ``(T, H, W, 3)`` uint8 RGB frames."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames_rgb]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=loop,
        disposal=2,
    )
    return buf.getvalue()
