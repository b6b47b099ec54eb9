"""Torch dataset over the prepared cache, with augmentation hooks and padding collation."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mouthmap import alphabet
from mouthmap.data import cache
from mouthmap.data.prepare import read_manifest

if TYPE_CHECKING:
    from mouthmap.config import TrainParams
    from mouthmap.data.corpus import Word

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --- augmentation hooks: (T, H, W) uint8 -> (T, H', W') uint8 ------------------------------


@dataclass(frozen=True)
class RandomCrop:
    size: int = 88

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _, h, w = x.shape
        top = int(rng.integers(0, h - self.size + 1))
        left = int(rng.integers(0, w - self.size + 1))
        return x[:, top : top + self.size, left : left + self.size]


@dataclass(frozen=True)
class CenterCrop:
    size: int = 88

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _, h, w = x.shape
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[:, top : top + self.size, left : left + self.size]


@dataclass(frozen=True)
class HorizontalFlip:
    p: float = 0.5

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x[:, :, ::-1] if rng.random() < self.p else x


@dataclass(frozen=True)
class TimeMask:
    """Replace up to ``max_frames`` consecutive frames with the clip mean, ``n`` times."""

    max_frames: int = 10
    n: int = 1

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = x.copy()
        fill = x.mean().astype(x.dtype)
        for _ in range(self.n):
            length = int(rng.integers(0, self.max_frames + 1))
            if length == 0 or length >= len(x):
                continue
            start = int(rng.integers(0, len(x) - length + 1))
            x[start : start + length] = fill
        return x


@dataclass(frozen=True)
class RandomAffine:
    """One small rotation, scaling and brightness/contrast change for the whole clip.

    The same warp for every frame keeps the motion, which is what is read; it varies
    head pose and lighting, which the 720 clips of one speaker barely do.
    """

    degrees: float = 0.0
    scale: float = 0.0  # the size changes by a factor in [1 - scale, 1 + scale]
    brightness: float = 0.0  # offset, a fraction of the 0..255 range, in [-b, b]
    contrast: float = 0.0  # gain in [1 - c, 1 + c] about the clip mean

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        out = x
        if self.degrees or self.scale:
            _, h, w = x.shape
            angle = float(rng.uniform(-self.degrees, self.degrees))
            zoom = float(rng.uniform(1 - self.scale, 1 + self.scale))
            m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, zoom)
            out = np.stack(
                [cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT) for f in x]
            )  # fmt: skip
        if self.brightness or self.contrast:
            gain = float(rng.uniform(1 - self.contrast, 1 + self.contrast))
            offset = 255.0 * float(rng.uniform(-self.brightness, self.brightness))
            mean = float(out.mean())
            out = np.clip((out.astype(np.float32) - mean) * gain + mean + offset, 0, 255)
            out = out.astype(x.dtype)
        return out


def train_transforms(tp: TrainParams | None = None) -> list[Transform]:
    """The training augmentations ``train`` asks for (the defaults without), in order."""
    from mouthmap.config import TrainParams

    tp = tp or TrainParams()
    out: list[Transform] = []
    if tp.rotate_degrees or tp.scale_jitter or tp.brightness or tp.contrast:
        out.append(RandomAffine(tp.rotate_degrees, tp.scale_jitter, tp.brightness, tp.contrast))
        # before the crop, so the reflected border mostly falls outside it
    out += [RandomCrop(tp.crop), HorizontalFlip(tp.flip_p)]
    if tp.time_mask_frames and tp.time_masks:
        out.append(TimeMask(tp.time_mask_frames, tp.time_masks))
    return out


def eval_transforms(crop: int = 88) -> list[Transform]:
    return [CenterCrop(crop)]


# --- word splicing: new sentences from the words of two clips -------------------------------


def splice_point(words: Sequence[Word], slot: int) -> int:
    """The first frame of word ``slot`` (0-based) when a clip is cut between it and the word
    before: the first frame whose centre lies past the middle of the pause between them."""
    from mouthmap.data.corpus import FRAME_UNITS

    middle = (words[slot - 1].end + words[slot].start) / 2
    return max(0, math.ceil((middle - FRAME_UNITS / 2) / FRAME_UNITS))


def splice(
    first: np.ndarray,
    first_words: Sequence[Word],
    second: np.ndarray,
    second_words: Sequence[Word],
    slot: int,
) -> tuple[np.ndarray, list[Word], int, int]:
    """``first``'s frames up to word ``slot``, then ``second``'s from word ``slot`` on.

    Both clips are GRID sentences (the same slots in the same order), so the result is one
    too, most likely a sentence neither clip says: ``(frames, its words, the frame where
    first is cut, the frame where second is cut)``. The words keep their own clip's times;
    the caller labels frames per part."""
    n = len(first_words)
    if len(second_words) != n or not 0 < slot < n:
        raise ValueError(f"cannot splice at word {slot} sentences of {n} and {len(second_words)}")
    cut_a = min(splice_point(first_words, slot), len(first))
    cut_b = min(splice_point(second_words, slot), len(second))
    frames = np.concatenate([first[:cut_a], second[cut_b:]])
    return frames, [*first_words[:slot], *second_words[slot:]], cut_a, cut_b


# --- dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalisation:
    """Mean/std of ROI pixels in [0, 1]; stored in the model package."""

    mean: float = 0.42
    std: float = 0.16


def normalisation_from_manifest(manifest: pd.DataFrame) -> Normalisation:
    """Pixel mean/std of the train clips, pooled from the per-clip statistics."""
    rows = manifest[(manifest["status"] == "ok") & (manifest["split"] == "train")]
    if rows.empty:
        return Normalisation()
    mean = float(rows["roi_mean"].mean())
    var = float((rows["roi_std"] ** 2).mean() + rows["roi_mean"].var(ddof=0))
    return Normalisation(mean / 255.0, math.sqrt(var) / 255.0)


@dataclass
class Sample:
    id: str
    video: torch.Tensor  # (1, T, H, W) float32, normalised
    target: torch.Tensor  # (L,) int64 label indices
    text: str
    mel: torch.Tensor | None = None  # (T_audio, n_mels) float32
    frame_labels: torch.Tensor | None = None  # (T,) int64 word class per frame (alignment)


class GridDataset(Dataset[Sample]):
    """Prepared GRID clips of some splits, less rejected and ``exclude``d (quarantined) ones."""

    def __init__(
        self,
        prepared_dir: str | Path,
        splits: Sequence[str] = ("train",),
        transforms: Sequence[Transform] | None = None,
        normalisation: Normalisation | None = None,
        with_audio: bool = False,
        seed: int = 0,
        manifest: pd.DataFrame | None = None,
        exclude: Collection[str] = (),
        limit: int | None = None,
        with_alignment: bool = False,
        splice_p: float = 0.0,
    ) -> None:
        self.prepared_dir = Path(prepared_dir)
        df = read_manifest(self.prepared_dir) if manifest is None else manifest
        keep = (df["status"] == "ok") & df["split"].isin(list(splits)) & ~df["id"].isin(exclude)
        self.rows = df[keep].reset_index(drop=True).iloc[:limit]  # limit: a data budget
        self.transforms = list(transforms or [])
        self.norm = normalisation or normalisation_from_manifest(df)
        self.with_audio = with_audio
        self.with_alignment = with_alignment  # per-frame word classes from the .align files
        # chance that a sample is two clips spliced at a word boundary (needs the alignments)
        self.splice_p = splice_p
        self.rng = np.random.default_rng(seed)

    def reseed(self, *key: int) -> None:
        """Start the augmentation stream afresh from ``key`` (the trainer: seed, rank, epoch)."""
        self.rng = np.random.default_rng(list(key))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row = self.rows.iloc[i]
        arrays = cache.read_arrays(self.prepared_dir / row["roi_path"])
        x, text = arrays["roi"], str(row["transcript"])
        words = self._words(row) if self.with_alignment or self.splice_p else None
        labels = self._frame_labels(words, len(x)) if self.with_alignment else None
        if self.splice_p and len(self.rows) > 1 and self.rng.random() < self.splice_p:
            x, text, labels = self._spliced(i, x, words, text, labels)
        for t in self.transforms:
            x = t(x, self.rng)
        video = (torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0 - self.norm.mean) / (
            self.norm.std
        )
        mel = None
        if self.with_audio:
            if "mel" not in arrays:
                raise ValueError(
                    f"{self.prepared_dir / row['roi_path']} has no audio features: the cache was"
                    " unpacked from a pack made without them (mouthmap data pack --audio)"
                )
            mel = torch.from_numpy(arrays["mel"].astype(np.float32))
        target = torch.tensor(alphabet.encode(text), dtype=torch.long)
        return Sample(str(row["id"]), video.unsqueeze(0), target, text, mel, labels)

    def _spliced(
        self,
        i: int,
        x: np.ndarray,
        words: list[Word] | None,
        text: str,
        labels: torch.Tensor | None,
    ) -> tuple[np.ndarray, str, torch.Tensor | None]:
        """This clip up to a random word boundary, another's from there on; unchanged when
        either alignment is unusable or the audio must stay in step with the video."""
        from mouthmap.data.corpus import transcript

        if self.with_audio:
            return x, text, labels
        j = int(self.rng.integers(0, len(self.rows) - 1))
        other = self.rows.iloc[j + (j >= i)]  # any clip but this one
        other_words = self._words(other) if words is not None else None
        if other_words is None or len(words) != len(other_words) or len(words) < 2:
            return x, text, labels
        y = cache.read_arrays(self.prepared_dir / other["roi_path"])["roi"]
        slot = int(self.rng.integers(1, len(words)))
        out, spliced, cut_a, cut_b = splice(x, words, y, other_words, slot)
        if labels is not None:
            labels = torch.cat([labels[:cut_a], self._frame_labels(other_words, len(y))[cut_b:]])
        return out, transcript(spliced), labels

    @staticmethod
    def _words(row: pd.Series) -> list[Word] | None:
        """The clip's spoken words from its .align file; ``None`` when it is gone or bad."""
        from mouthmap.data.corpus import AlignError, read_align

        try:
            return read_align(str(row.get("align", "")))
        except AlignError:
            return None

    @staticmethod
    def _frame_labels(words: list[Word] | None, frames: int) -> torch.Tensor:
        """Word class per frame (:func:`~mouthmap.data.corpus.frame_labels`); all ignored
        without an alignment."""
        from mouthmap.data.corpus import IGNORE_LABEL, frame_labels

        labels = frame_labels(words, frames) if words is not None else [IGNORE_LABEL] * frames
        return torch.tensor(labels, dtype=torch.long)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream (torch reseeds per epoch)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.rng = np.random.default_rng(info.seed % 2**32)


