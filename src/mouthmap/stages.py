"""The data stages as plain functions over :class:`Params`.

The CLI, the DVC stages (which call the CLI) and, later, the Kubeflow components
all call these, so each stage has exactly one implementation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mouthmap.config import Params
from mouthmap.data import corpus
from mouthmap.data import splits as splits_mod
from mouthmap.data.prepare import PrepareReport, PrepareSettings, prepare, read_manifest
from mouthmap.validation import ValidationReport


def import_corpus(params: Params, source: str | Path | None = None):
    """Copy a local corpus (``data.source`` by default) into ``data.raw_dir``."""
    from mouthmap.data.fetch import import_local

    src = params.path(source if source is not None else params.data.source)
    return import_local(src, params.path(params.data.raw_dir), params.data.speakers)


def fetch_corpus(params: Params, cache_dir: Path | None = None):
    """Download the public GRID corpus for ``data.speakers`` into ``data.raw_dir``."""
    from mouthmap.data.fetch import fetch

    dest = params.path(params.data.raw_dir)
    return fetch(
        params.fetch.record_url,
        dest,
        params.data.speakers,
        cache_dir or params.path(".mouthmap/downloads"),
    )


def corpus_splits(params: Params, clips: list[corpus.Clip]) -> dict[str, str]:
    """Committed split for known clips, the sentence-hash rule for any other."""
    committed_path = params.path(params.data.splits)
    committed = splits_mod.load(committed_path) if committed_path.is_file() else {}
    out: dict[str, str] = {}
    for c in clips:
        if c.id in committed:
            out[c.id] = committed[c.id]
            continue
        try:
            text = corpus.transcript(corpus.read_align(c.align)) if c.align else ""
        except corpus.AlignError:
            text = ""  # rejected later anyway; the split does not matter
        out[c.id] = splits_mod.split_of(text) if text else "train"
    return out


def prepare_corpus(
    params: Params,
    workers: int | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> PrepareReport:
    raw = params.path(params.data.raw_dir)
    found = corpus.discover(raw) if raw.is_dir() else []
    clips = [c for c in found if c.speaker in params.data.speakers]
    if not clips:
        raise FileNotFoundError(
            f"no clips for speakers {params.data.speakers} under {raw}: "
            "run `mouthmap data fetch` (or `--from DIR`) first"
        )
    clips = clips[:limit] if limit else clips
    p = params.prepare
    settings = PrepareSettings(
        localiser=p.localiser, roi_size=p.roi_size, roi_scale=p.roi_scale,
        smooth_frames=p.smooth_frames, audio_sample_rate=p.audio_sample_rate, n_mels=p.n_mels,
    )  # fmt: skip
    out = params.path(params.data.prepared_dir)
    report = prepare(
        clips, corpus_splits(params, clips), out, settings,
        workers=workers or p.workers, force=force, progress=progress,
    )  # fmt: skip
    summary = {k: v for k, v in asdict(report).items() if k != "manifest"}
    summary.update(clips_per_second=report.clips_per_second, miss_rate=report.miss_rate)
    (out / "prepare_report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return report


@dataclass
class DataQuality:
    """Validation outcome with the quarantine decision the training stages rely on."""

    report: ValidationReport
    max_bad_fraction: float

    @property
    def quarantined(self) -> list[str]:
        return list(self.report.bad_ids)

    @property
    def usable(self) -> bool:
        """Clean data, or few enough bad clips (all named) to leave them out of training."""
        if self.report.success:
            return True
        table_level = any(not f.ids for f in self.report.failures)
        n = max(self.report.n_clips, 1)
        return not table_level and self.report.n_bad / n <= self.max_bad_fraction

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "usable": self.usable, "quarantined": self.quarantined}


def validate_corpus(params: Params) -> DataQuality:
    """Run the Great Expectations suite over the prepared manifest; write data docs and metrics."""
    from mouthmap.validation import ValidationRules, validate_manifest

    v = params.validate_
    manifest = read_manifest(params.path(params.data.prepared_dir))
    report = validate_manifest(
        manifest, ValidationRules.from_params(v), params.path(v.data_docs_dir)
    )
    quality = DataQuality(report, v.max_bad_fraction)
    metrics = params.path(v.metrics)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(quality.to_dict(), indent=1) + "\n")
    return quality


def quarantined_ids(params: Params) -> set[str]:
    """Clips the last validation left out of training (empty before any validation)."""
    path = params.path(params.validate_.metrics)
    if not path.is_file():
        return set()
    return set(json.loads(path.read_text()).get("quarantined", []))


# --- models ----------------------------------------------------------------------------------


def train_transcripts(params: Params) -> list[str]:
    """Transcripts of the usable training clips: the language model's only text."""
    df = read_manifest(params.path(params.data.prepared_dir))
    keep = (
        (df["status"] == "ok") & (df["split"] == "train") & ~df["id"].isin(quarantined_ids(params))
    )
    return df.loc[keep, "transcript"].tolist()


