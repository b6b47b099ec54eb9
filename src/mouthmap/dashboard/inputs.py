"""Where the page's clips come from: the committed GRID sample (with its true sentences)
and uploads (kept in a temporary directory under a safe name)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_UPLOAD_MB", "Sample", "list_samples", "save_upload"]

MAX_UPLOAD_MB = 50


@dataclass(frozen=True)
class Sample:
    code: str
    video: Path
    truth: str | None  # the sentence from the .align file


def _truth(align: Path) -> str | None:
    if not align.is_file():
        return None
    from mouthmap.data.corpus import read_align, transcript

    return transcript(read_align(align))


def list_samples(root: Path) -> list[Sample]:
    """Clips under ``root/video/*.mp4`` with their ``root/align/*.align`` sentences."""
    videos = sorted((root / "video").glob("*.mp4")) if (root / "video").is_dir() else []
    return [Sample(v.stem, v, _truth(root / "align" / f"{v.stem}.align")) for v in videos]


def save_upload(name: str, data: bytes, directory: Path | None = None) -> Path:
    """The uploaded bytes as a file whose name is derived from the upload's (never a path
    the browser chose) and its content hash; raises ValueError when empty or too large."""
    if not data:
        raise ValueError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"{name}: {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    directory = directory or Path(tempfile.gettempdir()) / "mouthmap-dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[-80:] or "upload"
    path = directory / f"{hashlib.sha256(data).hexdigest()[:16]}-{stem}"
    if not path.exists():
        path.write_bytes(data)
    return path
