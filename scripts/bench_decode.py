"""Decoder speed and accuracy on model-like outputs, on one CPU core.

Builds the word LM from the training transcripts of the committed split, turns the
real test-split transcripts into peaked, noisy CTC outputs with look-alike
confusions (``mouthmap.decode.synthetic``), and times greedy, beam search without an
LM and beam+LM per 3 s clip (median and p95 after warm-up). Also times a flat random
matrix, the worst case for a beam search. Accuracy here says what the LM can repair,
not what a model achieves: rerun on real model outputs for that.

    python scripts/bench_decode.py [--grid ../shared/data/grid] [--sweep]
    python scripts/bench_decode.py --package models/mouthmap-student --prepared DIR

With ``--package`` it times the package's own ONNX outputs on the real test clips of a
prepared corpus instead (the figure the release quotes), with the package's LM and
decoder settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap import alphabet
from mouthmap.data import splits
from mouthmap.data.corpus import read_align, transcript
from mouthmap.decode import BeamDecoder, build_lm, greedy_decode
from mouthmap.decode.synthetic import SynthConfig, synthetic_log_probs
from mouthmap.evaluation import evaluate, evaluation_table

ROOT = Path(__file__).resolve().parents[1]


def split_transcripts(split_file: Path, grid: Path) -> dict[str, list[str]]:
    """split name -> transcripts, reading ``<grid>/<speaker>/align/<code>.align`` per id."""
    out: dict[str, list[str]] = {s: [] for s in splits.SPLITS}
    for cid, split in sorted(splits.load(split_file).items()):
        speaker, code = cid.split("_", 1)
        out[split].append(transcript(read_align(grid / speaker / "align" / f"{code}.align")))
    return out


def time_per_clip(fn: Callable[[Any], str], xs: Sequence[Any], repeats: int) -> list[float]:
    """Per-clip seconds (best of ``repeats`` for each clip) after one warm-up pass."""
    for x in xs[: min(10, len(xs))]:
        fn(x)
    times = []
    for x in xs:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    return times


def summary(times: Sequence[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   max {ms[-1]:7.2f} ms"


def flat_random(n: int, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Untrained-model outputs: near-uniform log-probs over all symbols."""
    logits = rng.normal(0.0, 1.0, size=(n, frames, alphabet.NUM_CLASSES))
    logits -= logits.max(axis=-1, keepdims=True)
    return list(logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True)))


# "typical": a fairly well trained model; "hard": noisier, more and deeper confusions.
PROFILES = {
    "typical": SynthConfig(),
    "hard": SynthConfig(noise=1.5, confusion_rate=0.10, runner_up_gap=2.5),
}