def build_language_model(params: Params, out_dir: str | Path | None = None):
    """Estimate the word n-gram LM (ARPA + unigrams) from the training transcripts."""
    from mouthmap.decode.lm import build_lm

    texts = train_transcripts(params)
    if not texts:
        raise ValueError("no usable training transcripts: run `mouthmap data prepare` first")
    return build_lm(texts, params.path(out_dir or params.lm.dir), order=params.lm.order)


def export_model(
    params: Params,
    checkpoint_path: str | Path,
    out_dir: str | Path,
    lm_dir: str | Path | None = None,
    metrics: dict | None = None,
):
    """Checkpoint -> model package (FP32 ONNX, LM, mouthmap.json with lineage)."""
    import tempfile

    from mouthmap.compress.export import export_onnx, max_abs_difference
    from mouthmap.explain.checkpoints import file_sha256
    from mouthmap.package import git_commit, write_package
    from mouthmap.train.trainer import load_for_inference, word_head

    model, state = load_for_inference(checkpoint_path)
    head = word_head(state)  # exported as a second output for the slot decoder
    lm = params.path(lm_dir) if lm_dir else build_language_model(params).arpa.parent
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model_fp32.onnx", word_head=head)
        parity = max_abs_difference(model, onnx_path, word_head=head)
        p = params.prepare
        meta = {
            "name": state["model_name"],
            "model_spec": state["model_spec"],
            "input": {"layout": "B,1,T,H,W", "height": params.train.crop,
                      "width": params.train.crop, "fps": 25, "dtype": "float32",
                      "grayscale": True, "crop": "centre of the ROI"},
            "normalisation": state["normalisation"],
            "prepare": {"localiser": p.localiser, "roi_size": p.roi_size,
                        "roi_scale": p.roi_scale, "smooth_frames": p.smooth_frames},
            "decoder": params.decoder.model_dump(),
            "metrics": {"onnx_max_abs_diff": parity, **(metrics or {})},
            "lineage": {"git_commit": git_commit(),
                        "training_run_id": state.get("run_id"),
                        "epochs": len(state.get("history", [])),
                        "data_version": data_version(params),
                        # the PyTorch model behind the ONNX, for Grad-CAM (mouthmap.explain)
                        "checkpoint": str(Path(checkpoint_path).resolve()),
                        "checkpoint_sha256": file_sha256(checkpoint_path)},
        }  # fmt: skip
        return write_package(out_dir, onnx_path, meta, lm_dir=lm)


