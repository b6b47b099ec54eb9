"""Evaluate a model package on the prepared splits: WER/CER and per-slot error rates,
greedy and beam+LM, with the decoding time per clip."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.data import cache
from mouthmap.data.corpus import SLOT_NAMES
from mouthmap.data.prepare import read_manifest


def split_log_probs(
    runner: Any, prepared: Path, df: Any, split: str, exclude: Collection[str] = ()
) -> tuple[list[str], list[np.ndarray], list[np.ndarray] | None]:
    """References, the package's per-frame log-probs and, when its model has a word head,
    the word log-probs (else None) for the usable clips of a split."""
    rows = df[(df["status"] == "ok") & (df["split"] == split) & ~df["id"].isin(exclude)]
    outs = [runner.outputs(cache.read_arrays(prepared / rel)["roi"]) for rel in rows["roi_path"]]
    words = [w for _, w in outs] if runner.runner.has_word_head else None
    return list(rows["transcript"]), [lp for lp, _ in outs], words


DECODERS = ("greedy", "beam", "words")


def score(
    outputs: dict[str, tuple[list[str], list[np.ndarray]]],
    lm_dir: Path | None,
    decoder_settings: dict[str, Any],
    decoders: Sequence[str] = ("greedy", "beam"),
    word_outputs: dict[str, list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Decode per-clip log-probs of each split greedy and/or beam+LM and score them against
    the references: WER, CER, slot error rates, examples, and the decoding time per clip.

    ``word_outputs``: per split, each clip's word-head log-probs, for a model that has one:
    the ``words`` decoder reads them alone (:mod:`mouthmap.decode.slots`) and the beam
    search's grammar rescoring weighs them by ``decoder_settings["word_weight"]``."""
    from mouthmap.decode.beam import BeamDecoder
    from mouthmap.decode.greedy import greedy_decode
    from mouthmap.decode.slots import WordSlots
    from mouthmap.evaluation.metrics import cer, slot_error_rates, wer, word_confusions

    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}; known: {', '.join(DECODERS)}")
    if "words" in decoders and not word_outputs:
        raise ValueError(
            "the words decoder needs a model with a word head (trained with train.align_weight "
            "> 0, from a checkpoint that kept it)"
        )
    decode: dict[str, Any] = {"greedy": lambda x, w: greedy_decode(x)}
    if "beam" in decoders:
        decode["beam"] = lambda x, w, b=BeamDecoder(lm_dir, **decoder_settings): b.decode(
            x, word_log_probs=w
        )
    if "words" in decoders:
        decode["words"] = lambda x, w, s=WordSlots(): s.decode(w)
    out: dict[str, Any] = {}
    timings: dict[str, list[float]] = {d: [] for d in decoders}
    for split, (refs, log_probs) in outputs.items():
        hyps: dict[str, list[str]] = {d: [] for d in decoders}
        words = (word_outputs or {}).get(split) or [None] * len(log_probs)
        for x, w in zip(log_probs, words, strict=True):
            for d in decoders:
                t0 = time.perf_counter()
                hyps[d].append(decode[d](x, w))
                timings[d].append(1000 * (time.perf_counter() - t0))
        out[split] = {
            d: {
                "clips": len(refs),
                "wer": wer(refs, hyps[d]) if refs else None,
                "cer": cer(refs, hyps[d]) if refs else None,
                "slots": slot_error_rates(refs, hyps[d]) if refs else {},
                "confusions": [list(c) for c in word_confusions(refs, hyps[d])] if refs else [],
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


def evaluate_package(
    package_dir: str | Path,
    prepared_dir: str | Path,
    splits: Sequence[str] = ("val", "test"),
    decoders: Sequence[str] = ("greedy", "beam"),
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    """Run the package's ONNX model over cached ROIs (the same preparation as transcribe)."""
    from mouthmap.runtime.transcriber import Transcriber

    runner = Transcriber(package_dir, decoder="greedy")
    prepared = Path(prepared_dir)
    df = read_manifest(prepared)
    per_split = {s: split_log_probs(runner, prepared, df, s, exclude) for s in splits}
    outputs = {s: (refs, lps) for s, (refs, lps, _) in per_split.items()}
    words = {s: w for s, (_, _, w) in per_split.items() if w is not None}
    meta = runner.package.meta
    return {
        "package": str(package_dir),
        "name": meta["name"],
        "word_head": runner.runner.has_word_head,
        **score(outputs, runner.package.lm_dir, meta.get("decoder", {}), decoders, words or None),
    }


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    prepared_dir: str | Path,
    lm_dir: Path | None,
    decoder_settings: dict[str, Any],
    splits: Sequence[str] = ("val", "test"),
    decoders: Sequence[str] = ("greedy", "beam"),
    exclude: Collection[str] = (),
    crop: int = 88,
) -> dict[str, Any]:
    """Score a training checkpoint in PyTorch: any model, also the ones that never become a
    package (the audio teacher reads log-mels; the visual teacher)."""
    import torch
    from torch.utils.data import DataLoader

    from mouthmap.data import dataset as ds
    from mouthmap.train.objective import modality_of, model_inputs
    from mouthmap.train.trainer import load_for_inference, word_head

    model, state = load_for_inference(checkpoint_path)
    head = word_head(state)
    prepared = Path(prepared_dir)
    df = read_manifest(prepared)
    norm = ds.Normalisation(**state["normalisation"])
    outputs, word_outputs = {}, {}
    for split in splits:
        data = ds.GridDataset(
            prepared, (split,), ds.eval_transforms(crop), norm, manifest=df, exclude=exclude,
            with_audio=modality_of(model) == "audio",
        )  # fmt: skip
        refs, log_probs, words = [], [], []
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=8, collate_fn=ds.collate):
                x, lengths, out_lengths = model_inputs(model, batch, torch.device("cpu"))
                lp, feats = model(x, lengths, return_features=True)
                n = out_lengths.tolist()
                log_probs += [lp.float().numpy()[i, :k] for i, k in enumerate(n)]
                if head is not None:
                    wl = head(feats).log_softmax(-1).float().numpy()
                    words += [wl[i, :k] for i, k in enumerate(n)]
                refs += batch.texts
        outputs[split] = (refs, log_probs)
        if head is not None:
            word_outputs[split] = words
    return {
        "checkpoint": str(checkpoint_path),
        "name": state["model_name"],
        "modality": modality_of(model),
        "word_head": head is not None,
        **score(outputs, lm_dir, decoder_settings, decoders, word_outputs or None),
    }


def tune_decoder(
    package_dir: str | Path,
    prepared_dir: str | Path,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0),
    betas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0),
    split: str = "val",
    exclude: Collection[str] = (),
    lm_orders: Sequence[int] = (),
    transcripts: Sequence[str] = (),
    word_weights: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
) -> dict[str, Any]:
    """Grid-search the LM weight and word bonus on ``split`` (never the test split) and
    store the best pair in the package's decoder settings. Ties go to the smaller alpha.

    When the package's model has a word head, the grammar rescoring is also tried with each
    of ``word_weights`` (the weight of the head's own path score, ``decoder.word_weight``).

    With ``lm_orders`` the n-gram order is searched too: an LM of each order is estimated
    from ``transcripts`` (the training split's) and the best on ``split`` replaces the
    package's ``lm/``. On GRID's fixed six-word grammar longer contexts tie the letter to
    the words around it, which a trigram cannot; too long an order only memorises."""
    import tempfile

    from mouthmap.decode.beam import BeamDecoder
    from mouthmap.decode.lm import LMFiles, build_lm
    from mouthmap.evaluation.metrics import wer
    from mouthmap.package import ModelPackage, update_meta
    from mouthmap.runtime.transcriber import Transcriber

    if split == "test":
        raise ValueError("tuning on the test split would make its error rates meaningless")
    if lm_orders and not transcripts:
        raise ValueError("searching the LM order needs the training transcripts to build LMs")
    runner = Transcriber(package_dir, decoder="greedy")
    prepared = Path(prepared_dir)
    refs, outputs, words = split_log_probs(
        runner, prepared, read_manifest(prepared), split, exclude
    )
    if not refs:
        raise ValueError(f"no prepared {split} clips in {prepared} to tune on")
    settings = dict(runner.package.meta.get("decoder", {}))
    with tempfile.TemporaryDirectory(prefix="mouthmap-lm-") as tmp:
        lms: dict[int | None, LMFiles | Path | None] = {}
        if lm_orders:
            for order in sorted(set(lm_orders)):
                lms[order] = build_lm(list(transcripts), Path(tmp) / str(order), order=order)
        else:
            lms[None] = runner.package.lm_dir  # None: plain beam search
        grid = []
        for order, lm in lms.items():
            files = LMFiles.in_dir(lm) if isinstance(lm, Path) else lm
            has_grammar = files is not None and files.grammar.is_file()
            # rows led by the word head skip the beam search, so beta plays no part in them
            head_led: dict[tuple[float, float], float] = {}
            for alpha in alphas:
                for beta in betas:
                    beam = BeamDecoder(
                        lm, **{**settings, "alpha": alpha, "beta": beta, "grammar": has_grammar}
                    )
                    plain = [beam.beam_search(x) for x in outputs]
                    grid.append((wer(refs, plain), order or 0, alpha, beta, 0, 0.0))
                    if not has_grammar:
                        continue
                    # the grammar rescoring of that beam search (or, with the head, of its sentence)
                    clip_words = words or [None] * len(refs)
                    for ww in (0.0, *(word_weights if words else ())):
                        if ww > 0 and (alpha, ww) in head_led:
                            score = head_led[(alpha, ww)]
                        else:
                            hyps = [
                                beam.rescore(x, h, w, word_weight=ww)
                                for x, h, w in zip(outputs, plain, clip_words, strict=True)
                            ]
                            score = wer(refs, hyps)
                            if ww > 0:
                                head_led[(alpha, ww)] = score
                        grid.append((score, order or 0, alpha, beta, 1, ww))
        # ties: the lower order, then the smaller alpha and beta, no grammar, less word head
        best_wer, order, alpha, beta, grammar, word_weight = min(grid)
        if lm_orders:  # swap the winner in whole: an interruption leaves one complete LM
            lm_dir = runner.package.root / "lm"
            staged = lm_dir.with_name("lm.new")
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(lms[order].arpa.parent, staged)
            shutil.rmtree(lm_dir, ignore_errors=True)
            staged.rename(lm_dir)
    files = {**runner.package.meta["files"], **({"lm": "lm"} if lm_orders else {})}
    tuning: dict[str, Any] = {"split": split, "clips": len(refs), "wer": best_wer}
    if lm_orders:
        tuning["lm_order"] = order
    tuning["grid_columns"] = ["wer", "lm_order", "alpha", "beta", "grammar", "word_weight"]
    tuning["grid"] = [list(g) for g in grid]  # lm_order 0: the package's own LM
    update_meta(
        ModelPackage.load(package_dir),
        decoder={
            **settings,
            "alpha": alpha,
            "beta": beta,
            "grammar": bool(grammar),
            "word_weight": word_weight,
        },  # fmt: skip
        decoder_tuning=tuning,
        files=files,
    )
    return {
        "alpha": alpha, "beta": beta, "wer": best_wer, "split": split, "clips": len(refs),
        "lm_order": order if lm_orders else None, "grammar": bool(grammar),
        "word_weight": word_weight,
    }  # fmt: skip