def bench_profile(
    name: str,
    config: SynthConfig,
    refs: list[str],
    decoders: dict[str, Callable[[np.ndarray], str]],
    seed: int,
    repeats: int,
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = [synthetic_log_probs(t, rng, config) for t in refs]
    print(f"\n[{name}] {len(xs)} test clips, {xs[0].shape[0]}x{xs[0].shape[1]} log-probs, 1 core")
    results = {}
    for label, fn in decoders.items():
        results[label] = evaluate(refs, [fn(x) for x in xs])
        print(f"  {label:14s} {summary(time_per_clip(fn, xs, repeats))}")
    print()
    print(evaluation_table(results))
    return xs


def bench_package(package: Path, prepared: Path, repeats: int) -> None:
    """Greedy, beam and beam+LM on a trained model's outputs for the real test clips; with
    the package's word head too when it has one (the decoder it ships with)."""
    from mouthmap.data.prepare import read_manifest
    from mouthmap.decode.slots import WordSlots
    from mouthmap.evaluation.evaluate import split_log_probs
    from mouthmap.runtime.transcriber import Transcriber

    runner = Transcriber(package, decoder="greedy")
    refs, xs, words = split_log_probs(runner, prepared, read_manifest(prepared), "test")
    settings = runner.package.meta.get("decoder", {})
    beam_lm = BeamDecoder(runner.package.lm_dir, **settings)
    no_lm = BeamDecoder(None, beam_width=settings.get("beam_width", 16))
    decoders: dict[str, Callable[[int], str]] = {  # by clip index: the head's output goes too
        "greedy": lambda i: greedy_decode(xs[i]),
        "beam (no LM)": lambda i: no_lm.decode(xs[i]),
        "beam + LM": lambda i: beam_lm.decode(xs[i]),
    }
    if words is not None and beam_lm.grammar is not None:
        slots = WordSlots(beam_lm.grammar.slots)
        decoders["word head"] = lambda i: slots.decode(words[i])
        if beam_lm.word_weight > 0:
            decoders["+ word head"] = lambda i: beam_lm.decode(xs[i], word_log_probs=words[i])
    print(f"[{package}] {len(xs)} real test clips, {xs[0].shape[0]}x{xs[0].shape[1]}, 1 core")
    if "+ word head" in decoders:
        print(f"  '+ word head': the package's decoder (beam + LM + word head, {beam_lm!r})")
    results = {}
    clips = list(range(len(xs)))
    for label, fn in decoders.items():
        results[label] = evaluate(refs, [fn(i) for i in clips])
        print(f"  {label:14s} {summary(time_per_clip(fn, clips, repeats))}")
    print()
    print(evaluation_table(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-file", type=Path, default=ROOT / "data/splits/grid_s1.json")
    ap.add_argument("--grid", type=Path, default=ROOT.parent / "shared/data/grid")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="also time a grid of beam settings")
    ap.add_argument("--package", type=Path, help="time this model package's real outputs")
    ap.add_argument("--prepared", type=Path, help="prepared corpus with test clips (--package)")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as on a phone
    if args.package:
        if args.prepared is None:
            ap.error("--package needs --prepared DIR (a prepared corpus with test clips)")
        bench_package(args.package, args.prepared, args.repeats)
        return
    texts = split_transcripts(args.split_file, args.grid)
    refs = texts["test"]
    flat = flat_random(20, SynthConfig.frames, np.random.default_rng(args.seed))

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = build_lm(texts["train"], Path(tmp) / "lm", order=args.order)
        print(
            f"LM: order {args.order} from {len(texts['train'])} training transcripts, "
            f"{len(lm.words())} words, built in {time.perf_counter() - t0:.2f} s"
        )
        decoders: dict[str, Callable[[np.ndarray], str]] = {
            "greedy": greedy_decode,
            "beam (no LM)": BeamDecoder(None).decode,
            "beam + LM": BeamDecoder(lm).decode,
        }
        profiles = {
            name: bench_profile(name, cfg, refs, decoders, args.seed, args.repeats)
            for name, cfg in PROFILES.items()
        }
        print(f"[flat random] {len(flat)} matrices {flat[0].shape[0]}x{flat[0].shape[1]}")
        for label, fn in decoders.items():
            print(f"  {label:14s} {summary(time_per_clip(fn, flat, 1))}")
        wide = BeamDecoder(lm, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0)
        print("  beam + LM with pyctcdecode's defaults (width 100, prune -10, token_min -5):")
        print(f"    typical {summary(time_per_clip(wide.decode, profiles['typical'], 1))}")
        print(f"    flat    {summary(time_per_clip(wide.decode, flat, 1))}")

        if args.sweep:
            print("\nprofile  width prune tmin | WER beam+LM | median / p95 ms | flat median ms")
            for name, xs in profiles.items():
                for width in (8, 16, 32):
                    for prune, tmin in ((-5.0, -4.0), (-8.0, -5.0), (-8.0, -6.0), (-10.0, -8.0)):
                        dec = BeamDecoder(
                            lm, beam_width=width, beam_prune_logp=prune, token_min_logp=tmin
                        )
                        w = evaluate(refs, [dec.decode(x) for x in xs])["wer"]
                        pk = sorted(t * 1000 for t in time_per_clip(dec.decode, xs, 1))
                        fl = statistics.median(t * 1000 for t in time_per_clip(dec.decode, flat, 1))
                        print(
                            f"{name:8s} {width:5d} {prune:5.0f} {tmin:4.0f} | {w:11.2%} | "
                            f"{statistics.median(pk):6.2f} / {pk[int(0.95 * (len(pk) - 1))]:6.2f}"
                            f" | {fl:6.2f}"
                        )


if __name__ == "__main__":
    main()