@dataclass
class Batch:
    ids: list[str]
    video: torch.Tensor  # (B, 1, T_max, H, W), zero padded
    video_lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (sum L,) concatenated, as CTC loss wants
    target_lengths: torch.Tensor  # (B,)
    texts: list[str]
    mel: torch.Tensor | None = None  # (B, T_audio_max, n_mels)
    mel_lengths: torch.Tensor | None = None
    frame_labels: torch.Tensor | None = None  # (B, T_max) word classes, IGNORE_LABEL padded


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad variable-length clips to the longest in the batch."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([s.video.shape[1] for s in samples])
    _, _, h, w = samples[0].video.shape
    video = torch.zeros(len(samples), 1, int(lengths.max()), h, w)
    for i, s in enumerate(samples):
        video[i, :, : s.video.shape[1]] = s.video
    mel = mel_lengths = None
    if all(s.mel is not None for s in samples):
        mel_lengths = torch.tensor([s.mel.shape[0] for s in samples])
        mel = torch.zeros(len(samples), int(mel_lengths.max()), samples[0].mel.shape[1])
        for i, s in enumerate(samples):
            mel[i, : s.mel.shape[0]] = s.mel
    labels = None
    if all(s.frame_labels is not None for s in samples):
        from mouthmap.data.corpus import IGNORE_LABEL

        labels = torch.full((len(samples), int(lengths.max())), IGNORE_LABEL, dtype=torch.long)
        for i, s in enumerate(samples):
            labels[i, : len(s.frame_labels)] = s.frame_labels
    return Batch(
        ids=[s.id for s in samples],
        video=video,
        video_lengths=lengths,
        targets=torch.cat([s.target for s in samples]),
        target_lengths=torch.tensor([len(s.target) for s in samples]),
        texts=[s.text for s in samples],
        mel=mel,
        mel_lengths=mel_lengths,
        frame_labels=labels,
    )
