"""A compact, portable copy of the prepared corpus, for training on another machine.

The prepared cache keeps each clip's 96x96 mouth ROI as a compressed ``.npz`` (about 0.37 MB
a clip, 334 MB for GRID's 900); a rented GPU machine with a small upload allowance wants
much less. :func:`pack` writes one ``.tar`` holding each clip's ROI as an H.264 video
(lossy: CRF 18 averages about 1.3 grey levels of 255 from the original, at about 15 kB a
clip), its record and small arrays, the word alignments and the manifest; :func:`unpack`
rebuilds a prepared cache from it that training and evaluation read as they read the
original. The pixel statistics in the manifest are the original's, so a model's input
normalisation is the same on both sides.

Encoding needs PyAV (libx264); decoding uses only OpenCV, so unpacking also works on
machines that have OpenCV but not PyAV. ``dvc push`` / ``dvc pull`` remain the lossless way
to move the cache.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mouthmap.data import cache
from mouthmap.data.prepare import read_manifest

FORMAT = "mouthmap-pack/1"
INFO = "pack.json"
ALIGN_DIR = "align"
QUALITY = "data_quality.json"
LICENCE = (
    'GRID audio-visual corpus: M. Cooke, J. Barker, S. Cunningham, X. Shao, "An audio-visual '
    'corpus for speech perception and automatic speech recognition", J. Acoust. Soc. Am. '
    "120(5), 2421-2424, 2006. Distributed under the Creative Commons Attribution 4.0 licence "
    "(CC BY 4.0); any redistribution must keep this attribution. This pack holds mouth crops "
    "of the original videos, re-encoded."
)
FPS = 25


class PackError(ValueError):
    """A pack that cannot be written or read; the message says which file and why."""


@dataclass(frozen=True)
class PackReport:
    clips: int
    bytes: int
    seconds: float
    mean_abs_error: float | None = None  # grey levels, over every packed frame (pack only)
    removed_report: Path | None = None  # unpack: a validation report of the replaced cache

    @property
    def mb(self) -> float:
        return self.bytes / 1e6


def encode_roi(roi: np.ndarray, crf: int = 18) -> bytes:
    """(T, H, W) uint8 grey frames -> an H.264 ``.mp4`` (yuv420p, neutral chroma)."""
    import av

    roi = _check_roi(roi, "roi")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roi.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.height, stream.width = roi.shape[1:]
            stream.pix_fmt = "yuv420p"  # what every H.264 decoder reads; grey gives no gain
            stream.options = {"crf": str(int(crf)), "preset": "slow"}
            for frame in roi:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path.read_bytes()


def decode_roi(data: bytes, name: str = "roi.mp4") -> np.ndarray:
    """An ``.mp4`` written by :func:`encode_roi` -> (T, H, W) uint8 grey frames (OpenCV)."""
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roi.mp4"
        path.write_bytes(data)
        cap = cv2.VideoCapture(str(path))
        frames = []
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        finally:
            cap.release()
    if not frames:
        raise PackError(f"{name}: no frame could be decoded")
    return np.stack(frames)


def _check_roi(roi: np.ndarray, name: str) -> np.ndarray:
    roi = np.asarray(roi)
    if roi.ndim != 3 or roi.dtype != np.uint8 or roi.shape[0] == 0:
        raise PackError(f"{name}: expected (frames, height, width) uint8, got {roi.shape}")
    if roi.shape[1] % 2 or roi.shape[2] % 2:
        raise PackError(f"{name}: H.264 needs an even frame size, got {roi.shape[1:]}")
    return roi


def pack(
    prepared_dir: Path,
    out: Path,
    quality_file: Path | None = None,
    crf: int = 18,
    audio: bool = False,
    workers: int = 2,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> PackReport:
    """Write the prepared cache at ``prepared_dir`` (every clip prepared ok) to ``out``.

    ``quality_file``: the data validation's report, carried so that the clips it quarantined
    stay out of training on the other side. ``audio``: keep the log-mel features too (about
    2.5x the size; audio models and cross-modal distillation need them)."""
    t0 = time.perf_counter()
    df = read_manifest(prepared_dir)
    df = df[df["status"] == "ok"].reset_index(drop=True)
    if df.empty:
        raise PackError(f"{prepared_dir}: no prepared clip to pack")
    if not 0 <= crf <= 51:
        raise PackError(f"crf must be within 0..51 (x264), got {crf}")

    def one(row) -> tuple[str, bytes, bytes, bytes, float]:
        arrays = cache.read_arrays(prepared_dir / row.roi_path)
        roi = _check_roi(arrays["roi"], row.roi_path)
        video = encode_roi(roi, crf)
        err = float(np.abs(decode_roi(video, row.id).astype(np.int16) - roi).mean())
        keep = {k: v for k, v in arrays.items() if k != "roi" and (audio or k != "mel")}
        record = cache.read_record(cache.clip_paths(prepared_dir, row.id)[1]) or {}
        if "row" in record:  # the record's copy of the manifest row, as packed
            record["row"].update(align=packed_align.get(row.id, ""), video=_file_name(row.video))
        return row.id, video, cache.encode_arrays(**keep), json.dumps(record).encode(), err

    aligns = {}
    for row in df.itertuples():
        src = Path(row.align)
        if row.align and src.is_file():
            aligns[row.id] = (src, f"{ALIGN_DIR}/{row.speaker}/{src.name}")
    packed_align = {cid: name for cid, (_, name) in aligns.items()}
    packed = df.copy()
    packed["align"] = [packed_align.get(i, "") for i in packed["id"]]
    packed["video"] = [_file_name(v) for v in packed["video"]]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    errors: list[float] = []
    try:
        with tarfile.open(tmp, "w") as tar, ThreadPoolExecutor(max(1, workers)) as pool:
            info = {
                "format": FORMAT, "clips": len(df), "codec": "h264", "crf": crf, "fps": FPS,
                "audio": audio, "licence": LICENCE,
            }  # fmt: skip
            _add(tar, INFO, json.dumps(info, indent=1).encode())
            _add(tar, cache.MANIFEST, packed.to_csv(index=False).encode())
            if quality_file is not None and quality_file.is_file():
                _add(tar, QUALITY, quality_file.read_bytes())
            for src, name in aligns.values():
                tar.add(str(src), arcname=name)
            results = pool.map(one, df.itertuples())
            for cid, video, arrays, record, err in progress(results) if progress else results:
                base = f"{cache.CLIPS_DIR}/{cid}"
                _add(tar, f"{base}.mp4", video)
                _add(tar, f"{base}.npz", arrays)
                _add(tar, f"{base}.json", record)
                errors.append(err)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackReport(len(df), out.stat().st_size, time.perf_counter() - t0, float(np.mean(errors)))


def _file_name(path: str) -> str:
    """A source video's name without this machine's directories (a pack holds no local paths)."""
    return PurePosixPath(path).name


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def unpack(
    pack_path: Path,
    prepared_dir: Path,
    quality_file: Path | None = None,
    workers: int = 4,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> PackReport:
    """Rebuild a prepared cache at ``prepared_dir`` from a pack (replacing what is there), and
    the validation report at ``quality_file`` when the pack carries one; when it carries none,
    a report already at ``quality_file`` described the replaced cache and is removed, so no
    stale quarantine list applies to the new clips. The cache is built beside the target and
    moved in place only when complete: a bad pack changes nothing."""
    t0 = time.perf_counter()
    if not pack_path.is_file():
        raise PackError(f"{pack_path}: no such file")
    if not tarfile.is_tarfile(pack_path):
        raise PackError(f"{pack_path}: not a MouthMap pack (not a tar file)")
    staging = prepared_dir.with_name(f".{prepared_dir.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(pack_path, "r") as tar:
            n, quality = _build(_Reader(pack_path, tar), staging, prepared_dir, workers, progress)
        if prepared_dir.exists():
            shutil.rmtree(prepared_dir)
        staging.replace(prepared_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    removed = None
    if quality_file is not None:
        if quality is not None:
            cache.atomic_write_bytes(quality_file, quality)
        elif quality_file.is_file():
            quality_file.unlink()
            removed = quality_file
    return PackReport(n, pack_path.stat().st_size, time.perf_counter() - t0, removed_report=removed)


class _Reader:
    """The pack's members by name; reads stay in one thread (tarfile is not thread-safe)."""

    def __init__(self, path: Path, tar: tarfile.TarFile) -> None:
        self.path, self.tar = path, tar
        self.members = {m.name: m for m in tar.getmembers() if m.isfile()}

    def __call__(self, name: str) -> bytes:
        f = self.tar.extractfile(self.members[name]) if name in self.members else None
        if f is None:
            raise PackError(f"{self.path}: {name} is missing (a damaged or partial pack?)")
        return f.read()


