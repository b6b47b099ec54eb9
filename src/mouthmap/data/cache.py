"""The prepared-clip cache: one compressed ``.npz`` plus one JSON record per clip.

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written clip behind and never damages one
that was already prepared.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CLIPS_DIR = "clips"
MANIFEST = "manifest.csv"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain write would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_arrays(**arrays: np.ndarray) -> bytes:
    """The bytes of a compressed ``.npz`` holding ``arrays``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_arrays(path: Path, **arrays: np.ndarray) -> None:
    atomic_write_bytes(path, encode_arrays(**arrays))


def read_arrays(path: Path | io.BytesIO) -> dict[str, np.ndarray]:
    """A clip's arrays from its ``.npz`` (a path, or its bytes in a buffer)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=1, default=str) + "\n").encode())


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def clip_paths(prepared_dir: Path, clip_id: str) -> tuple[Path, Path]:
    """(arrays .npz, record .json) of one clip inside the cache."""
    base = prepared_dir / CLIPS_DIR
    return base / f"{clip_id}.npz", base / f"{clip_id}.json"
