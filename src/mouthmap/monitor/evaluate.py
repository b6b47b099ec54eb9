"""How well the monitor works: false alarms on clean windows, detection of shifted ones.

Shifted requests go through the serving path for real: the raw video is decoded, darkened,
blurred or made noisy, the mouth is located and cropped by the same code as in training and
serving, the model runs, and the features are computed by the function the server calls.
Clean held-out requests come from the prepared cache (the same code produced it, so they are
the numbers a server would log). Windows are drawn at random (without repetition inside a
window) from those pools, and each is checked against the training reference.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mouthmap.monitor.drift import DEFAULT_MIN_REQUESTS, check_drift
from mouthmap.monitor.features import request_features
from mouthmap.monitor.shifts import DEFAULT_SEVERITY, apply_shift


@dataclass(frozen=True)
class RoiSettings:
    """How ROIs are cut (the package's ``prepare`` block, or params.yaml's)."""

    localiser: str = "mediapipe"
    roi_size: int = 96
    roi_scale: float = 1.8
    smooth_frames: int = 7


_WORKER: dict[str, Any] = {}


def _init_worker(settings: RoiSettings, package: str | None) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mouthmap.data.mouth import get_localiser

    _WORKER["localiser"] = get_localiser(settings.localiser)
    _WORKER["settings"] = settings
    _WORKER["transcriber"] = None
    if package is not None:
        from mouthmap.runtime.transcriber import Transcriber

        _WORKER["transcriber"] = Transcriber(package, decoder="greedy", threads=1)


def video_record(
    path: str | Path,
    shift: str | None = None,
    severity: float | None = None,
    seed: int = 0,
    localiser=None,
    settings: RoiSettings | None = None,
    transcriber=None,
) -> dict[str, Any]:
    """Features of one video as the server would log them, after an optional shift."""
    from mouthmap.data import media, roi

    localiser = localiser if localiser is not None else _WORKER["localiser"]
    settings = settings or _WORKER.get("settings") or RoiSettings()
    transcriber = transcriber if transcriber is not None else _WORKER.get("transcriber")
    clip = media.probe_and_decode_video(path)
    frames = clip.frames if shift is None else apply_shift(clip.frames, shift, severity, seed)
    base = {"id": Path(path).stem, "shift": shift or "none"}
    try:
        rois, track = roi.extract_mouth_rois(
            frames, localiser, size=settings.roi_size, scale=settings.roi_scale,
            smooth_frames=settings.smooth_frames,
        )  # fmt: skip
    except roi.NoMouthError:
        # the request fails; what the monitor still sees is that no mouth was found
        return {**base, "mouth_found": 0.0, "clip_seconds": len(frames) / clip.fps}
    log_probs = transcriber.log_probs(rois) if transcriber is not None else None
    return {**base, **request_features(rois, log_probs, fps=clip.fps, mouth_found=track.found)}


def _job(args: tuple) -> tuple[str, dict[str, Any]]:
    name, path, shift, severity, seed = args
    return name, video_record(path, shift, severity, seed)


def feature_tables(
    specs: dict[str, tuple[Sequence[str | Path], str | None, float | None]],
    settings: RoiSettings | None = None,
    package: str | Path | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """``{name: (videos, shift, severity)}`` -> ``{name: feature table}``, all videos through
    :func:`video_record` in one pool of ``workers`` processes (spawned: forking a process
    that holds LiteRT/ORT threads can deadlock)."""
    settings = settings or RoiSettings()
    jobs = [
        (name, str(p), shift, severity, i)
        for name, (paths, shift, severity) in specs.items()
        for i, p in enumerate(paths)
    ]
    pkg = str(package) if package is not None else None
    if workers <= 1:
        _init_worker(settings, pkg)
        results = list(_progress(map(_job, jobs), len(jobs), progress))
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(settings, pkg)
        ) as ex:
            results = list(_progress(ex.map(_job, jobs, chunksize=4), len(jobs), progress))
    return {name: pd.DataFrame.from_records([r for n, r in results if n == name]) for name in specs}


def videos_features(
    paths: Sequence[str | Path],
    shift: str | None = None,
    severity: float | None = None,
    settings: RoiSettings | None = None,
    package: str | Path | None = None,
    workers: int = 2,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`video_record` over many videos (see :func:`feature_tables`)."""
    specs = {"videos": (paths, shift, severity)}
    return feature_tables(specs, settings, package, workers, progress)["videos"]


