"""Raw video in, text out: the training ROI preparation, ONNX Runtime, CTC decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.package import ModelPackage

MIN_FRAMES = 8  # under a third of a second there is nothing to read


class TranscribeError(ValueError):
    """A video could not be transcribed; the message names the file and the cause."""


@dataclass
class Transcript:
    path: str
    text: str
    frames: int
    seconds: float  # duration of the video
    decoder: str
    elapsed_ms: float
    mouth_found: float  # share of frames where the mouth was found

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Transcriber:
    def __init__(
        self,
        package: str | Path | ModelPackage,
        decoder: str = "beam",
        provider: str = "cpu",
        threads: int | None = None,
        model_file: str | None = None,
    ) -> None:
        """``model_file``: another ONNX file of the package (e.g. ``model_fp32.onnx``) instead of
        the deployable ``model.onnx`` (INT8 once quantized)."""
        from mouthmap.data.mouth import get_localiser
        from mouthmap.runtime.runner import OnnxRunner

        self.package = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"unknown decoder {decoder!r}: use greedy or beam")
        self.decoder_name = decoder
        path = self.package.root / model_file if model_file else self.package.model_path
        self.runner = OnnxRunner(path, provider=provider, threads=threads)
        self.session = self.runner.session
        prep = self.package.meta.get("prepare", {})
        self.localiser = get_localiser(prep.get("localiser", "mediapipe"))
        self.roi_size = int(prep.get("roi_size", 96))
        self.roi_scale = float(prep.get("roi_scale", 1.8))
        self.smooth_frames = int(prep.get("smooth_frames", 7))
        self.crop = int(self.package.meta["input"]["height"])
        self._beam = None
        if decoder == "beam":
            from mouthmap.decode.beam import BeamDecoder

            settings = self.package.meta.get("decoder", {})
            self._beam = BeamDecoder(self.package.lm_dir, **settings)

    def log_probs(self, rois: np.ndarray) -> np.ndarray:
        """(T, 96, 96) uint8 ROIs -> (T, C) log-probabilities."""
        return self.outputs(rois)[0]

    def outputs(self, rois: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(T, 96, 96) uint8 ROIs -> ((T, C) log-probs, (T, K) word log-probs or None when
        the model has no word head)."""
        off = (rois.shape[1] - self.crop) // 2
        x = rois[:, off : off + self.crop, off : off + self.crop].astype(np.float32) / 255.0
        return self.runner.clip_all((x - self.package.mean) / self.package.std)

    def decode(self, log_probs: np.ndarray, word_log_probs: np.ndarray | None = None) -> str:
        if self._beam is not None:
            return self._beam.decode(log_probs, word_log_probs=word_log_probs)
        from mouthmap.decode.greedy import greedy_decode

        return greedy_decode(log_probs)

    def transcribe(self, path: str | Path) -> Transcript:
        from mouthmap.data import media, roi

        t0 = time.perf_counter()
        p = Path(path)
        if not p.is_file():
            raise TranscribeError(f"{p}: no such file")
        try:
            clip = media.probe_and_decode_video(p)
        except media.MediaError as e:
            raise TranscribeError(str(e)) from None
        n = len(clip.frames)
        if n < MIN_FRAMES:
            raise TranscribeError(
                f"{p}: only {n} frames ({n / clip.fps:.2f} s); need at least {MIN_FRAMES}"
            )
        try:
            rois, track = roi.extract_mouth_rois(
                clip.frames, self.localiser, size=self.roi_size, scale=self.roi_scale,
                smooth_frames=self.smooth_frames,
            )  # fmt: skip
        except roi.NoMouthError:
            raise TranscribeError(f"{p}: no mouth found in any of its {n} frames") from None
        text = self.decode(*self.outputs(rois))
        return Transcript(
            path=str(p), text=text, frames=n, seconds=round(n / clip.fps, 3),
            decoder=self.decoder_name, elapsed_ms=round(1000 * (time.perf_counter() - t0), 1),
            mouth_found=round(float(np.mean(track.found)), 4),
        )  # fmt: skip
