"""Evaluate a model package on the prepared splits: WER/CER and per-slot error rates,
greedy and beam+LM, with the decoding time per clip."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.data import cache
from mouthmap.data.corpus import SLOT_NAMES
from mouthmap.data.prepare import read_manifest


def split_log_probs(
    runner: Any, prepared: Path, df: Any, split: str, exclude: Collection[str] = ()
) -> tuple[list[str], list[np.ndarray]]:
    """References and the package's per-frame log-probs for the usable clips of a split."""
    rows = df[(df["status"] == "ok") & (df["split"] == split) & ~df["id"].isin(exclude)]
    outs = [runner.log_probs(cache.read_arrays(prepared / rel)["roi"]) for rel in rows["roi_path"]]
    return list(rows["transcript"]), outs


def evaluate_package(
    package_dir: str | Path,
    prepared_dir: str | Path,
    splits: Sequence[str] = ("val", "test"),
    decoders: Sequence[str] = ("greedy", "beam"),
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    """Run the package's ONNX model over cached ROIs (the same preparation as transcribe)."""
    from mouthmap.decode.beam import BeamDecoder
    from mouthmap.decode.greedy import greedy_decode
    from mouthmap.evaluation.metrics import cer, slot_error_rates, wer
    from mouthmap.runtime.transcriber import Transcriber

    runner = Transcriber(package_dir, decoder="greedy")
    beam = BeamDecoder(runner.package.lm_dir, **runner.package.meta.get("decoder", {}))
    decode = {"greedy": greedy_decode, "beam": beam.decode}
    prepared = Path(prepared_dir)
    df = read_manifest(prepared)
    out: dict[str, Any] = {"package": str(package_dir), "name": runner.package.meta["name"]}
    timings: dict[str, list[float]] = {d: [] for d in decoders}
    for split in splits:
        refs, outputs = split_log_probs(runner, prepared, df, split, exclude)
        hyps: dict[str, list[str]] = {d: [] for d in decoders}
        for log_probs in outputs:
            for d in decoders:
                t0 = time.perf_counter()
                hyps[d].append(decode[d](log_probs))
                timings[d].append(1000 * (time.perf_counter() - t0))
        out[split] = {
            d: {
                "clips": len(refs),
                "wer": wer(refs, hyps[d]) if refs else None,
                "cer": cer(refs, hyps[d]) if refs else None,
                "slots": slot_error_rates(refs, hyps[d]) if refs else {},
                "examples": [[r, h] for r, h in list(zip(refs, hyps[d], strict=True))[:5]],
            }
            for d in decoders
        }
    out["decode_ms_per_clip"] = {
        d: {"median": float(np.median(t)), "p95": float(np.percentile(t, 95))}
        for d, t in timings.items()
        if t
    }
    return out


def tune_decoder(
    package_dir: str | Path,
    prepared_dir: str | Path,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0),
    betas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0),
    split: str = "val",
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    """Grid-search the LM weight and word bonus on ``split`` (never the test split) and
    store the best pair in the package's decoder settings. Ties go to the smaller alpha."""
    from mouthmap.decode.beam import BeamDecoder
    from mouthmap.evaluation.metrics import wer
    from mouthmap.package import ModelPackage, update_meta
    from mouthmap.runtime.transcriber import Transcriber

    if split == "test":
        raise ValueError("tuning on the test split would make its error rates meaningless")
    runner = Transcriber(package_dir, decoder="greedy")
    prepared = Path(prepared_dir)
    refs, outputs = split_log_probs(runner, prepared, read_manifest(prepared), split, exclude)
    if not refs:
        raise ValueError(f"no prepared {split} clips in {prepared} to tune on")
    settings = dict(runner.package.meta.get("decoder", {}))
    grid = []
    for alpha in alphas:
        for beta in betas:
            beam = BeamDecoder(runner.package.lm_dir, **{**settings, "alpha": alpha, "beta": beta})
            grid.append((wer(refs, [beam.decode(x) for x in outputs]), alpha, beta))
    best_wer, alpha, beta = min(grid)
    update_meta(
        ModelPackage.load(package_dir),
        decoder={**settings, "alpha": alpha, "beta": beta},
        decoder_tuning={
            "split": split,
            "clips": len(refs),
            "wer": best_wer,
            "grid": [list(g) for g in grid],
        },  # fmt: skip
    )
    return {"alpha": alpha, "beta": beta, "wer": best_wer, "split": split, "clips": len(refs)}


def markdown_table(results: dict[str, Any]) -> str:
    """One row per split and decoder: clips, WER, CER and the six GRID slot error rates."""
    from mouthmap.evaluation.metrics import evaluation_table

    rows = {}
    for split, by_decoder in results.items():
        if split == "decode_ms_per_clip" or not isinstance(by_decoder, dict):
            continue
        for dec, r in by_decoder.items():
            if isinstance(r, dict) and r.get("wer") is not None:
                rows[f"{split} {dec}"] = {"clips": r["clips"], "WER": r["wer"], "CER": r["cer"],
                                          **r["slots"]}  # fmt: skip
    return evaluation_table(rows, columns=["clips", "WER", "CER", *SLOT_NAMES])


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "evaluation.json", out / "evaluation.md"
    j.write_text(json.dumps(results, indent=1) + "\n")
    m.write_text(markdown_table(results))
    return j, m