def _progress(it, total: int, on: bool):
    if not on:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="video features", unit="clip")


def random_windows(pool: pd.DataFrame, size: int, n: int, seed: int = 0) -> list[pd.DataFrame]:
    """``n`` windows of ``size`` distinct rows of ``pool`` (windows may share rows)."""
    if len(pool) < size:
        raise ValueError(f"a pool of {len(pool)} requests cannot fill a window of {size}")
    rng = np.random.default_rng(seed)
    return [pool.iloc[rng.choice(len(pool), size, replace=False)] for _ in range(n)]


def disjoint_windows(pool: pd.DataFrame, size: int, seed: int = 0) -> list[pd.DataFrame]:
    """Windows that share no request (as many as the pool fills)."""
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool.iloc[order[i : i + size]] for i in range(0, len(pool) - size + 1, size)]


def alarm_rate(
    reference: pd.DataFrame, windows: list[pd.DataFrame], **check: Any
) -> dict[str, Any]:
    """Share of windows the check calls drifted, and which features fired how often."""
    fired: dict[str, int] = {}
    alarms = 0
    for w in windows:
        r = check_drift(reference, w, min_requests=min(len(w), DEFAULT_MIN_REQUESTS), **check)
        alarms += int(r.drifted)
        for c in r.drifted_columns:
            fired[c] = fired.get(c, 0) + 1
    n = len(windows)
    return {"windows": n, "alarms": alarms, "rate": alarms / n if n else float("nan"),
            "features_fired": dict(sorted(fired.items(), key=lambda kv: -kv[1]))}  # fmt: skip


def evaluate_monitor(
    reference: pd.DataFrame,
    clean_pool: pd.DataFrame,
    shifted_pools: dict[str, pd.DataFrame],
    window: int = 30,
    n_windows: int = 200,
    seed: int = 0,
    **check: Any,
) -> dict[str, Any]:
    """False-alarm rate over clean windows (random and disjoint) and detection per shift."""
    size = min(window, len(clean_pool))
    report: dict[str, Any] = {
        "window": size, "reference_clips": len(reference), "clean_pool": len(clean_pool),
        "check": {k: v for k, v in check.items() if k != "html"},
    }  # fmt: skip
    report["clean_random"] = alarm_rate(
        reference, random_windows(clean_pool, size, n_windows, seed), **check
    )
    report["clean_disjoint"] = alarm_rate(
        reference, disjoint_windows(clean_pool, size, seed), **check
    )
    report["shifts"] = {}
    for kind, pool in shifted_pools.items():
        w = min(size, len(pool))
        ws = random_windows(pool, w, max(1, n_windows // 4), seed + 1)
        report["shifts"][kind] = {"pool": len(pool), **alarm_rate(reference, ws, **check)}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"window {report['window']} requests; reference {report['reference_clips']} clips; "
        f"clean pool {report['clean_pool']} held-out clips",
    ]
    for key, label in (("clean_random", "clean, random windows"),
                       ("clean_disjoint", "clean, disjoint windows")):  # fmt: skip
        r = report[key]
        lines.append(f"  false alarms ({label}): {r['alarms']}/{r['windows']} = {r['rate']:.1%}"
                     f"  {r['features_fired'] or ''}")  # fmt: skip
    for kind, r in report["shifts"].items():
        sev = r.get("severity", DEFAULT_SEVERITY.get(kind))
        lines.append(f"  detected ({kind}, severity {sev}): {r['alarms']}/{r['windows']} = "
                     f"{r['rate']:.1%}  {r['features_fired']}")  # fmt: skip
    return "\n".join(lines)


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return path
