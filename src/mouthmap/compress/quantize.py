"""INT8 variants of a model package side by side, and the choice of the deployable one.

Every method writes ``model_int8_<method>.onnx`` into the package; each is compared with the
FP32 model on the selection split (validation: the test split is never used to choose) and
timed on one of its clips at one thread; the better of QAT and PTQ by WER (then greedy WER,
then latency) becomes ``model.onnx``. ``model_fp32.onnx`` stays. The
choice and its figures are recorded in ``mouthmap.json`` under ``quantization``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.compress.clips import Clip, load_clips
from mouthmap.compress.ptq import QuantizeSettings
from mouthmap.compress.qat import QATSettings

METHODS = ("ptq", "qat", "dynamic")
FILES = {m: f"model_int8_{m}.onnx" for m in METHODS}
DEPLOYABLE = ("ptq", "qat")  # dynamic is the baseline: chosen only when it is all there is


@dataclass
class Comparison:
    """An ONNX model against the FP32 one on the same clips."""

    clips: int
    wer_greedy: float
    wer_beam: float | None
    fp32_wer_greedy: float
    fp32_wer_beam: float | None
    transcript_agreement: float  # share of clips whose greedy transcript equals FP32's
    beam_agreement: float | None
    frame_agreement: float  # share of frames whose best symbol equals FP32's
    max_abs_diff: float  # largest |log-prob difference| on valid frames


Outputs = list[tuple[np.ndarray, np.ndarray | None]]  # per clip: log-probs, word log-probs


def model_outputs(path: str | Path, clips: Sequence[Clip]) -> Outputs:
    """Each clip's log-probs and, from a model with a word head, its word log-probs."""
    from mouthmap.runtime.runner import OnnxRunner

    runner = OnnxRunner(path)
    return [runner.clip_all(c.frames) for c in clips]


def _decode_all(outputs: Outputs, decode: Callable[..., str]) -> list[str]:
    return [decode(x, word_log_probs=w) for x, w in outputs]


def compare(
    candidate: str | Path,
    reference: str | Path,
    clips: Sequence[Clip],
    beam: Any | None = None,
    reference_outputs: Outputs | None = None,
) -> Comparison:
    """Transcripts and log-probs of ``candidate`` against ``reference`` (FP32) on ``clips``.
    The beam decoder reads each model's word head where it has one (as the package would),
    so an INT8 file that lost the head is scored as what it is."""
    from mouthmap.decode.greedy import greedy_decode
    from mouthmap.evaluation.metrics import wer

    refs = [c.text for c in clips]
    if reference_outputs is None:
        reference_outputs = model_outputs(reference, clips)
    outs = model_outputs(candidate, clips)

    def greedy(x: np.ndarray, word_log_probs: Any = None) -> str:
        return greedy_decode(x)

    g_ref, g_new = _decode_all(reference_outputs, greedy), _decode_all(outs, greedy)
    b_ref = b_new = None
    if beam is not None:
        b_ref, b_new = _decode_all(reference_outputs, beam.decode), _decode_all(outs, beam.decode)
    pairs = [(a[0], b[0]) for a, b in zip(reference_outputs, outs, strict=True)]
    frames = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in pairs])

    def agreement(a: list[str] | None, b: list[str] | None) -> float | None:
        return (
            None
            if a is None or b is None
            else float(np.mean([x == y for x, y in zip(a, b, strict=True)]))
        )

    return Comparison(
        clips=len(clips),
        wer_greedy=wer(refs, g_new),
        wer_beam=wer(refs, b_new) if b_new is not None else None,
        fp32_wer_greedy=wer(refs, g_ref),
        fp32_wer_beam=wer(refs, b_ref) if b_ref is not None else None,
        transcript_agreement=agreement(g_ref, g_new),
        beam_agreement=agreement(b_ref, b_new),
        frame_agreement=float(frames.mean()),
        max_abs_diff=float(max(np.abs(a - b).max() for a, b in pairs)),
    )


def latency_ms(path: str | Path, clip: Clip, repeats: int = 10) -> float:
    """Median milliseconds one clip takes at one thread (the phone-like case)."""
    from mouthmap.runtime.bench import time_calls
    from mouthmap.runtime.runner import OnnxRunner

    run = OnnxRunner(path, threads=1).clip
    return 1000 * float(np.median(time_calls(lambda: run(clip.frames), repeats, warmup=2)))


