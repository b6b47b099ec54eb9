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
        rows = df[(df["status"] == "ok") & (df["split"] == split) & ~df["id"].isin(exclude)]
        refs, hyps = list(rows["transcript"]), {d: [] for d in decoders}
        for rel in rows["roi_path"]:
            log_probs = runner.log_probs(cache.read_arrays(prepared / rel)["roi"])
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
