"""One clip read by the model, with everything the page shows about it: frames, the mouth
track and ROIs (the very preparation `mouthmap transcribe` runs), per-frame log-probs, the
transcript and the words' frame spans."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mouthmap.explain.alignment import AlignmentError, WordSpan, word_spans
from mouthmap.runtime.transcriber import MIN_FRAMES, TranscribeError, Transcriber

__all__ = ["ClipAnalysis", "analyse_clip", "analyse_frames"]


@dataclass
class ClipAnalysis:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    rois: np.ndarray  # (T, 96, 96) uint8
    boxes: np.ndarray  # (T, 4) x0, y0, x1, y1 of each ROI in the frame
    found: np.ndarray  # (T,) bool: mouth found in that frame (else filled in)
    log_probs: np.ndarray  # (T, C) of the package's deployable model
    text: str
    decoder: str
    elapsed_ms: float
    spans: list[WordSpan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    @property
    def mouth_found(self) -> float:
        return float(np.mean(self.found))


def analyse_frames(frames: np.ndarray, fps: float, transcriber: Transcriber, name: str):
    """RGB frames -> :class:`ClipAnalysis`; :class:`TranscribeError` with a clear message
    when the clip is too short or shows no face."""
    from mouthmap.data import roi
    from mouthmap.explain.overlay import roi_boxes

    t0 = time.perf_counter()
    n = len(frames)
    if n < MIN_FRAMES:
        raise TranscribeError(
            f"{name}: only {n} frames ({n / fps:.2f} s); need at least {MIN_FRAMES}"
        )
    tr = transcriber
    try:
        raw = tr.localiser.locate(frames)
        smooth = roi.smooth_track(raw, tr.smooth_frames)
    except roi.NoMouthError:
        raise TranscribeError(
            f"{name}: no face or mouth found in any of its {n} frames; lip reading needs a "
            "frontal face, well lit, within about 2 m of the camera"
        ) from None
    from mouthmap.data.media import to_gray

    rois = roi.crop_rois(to_gray(frames), smooth, size=tr.roi_size, scale=tr.roi_scale)
    log_probs = tr.log_probs(rois)
    text = tr.decode(log_probs)
    out = ClipAnalysis(
        name=name,
        frames=frames,
        fps=fps,
        rois=rois,
        boxes=roi_boxes(smooth, tr.roi_scale),
        found=raw.found.copy(),
        log_probs=log_probs,
        text=text,
        decoder=tr.decoder_name,
        elapsed_ms=1000 * (time.perf_counter() - t0),
    )
    try:
        out.spans = word_spans(log_probs, text)
    except AlignmentError as e:
        out.notes.append(f"words not aligned to frames: {e}")
    if out.mouth_found < 0.9:
        out.notes.append(
            f"the mouth was found in only {100 * out.mouth_found:.0f}% of the frames; the "
            "others were filled in from their neighbours (orange boxes)"
        )
    return out


def analyse_clip(path: str | Path, transcriber: Transcriber, name: str | None = None):
    """A video file -> :class:`ClipAnalysis`; :class:`TranscribeError` naming the cause when
    it is not a readable video, too short, or shows no face."""
    from mouthmap.data import media

    p = Path(path)
    label = name or p.name
    if not p.is_file():
        raise TranscribeError(f"{label}: no such file")
    try:
        clip = media.probe_and_decode_video(p)
    except media.MediaError as e:
        reason = str(e).replace(str(p), label)
        raise TranscribeError(f"not a video MouthMap can read: {reason}") from None
    return analyse_frames(clip.frames, clip.fps, transcriber, label)
