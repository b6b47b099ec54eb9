"""Measure a mouth localiser over a directory of clips: speed and failure rate.

Usage: python scripts/measure_localiser.py [VIDEO_DIR] [--localiser mediapipe] [--workers 2]
       [--min-found 0.98] [--limit N]

Each worker is pinned to one thread (LiteRT num_threads=1, OpenCV 1 thread), so
the per-frame times are one-core figures; the pool only shortens the wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

_LOCALISER = None


def _init(name: str) -> None:
    global _LOCALISER
    import cv2

    cv2.setNumThreads(1)
    from mouthmap.data.mouth import get_localiser

    _LOCALISER = get_localiser(name)


def _ranges(idx: np.ndarray) -> str:
    """[0 1 2 7] -> "0-2,7": where in a clip the misses are tells the failure mode."""
    parts, start = [], None
    for i, v in enumerate(idx):
        start = v if start is None else start
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            parts.append(f"{start}-{v}" if v != start else f"{v}")
            start = None
    return ",".join(parts)


def _measure(path: str) -> dict:
    from mouthmap.data.media import MediaError, probe_and_decode_video, to_gray
    from mouthmap.data.roi import NoMouthError, crop_rois, smooth_track

    t0 = time.perf_counter()
    try:
        clip = probe_and_decode_video(path)
    except MediaError as exc:
        return {"path": path, "error": str(exc)}
    t1 = time.perf_counter()
    track = _LOCALISER.locate(clip.frames)
    t2 = time.perf_counter()
    with contextlib.suppress(NoMouthError):
        crop_rois(to_gray(clip.frames), smooth_track(track, 7))
    t3 = time.perf_counter()
    return {
        "path": path,
        "frames": len(track),
        "found": int(track.found.sum()),
        "missing": _ranges(np.flatnonzero(~track.found)),
        "decode_s": t1 - t0,
        "locate_s": t2 - t1,
        "total_s": t3 - t0,
    }


def main() -> None:
    default_dir = Path(__file__).resolve().parents[1] / "../shared/data/grid/s1/video"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video_dir", nargs="?", default=str(default_dir))
    ap.add_argument("--localiser", default="mediapipe")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--min-found", type=float, default=0.98)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    paths = sorted(str(p) for p in Path(args.video_dir).glob("*.mp4"))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        raise SystemExit(f"no .mp4 files in {args.video_dir}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    with Pool(args.workers, initializer=_init, initargs=(args.localiser,)) as pool:
        results = pool.map(_measure, paths, chunksize=8)
    wall = time.perf_counter() - t0

    errors = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    frames = np.array([r["frames"] for r in ok])
    found = np.array([r["found"] for r in ok])
    locate = np.array([r["locate_s"] for r in ok])
    total = np.array([r["total_s"] for r in ok])
    ratio = found / np.maximum(frames, 1)
    low = [(r, q) for r, q in zip(ok, ratio, strict=True) if q < args.min_found]

    print(f"localiser: {args.localiser}  clips: {len(paths)}  workers: {args.workers}")
    print(f"wall time: {wall:.1f} s ({len(paths) / wall:.1f} clips/s)")
    print(f"decode errors: {len(errors)}")
    for r in errors:
        print(f"  {r['error']}")
    print(
        f"frames: {frames.sum()}  not found: {frames.sum() - found.sum()} "
        f"({1 - found.sum() / frames.sum():.4%})"
    )
    print(f"clips with found < {args.min_found:.0%} of frames: {len(low)}")
    for r, q in low:
        print(f"  {Path(r['path']).name}: found {q:.3f}, missing frames {r['missing']}")
    per_frame_ms = 1000 * locate.sum() / frames.sum()
    print(f"locate per frame (1 core): {per_frame_ms:.2f} ms mean")
    print(
        f"locate per clip (1 core): median {np.median(locate):.3f} s, "
        f"p95 {np.percentile(locate, 95):.3f} s, max {locate.max():.3f} s"
    )
    print(
        f"decode+locate+smooth+crop per clip (1 core): median {np.median(total):.3f} s, "
        f"p95 {np.percentile(total, 95):.3f} s, max {total.max():.3f} s"
    )


if __name__ == "__main__":
    main()
