"""Prepare stage: video -> smoothed mouth-ROI sequence + log-mel audio features, cached.

Runs clips in parallel worker processes, skips clips whose sources and
parameters have not changed since they were prepared, records a rejection
(naming the file and the cause) for clips that cannot be used, and goes on with
the others. The manifest (one row per clip) is rebuilt from the per-clip
records at the end, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mouthmap.data import cache, corpus
from mouthmap.data.corpus import AlignError, Clip

PREPARE_VERSION = 1  # bump when the cached format or the algorithm changes

MANIFEST_COLUMNS = [
    "id", "speaker", "video", "align", "split", "status", "error",
    "n_frames", "fps", "width", "height", "audio_present", "audio_seconds",
    "align_ok", "transcript", "roi_found_frac", "roi_mean", "roi_std", "roi_min",
    "roi_max", "mel_frames", "roi_path", "seconds",
]  # fmt: skip


@dataclass(frozen=True)
class PrepareSettings:
    localiser: str = "mediapipe"
    roi_size: int = 96
    roi_scale: float = 1.8
    smooth_frames: int = 7
    audio_sample_rate: int = 16000
    n_mels: int = 80


@dataclass
class PrepareReport:
    total: int = 0
    prepared: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0
    frames: int = 0
    frames_missed: int = 0  # frames where the localiser found no mouth
    cache_bytes: int = 0
    manifest: Path | None = None

    @property
    def clips_per_second(self) -> float:
        return self.prepared / self.seconds if self.seconds > 0 else 0.0

    @property
    def miss_rate(self) -> float:
        return self.frames_missed / self.frames if self.frames else 0.0


def fingerprint(clip: Clip, settings: PrepareSettings) -> str:
    """Changes when the clip's files or the preparation parameters change."""
    parts: list[Any] = [PREPARE_VERSION, asdict(settings)]
    for p in (clip.video, clip.align):
        if p is not None and p.exists():
            st = p.stat()
            parts.append([p.name, st.st_size, st.st_mtime_ns])
        else:
            parts.append(None)
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


_LOCALISER = None  # one per worker process: loading the models costs more than a frame


def _worker_init(localiser: str) -> None:
    global _LOCALISER
    import cv2

    cv2.setNumThreads(1)
    from mouthmap.data.mouth import get_localiser

    _LOCALISER = get_localiser(localiser)


def prepare_clip(
    clip: Clip, split: str, out_dir: Path, settings: PrepareSettings
) -> dict[str, Any]:
    """Prepare one clip; never raises for bad data, returns its manifest row."""
    from mouthmap.data import audio_features, media, roi

    global _LOCALISER
    if _LOCALISER is None:
        _worker_init(settings.localiser)
    t0 = time.perf_counter()
    npz_path, rec_path = cache.clip_paths(out_dir, clip.id)
    row: dict[str, Any] = {c: None for c in MANIFEST_COLUMNS}
    row.update(
        id=clip.id, speaker=clip.speaker, video=str(clip.video), split=split,
        align=str(clip.align) if clip.align else "", status="ok", error="",
        n_frames=0, fps=0.0, width=0, height=0, audio_present=False, audio_seconds=0.0,
        align_ok=False, transcript="", roi_found_frac=0.0, mel_frames=0, roi_path="",
    )  # fmt: skip
    problems: list[str] = []
    try:
        if clip.align is None:
            raise AlignError(f"{clip.video.with_suffix('.align').name}: alignment file not found")
        row["transcript"] = corpus.transcript(corpus.read_align(clip.align))
        row["align_ok"] = True
    except AlignError as e:
        problems.append(str(e))

    arrays: dict[str, np.ndarray] = {}
    try:
        video = media.probe_and_decode_video(clip.video)
        row.update(n_frames=len(video.frames), fps=float(video.fps))
        row.update(height=int(video.frames.shape[1]), width=int(video.frames.shape[2]))
        try:
            rois, track = roi.extract_mouth_rois(
                video.frames, _LOCALISER, size=settings.roi_size,
                scale=settings.roi_scale, smooth_frames=settings.smooth_frames,
            )  # fmt: skip
            row["roi_found_frac"] = float(np.mean(track.found))
            row.update(
                roi_mean=float(rois.mean()), roi_std=float(rois.std()),
                roi_min=float(rois.min()), roi_max=float(rois.max()),
            )  # fmt: skip
            arrays.update(
                roi=rois, found=track.found.astype(bool),
                centers=track.centers.astype(np.float32), widths=track.widths.astype(np.float32),
            )  # fmt: skip
        except roi.NoMouthError as e:
            problems.append(f"{clip.video}: no mouth found ({e})")
    except media.MediaError as e:
        problems.append(str(e))

    if arrays:
        try:
            audio = media.decode_audio(clip.video, sample_rate=settings.audio_sample_rate)
            mel = audio_features.log_mel(audio, settings.audio_sample_rate, settings.n_mels)
            row.update(audio_present=True, audio_seconds=len(audio) / settings.audio_sample_rate)
            row["mel_frames"] = int(mel.shape[0])
            arrays["mel"] = mel.astype(np.float16)
        except media.MediaError as e:
            problems.append(str(e))
        cache.write_arrays(npz_path, **arrays)
        row["roi_path"] = str(npz_path.relative_to(out_dir))
    else:
        npz_path.unlink(missing_ok=True)  # a stale cache entry must not outlive its source

    if problems:
        row.update(status="rejected", error="; ".join(problems))
    row["seconds"] = round(time.perf_counter() - t0, 4)
    cache.write_record(rec_path, {"fingerprint": fingerprint(clip, settings), "row": row})
    return row