def choose(results: dict[str, dict[str, Any]]) -> str:
    """The deployable method: lowest selection WER (beam where measured), then greedy WER,
    then the faster, then the smaller file. Dynamic only when neither PTQ nor QAT was made."""
    pool = [m for m in DEPLOYABLE if m in results] or list(results)
    if not pool:
        raise ValueError("no INT8 model to choose from")

    def key(m: str) -> tuple[float, float, float, int]:
        c = results[m]["comparison"]
        primary = c["wer_beam"] if c["wer_beam"] is not None else c["wer_greedy"]
        speed = results[m].get("latency_ms", float("inf"))
        return (round(primary, 6), round(c["wer_greedy"], 6), speed, results[m]["bytes"])

    return min(pool, key=key)


def quantize_package(
    package_dir: str | Path,
    prepared_dir: str | Path,
    checkpoint: str | Path | None = None,
    methods: Sequence[str] = METHODS,
    calibration_clips: int = 64,
    ptq_settings: QuantizeSettings | None = None,
    qat_settings: QATSettings | None = None,
    select_split: str = "val",
    select_clips: int | None = None,
    beam: bool = True,
    exclude: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Make the INT8 ``methods`` for a package, compare each with FP32 on ``select_split`` and
    install the best as ``model.onnx``; returns the report also stored in ``mouthmap.json``."""
    from mouthmap.compress import ptq, qat
    from mouthmap.package import ModelPackage, update_meta

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown quantization method(s) {unknown}; choose from {METHODS}")
    if select_split == "test":
        raise ValueError("choosing on the test split would make its error rates meaningless")
    if "qat" in methods and checkpoint is None:
        raise ValueError("QAT fine-tunes the PyTorch model: give its checkpoint (--checkpoint)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    pkg = ModelPackage.load(package_dir)
    fp32 = pkg.fp32_path
    results: dict[str, dict[str, Any]] = {}
    if "ptq" in methods:
        log(f"PTQ: calibrating on {calibration_clips} training clips")
        cal = load_clips(
            prepared_dir, "train", pkg.mean, pkg.std, calibration_clips, exclude=exclude
        )
        t0 = time.perf_counter()
        ptq.quantize_static_qdq(fp32, pkg.root / FILES["ptq"], cal, ptq_settings)
        results["ptq"] = {"seconds": time.perf_counter() - t0, "calibration_clips": len(cal),
                          "settings": asdict(ptq_settings or QuantizeSettings())}  # fmt: skip
    if "dynamic" in methods:
        t0 = time.perf_counter()
        ptq.quantize_dynamic_int8(fp32, pkg.root / FILES["dynamic"])
        results["dynamic"] = {"seconds": time.perf_counter() - t0}
    if "qat" in methods:
        s = qat_settings or QATSettings()
        log(f"QAT: fine-tuning {s.epochs} epoch(s) at lr {s.lr}")
        r = qat.quantize_qat(
            checkpoint, prepared_dir, pkg.root / FILES["qat"], s, exclude, progress
        )  # fmt: skip
        results["qat"] = {"seconds": r.seconds, "steps": r.steps, "settings": asdict(s),
                          "final_loss": float(np.mean(r.losses[-10:])) if r.losses else None,
                          "torch_vs_onnx_max_abs_diff": r.torch_vs_onnx_max_abs_diff}  # fmt: skip

    log(f"comparing with FP32 on the {select_split} split")
    sel = load_clips(prepared_dir, select_split, pkg.mean, pkg.std, select_clips, exclude=exclude)
    decoder = None
    if beam and pkg.lm_dir is not None:
        from mouthmap.decode.beam import BeamDecoder

        decoder = BeamDecoder(pkg.lm_dir, **pkg.meta.get("decoder", {}))
    ref_outputs = model_outputs(fp32, sel)
    for method, info in results.items():
        path = pkg.root / FILES[method]
        info["file"] = FILES[method]
        info["bytes"] = path.stat().st_size
        info["comparison"] = asdict(compare(path, fp32, sel, decoder, ref_outputs))
        info["latency_ms"] = latency_ms(path, sel[0])
    chosen = choose(results)
    shutil.copy(pkg.root / FILES[chosen], pkg.model_path)
    report = {
        "chosen": chosen,
        "rule": "lowest WER on the selection split (beam+LM where there is an LM), PTQ vs QAT;"
        " ties: greedy WER, then latency",
        "selection_split": select_split,
        "fp32_bytes": fp32.stat().st_size,
        "fp32_latency_ms": latency_ms(fp32, sel[0]),
        "latency_frames": len(sel[0].frames),
        "model_bytes": pkg.model_path.stat().st_size,
        "methods": results,
    }
    files = {**pkg.meta["files"], "int8": {m: FILES[m] for m in results}}
    update_meta(pkg, quantization=report, files=files)
    return report
