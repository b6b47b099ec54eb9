"""The training reference: the same per-request features, computed on the prepared clips.

The reference is what "normal" looks like: the features of the clips the model was trained
on, computed by the very function the serving path calls, so a window of live requests and
the reference differ only by what changed in the world. Written as CSV (a few hundred rows)
with a JSON sidecar that says where it came from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mouthmap.monitor.features import request_features


def _iter_progress(items: list, progress: bool, desc: str) -> Iterable:
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="clip")


def prepared_features(
    prepared_dir: str | Path,
    splits: Sequence[str] = ("train",),
    transcriber: Any | None = None,
    progress: bool = False,
    limit: int | None = None,
) -> pd.DataFrame:
    """One feature row per prepared clip of ``splits`` (model features when ``transcriber``
    is given: a :class:`mouthmap.runtime.transcriber.Transcriber` or anything with
    ``log_probs(rois)``)."""
    from mouthmap.data.cache import read_arrays
    from mouthmap.data.prepare import read_manifest

    root = Path(prepared_dir)
    manifest = read_manifest(root)
    rows = manifest[(manifest.status == "ok") & manifest.split.isin(list(splits))]
    if rows.empty:
        have = sorted(set(manifest.split))
        raise ValueError(f"{root}: no prepared clips in split(s) {list(splits)} (have {have})")
    if limit is not None:
        rows = rows.iloc[:limit]
    records = []
    for row in _iter_progress(list(rows.itertuples()), progress, "reference features"):
        arrays = read_arrays(root / row.roi_path)
        rois = arrays["roi"]
        log_probs = transcriber.log_probs(rois) if transcriber is not None else None
        fps = float(row.fps) if row.fps else 25.0
        feats = request_features(rois, log_probs, fps=fps, mouth_found=arrays.get("found"))
        records.append({"id": row.id, "split": row.split, **feats})
    return pd.DataFrame.from_records(records)


def build_reference(
    prepared_dir: str | Path,
    out: str | Path,
    splits: Sequence[str] = ("train",),
    package: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the reference CSV (and ``<out>.meta.json``); returns the CSV path."""
    transcriber = None
    pkg_meta: dict[str, Any] = {}
    if package is not None:
        from mouthmap.runtime.transcriber import Transcriber

        transcriber = Transcriber(package, decoder="greedy")
        pkg_meta = {
            "package": str(package),
            "model": transcriber.package.meta.get("name"),
            "lineage": transcriber.package.meta.get("lineage"),
        }
    df = prepared_features(prepared_dir, splits, transcriber, progress=progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prepared_dir": str(prepared_dir),
        "splits": list(splits),
        "clips": len(df),
        "features": [c for c in df.columns if c not in ("id", "split")],
        **pkg_meta,
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return out


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Median and 5-95 % range per feature: the reference's one-screen summary."""
    num = df.select_dtypes(include=[np.number])
    return num.quantile([0.05, 0.5, 0.95]).T.rename(
        columns={0.05: "p5", 0.5: "median", 0.95: "p95"}
    )