def _is_up_to_date(clip: Clip, out_dir: Path, settings: PrepareSettings) -> dict[str, Any] | None:
    npz_path, rec_path = cache.clip_paths(out_dir, clip.id)
    rec = cache.read_record(rec_path)
    if not rec or rec.get("fingerprint") != fingerprint(clip, settings):
        return None
    if rec["row"].get("roi_path") and not npz_path.exists():
        return None
    return rec["row"]


def prepare(
    clips: list[Clip],
    splits: dict[str, str],
    out_dir: Path,
    settings: PrepareSettings,
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Prepare every clip into ``out_dir`` and write ``out_dir/manifest.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(total=len(clips))
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Clip] = []
    for clip in clips:
        row = None if force else _is_up_to_date(clip, out_dir, settings)
        if row is None:
            todo.append(clip)
        else:
            rows[clip.id] = row
    report.skipped = len(rows)

    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="prepare", unit="clip", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for clip in todo:
                rows[clip.id] = prepare_clip(clip, splits.get(clip.id, ""), out_dir, settings)
                bar.update()
        else:
            # spawn, not fork: forking a process that runs threads (tqdm's monitor, GE,
            # MLflow) can deadlock the child on a lock held at fork time
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(settings.localiser,),
            ) as pool:  # fmt: skip
                futures = {
                    pool.submit(prepare_clip, c, splits.get(c.id, ""), out_dir, settings): c
                    for c in todo
                }
                try:
                    for fut in as_completed(futures):
                        row = fut.result()
                        rows[row["id"]] = row
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
        report.prepared = len(rows) - report.skipped
        report.manifest = write_manifest(out_dir, [rows[c.id] for c in clips if c.id in rows])

    for clip in clips:
        row = rows[clip.id]
        if row["status"] != "ok":
            report.rejected.append((clip.id, row["error"]))
        n = int(row.get("n_frames") or 0)
        if row.get("roi_path"):
            report.frames += n
            report.frames_missed += round(n * (1.0 - float(row["roi_found_frac"])))
    report.cache_bytes = sum(
        f.stat().st_size for f in (out_dir / cache.CLIPS_DIR).glob("*") if f.is_file()
    )
    return report


def write_manifest(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    path = out_dir / cache.MANIFEST
    cache.atomic_write_bytes(path, df.to_csv(index=False).encode())
    return path


def read_manifest(prepared_dir: Path) -> pd.DataFrame:
    path = prepared_dir / cache.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `mouthmap data prepare` first")
    # round_trip: the pixel statistics read back exactly as written (a re-written manifest,
    # such as a pack's, then keeps the same input normalisation)
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], float_precision="round_trip")
    for col in ("id", "speaker", "video", "align", "split", "status", "error", "transcript",
                "roi_path"):  # fmt: skip
        df[col] = df[col].fillna("").astype(str)
    for col in ("audio_present", "align_ok"):
        df[col] = df[col].astype(str).str.lower().eq("true")
    return df


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))