def _scored(results: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(split, decoder, scores)`` of an evaluation's results, skipping its timing entry."""
    for split, by_decoder in results.items():
        if split == "decode_ms_per_clip" or not isinstance(by_decoder, dict):
            continue
        for dec, r in by_decoder.items():
            if isinstance(r, dict):
                yield split, dec, r


def markdown_table(results: dict[str, Any]) -> str:
    """One row per split and decoder: clips, WER, CER and the six GRID slot error rates;
    under the table, each one's most frequent word errors."""
    from mouthmap.evaluation.metrics import evaluation_table

    rows = {
        f"{split} {dec}": {"clips": r["clips"], "WER": r["wer"], "CER": r["cer"], **r["slots"]}
        for split, dec, r in _scored(results)
        if r.get("wer") is not None
    }
    table = evaluation_table(rows, columns=["clips", "WER", "CER", *SLOT_NAMES])
    lines = confusion_lines(results)
    if not lines:
        return table
    return table + "\nMost frequent word errors (slot: said -> read):\n\n" + "\n".join(lines) + "\n"


def confusion_lines(results: dict[str, Any], top: int = 6) -> list[str]:
    """One markdown bullet per split and decoder: its most frequent word errors."""
    return [
        f"- {split} {dec}: "
        + ", ".join(
            f"{slot} {ref} -> {hyp or '(dropped)'} x{n}"
            for slot, ref, hyp, n in r["confusions"][:top]
        )
        for split, dec, r in _scored(results)
        if r.get("confusions")
    ]


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "evaluation.json", out / "evaluation.md"
    j.write_text(json.dumps(results, indent=1) + "\n")
    m.write_text(markdown_table(results))
    return j, m