def _build(
    read: _Reader,
    staging: Path,
    prepared_dir: Path,
    workers: int,
    progress: Callable[[Iterable], Iterable] | None,
) -> tuple[int, bytes | None]:
    """Write the cache into ``staging`` with paths as they will be under ``prepared_dir``;
    (clips, the carried validation report or None)."""
    import pandas as pd

    info = json.loads(read(INFO))
    if info.get("format") != FORMAT:
        raise PackError(f"{read.path}: format {info.get('format')!r}, expected {FORMAT!r}")
    df = pd.read_csv(
        io.BytesIO(read(cache.MANIFEST)), keep_default_na=False, na_values=[""],
        float_precision="round_trip",
    )  # fmt: skip
    if len(df) != info["clips"]:
        raise PackError(f"{read.path}: {len(df)} clips in the manifest, {info['clips']} packed")
    (staging / cache.CLIPS_DIR).mkdir(parents=True)
    for name in read.members:
        if name.startswith(f"{ALIGN_DIR}/"):
            if not _local_align(prepared_dir, name):
                raise PackError(f"{read.path}: member {name!r} would be written outside the cache")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(read(name))
    frames = dict(zip(df["id"], df["n_frames"], strict=True))

    def jobs():
        for cid in df["id"]:
            base = f"{cache.CLIPS_DIR}/{cid}"
            yield cid, read(f"{base}.mp4"), read(f"{base}.npz"), read(f"{base}.json")

    def one(job: tuple[str, bytes, bytes, bytes]) -> str:
        cid, video, arrays, record = job  # decoding and compressing: the slow part, pooled
        extra = cache.read_arrays(io.BytesIO(arrays))
        roi = decode_roi(video, f"{cid}.mp4")
        if len(roi) != frames[cid]:
            raise PackError(f"{cid}.mp4: {len(roi)} frames decoded, {frames[cid]} in the manifest")
        npz, record_path = cache.clip_paths(staging, cid)
        cache.write_arrays(npz, roi=roi, **extra)
        rec = json.loads(record)
        if "row" in rec:
            rec["row"]["align"] = _local_align(prepared_dir, rec["row"].get("align", ""))
        cache.write_record(record_path, rec)
        return cid

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(one, jobs())
        for _ in progress(done) if progress else done:
            pass
    df["align"] = [_local_align(prepared_dir, a) for a in df["align"]]
    df.to_csv(staging / cache.MANIFEST, index=False)
    return len(df), read(QUALITY) if QUALITY in read.members else None


def _local_align(prepared_dir: Path, name: str) -> str:
    """A packed alignment's path once the cache is in place ("" for none, or for a name that
    would leave the cache)."""
    parts = PurePosixPath(name).parts
    if len(parts) != 3 or parts[0] != ALIGN_DIR or ".." in parts:
        return ""
    return str((prepared_dir / name).resolve())