def quantize_model(
    params: Params,
    package_dir: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    method: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log=lambda _: None,
) -> tuple[Path, dict]:
    """Model package -> the same package with INT8 variants and the better of PTQ and QAT as
    ``model.onnx`` (``quantize.*``), at ``out_dir`` (a copy) or in place when it is the same."""
    import shutil

    from mouthmap.compress.ptq import QuantizeSettings
    from mouthmap.compress.qat import QATSettings
    from mouthmap.compress.quantize import METHODS, quantize_package

    q = params.quantize
    src = params.path(package_dir or params.package.dir)
    dst = params.path(out_dir or q.out_dir)
    method = method or q.method
    methods = METHODS if method == "all" else (method,)
    from mouthmap.package import ModelPackage

    kept = ModelPackage.load(src).checkpoint_path  # also refuses a non-package early
    # QAT starts from the package's own checkpoint when it kept one (a release does)
    ckpt = checkpoint_path or kept or params.path(params.train.out_dir) / "best.pt"
    if src.resolve() != dst.resolve():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    report = quantize_package(
        dst, params.path(params.data.prepared_dir), ckpt if "qat" in methods else None,
        methods=methods, calibration_clips=q.calibration_clips,
        ptq_settings=QuantizeSettings(
            per_channel=q.per_channel, activation_type=q.activation_type,
            reduce_range=q.reduce_range, calibrate_method=q.calibrate_method),
        qat_settings=QATSettings(
            epochs=q.qat_epochs, lr=q.qat_lr, batch_size=q.qat_batch_size,
            limit_train=q.qat_limit_train, seed=params.train.seed),
        select_split=q.select_split, exclude=sorted(quarantined_ids(params)),
        progress=progress, log=log,
    )  # fmt: skip
    return dst, report


def data_version(params: Params) -> str | None:
    """The DVC hash of the prepared data when DVC tracked it (dvc.lock), else None."""
    import yaml

    lock = params.path("dvc.lock")
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("prepare", {}).get("outs", []):
        return out.get("md5")
    return None


def evaluate_model(
    params: Params,
    package_dir: str | Path | None = None,
    splits: Sequence[str] = ("val", "test"),
    decoders: Sequence[str] = ("greedy", "beam"),
    out_dir: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
) -> tuple[dict, tuple[Path, Path]]:
    """Score a model package (or, given ``checkpoint_path``, a training checkpoint in PyTorch
    with the LM of ``lm.dir``) on the prepared splits; writes evaluation.json + .md."""
    from mouthmap.evaluation.evaluate import evaluate_checkpoint, evaluate_package, write_report
    from mouthmap.package import DEFAULT_PACKAGE

    prepared = params.path(params.data.prepared_dir)
    exclude = quarantined_ids(params)
    if checkpoint_path is not None:
        lm_dir = build_language_model(params).arpa.parent if "beam" in decoders else None
        results = evaluate_checkpoint(
            checkpoint_path, prepared, lm_dir, params.decoder.model_dump(), splits, decoders,
            exclude, crop=params.train.crop,
        )  # fmt: skip
    else:
        results = evaluate_package(
            package_dir or DEFAULT_PACKAGE, prepared, splits, decoders, exclude=exclude
        )
    return results, write_report(results, params.path(out_dir or params.evaluate.out_dir))


def tune_package_decoder(params: Params, package_dir: str | Path, split: str = "val") -> dict:
    """Tune a package's beam search on ``split``: LM order (``lm.tune_orders``, LMs from the
    training transcripts), LM weight and word bonus; the best are stored in the package."""
    from mouthmap.evaluation.evaluate import tune_decoder

    orders = params.lm.tune_orders
    return tune_decoder(
        package_dir, params.path(params.data.prepared_dir), split=split,
        exclude=quarantined_ids(params),
        lm_orders=orders, transcripts=train_transcripts(params) if orders else (),
    )  # fmt: skip


def release_model(
    params: Params,
    checkpoint_path: str | Path,
    out_dir: str | Path,
    lm_dir: str | Path | None = None,
    notes: str | None = None,
    tune: bool = True,
) -> tuple[Path, dict]:
    """Checkpoint -> a finished package: export, tune the decoder on val, score val and test,
    record size, cost and training facts in ``mouthmap.json``, keep a slim copy of the
    checkpoint (``checkpoint.pt``) and write the model card."""
    from mouthmap import model_card
    from mouthmap.models.summary import summarise
    from mouthmap.package import ModelPackage, keep_checkpoint, update_meta
    from mouthmap.train import checkpoint

    state = checkpoint.load(checkpoint_path)
    pkg = export_model(params, checkpoint_path, out_dir, lm_dir)
    if tune:
        tune_package_decoder(params, pkg.root)
    from mouthmap.runtime.runner import OnnxRunner

    # a model with a word head is also scored by it alone (the slot decoder)
    words = ("words",) if OnnxRunner(pkg.model_path).has_word_head else ()
    results, _ = evaluate_model(params, pkg.root, decoders=("greedy", "beam", *words))
    cost = summarise(state["model_spec"] or state["model_name"])
    history = state.get("history", [])
    seconds = sum(h.get("epoch_seconds", 0.0) for h in history)
    evaluation = {
        split: {
            dec: {k: r[k] for k in ("clips", "wer", "cer", "slots", "confusions")}
            for dec, r in results[split].items()
        }
        for split in ("val", "test")
    }
    evaluation["decode_ms_per_clip"] = results["decode_ms_per_clip"]
    pkg = keep_checkpoint(ModelPackage.load(pkg.root), checkpoint_path)
    meta = update_meta(
        pkg,
        size={
            "parameters": cost.parameters,
            "fp32_onnx_mb": pkg.fp32_path.stat().st_size / 1e6,
            "gmacs_per_second": cost.gmacs_per_second,
        },
        training={
            "epochs": len(history),
            "objective": state.get("objective_name", "ctc"),
            "hardware": state.get("hardware"),
            "wall_time": f"{seconds / 3600:.2f} h ({seconds:.0f} s over {len(history)} epochs)",
            "train_clips": state.get("params", {}).get("train", {}).get("limit_train")
            or "all of the train split",
            "best_val_wer": state.get("best_wer"),
            "best_val_words_wer": state.get("best_words_wer"),
            "notes": notes,
        },
        evaluation=evaluation,
    ).meta
    model_card.write(pkg.root, meta)
    return pkg.root, results


@dataclass
class HeldOutReading:
    id: str
    truth: str
    text: str
    elapsed_ms: float


def held_out_clips(
    params: Params,
    corpus_dir: str | Path | None = None,
    splits: Sequence[str] = ("test",),
    limit: int | None = None,
) -> list[corpus.Clip]:
    """The clips of ``corpus_dir`` (default: the imported corpus) in the held-out
    ``splits`` of the committed split file (sentences no model saw in training), with
    their alignments. ``limit`` picks that many spread evenly over the split (every k-th
    in id order), so a handful still covers GRID's commands, colours and letters."""
    assignment = splits_mod.load(params.path(params.data.splits))
    root = Path(corpus_dir) if corpus_dir is not None else params.path(params.data.raw_dir)
    found = [
        c for c in corpus.discover(root) if assignment.get(c.id) in splits and c.align is not None
    ]
    if limit is None or limit >= len(found):
        return found
    if limit <= 0:
        return []
    return [found[i * len(found) // limit] for i in range(limit)]


def read_held_out(
    params: Params, package_dir: str | Path | None = None, splits: Sequence[str] = ("test",)
) -> list[HeldOutReading]:
    """Transcribe the raw videos of the imported corpus's held-out clips (sentences the
    model never saw in training) with a model package, next to their true transcripts."""
    from mouthmap.package import DEFAULT_PACKAGE
    from mouthmap.runtime.transcriber import Transcriber

    runner = Transcriber(package_dir or DEFAULT_PACKAGE, decoder="beam")
    out = []
    for clip in held_out_clips(params, splits=splits):
        t = runner.transcribe(clip.video)
        truth = corpus.transcript(corpus.read_align(clip.align))
        out.append(HeldOutReading(clip.id, truth, t.text, t.elapsed_ms))
    return out


def distill(params: Params, resume: bool = False, progress: bool = True):
    """Train the student (``model``) with CTC + knowledge distillation (``distill``) from
    frozen teacher checkpoints into ``distill.out_dir``."""
    from mouthmap.train.distill import distill as run_distillation

    return run_distillation(params, resume=resume, progress=progress)
