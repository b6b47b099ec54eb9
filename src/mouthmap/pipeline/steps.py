"""The pipeline's steps as plain functions over directories: what each Kubeflow component
calls. They wire artifact paths into :class:`Params` and call :mod:`mouthmap.stages`,
so a step does exactly what the CLI command of the same stage does.

Every step takes ``config`` (the output of ``check-params``) and returns a dict of
metrics (numbers only) that the component logs to its ``Metrics`` artifact.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mouthmap.config import Params
from mouthmap.pipeline.params import REPO_ROOT, load_config, params_from_config

Config = str | dict[str, Any]  # check-params' output: JSON text (or the dict)


def _params(
    config: Config,
    work: str | Path,
    prepared: str | Path | None = None,
    quarantined: Iterable[str] = (),
) -> Params:
    """Params of a step: the prepared data at ``prepared``, every output under ``work``,
    the validation's quarantine list in a file where :mod:`mouthmap.stages` reads it."""
    params = params_from_config(config)
    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    metrics = w / "data_quality.json"
    metrics.write_text(json.dumps({"quarantined": sorted(quarantined)}) + "\n")
    params.validate_.metrics = str(metrics)
    params.validate_.data_docs_dir = str(w / "data_docs")
    if prepared is not None:
        params.data.prepared_dir = str(prepared)
    params.lm.dir = str(w / "lm")
    params.evaluate.out_dir = str(w / "eval")
    params.train.out_dir = str(w / "train")
    params.distill.out_dir = str(w / "distill")
    params.package.dir = str(w / "package")
    params.quantize.out_dir = str(w / "package_int8")
    registry_uri = load_config(config)["extras"].get("registry_uri") or None
    if params.train.mlflow_uri is None and registry_uri:
        params.train.mlflow_uri = registry_uri  # training runs beside the registered versions
    return params


def _timed(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        out["step_seconds"] = round(time.perf_counter() - t0, 2)
        return out

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


# --- data ------------------------------------------------------------------------------------


@_timed
def import_data(config: Config, corpus_dir: str) -> dict[str, float]:
    """Copy the corpus named by ``data.source`` (relative to the repo / image root) into
    ``corpus_dir`` in the project layout."""
    from mouthmap import stages

    params = _params(config, Path(corpus_dir).parent / "work-import")
    params.data.raw_dir = str(corpus_dir)
    report = stages.import_corpus(params)
    if report.failed:
        raise RuntimeError(f"importing {params.data.source} failed: {report.summary()}")
    return {"files_copied": float(report.copied), "mb_copied": report.bytes_copied / 1e6}


@_timed
def prepare_data(config: Config, corpus_dir: str, prepared_dir: str) -> dict[str, float]:
    """Mouth ROIs and audio features for every clip (the prepare stage)."""
    from mouthmap import stages

    params = _params(config, Path(prepared_dir).parent / "work-prepare", prepared_dir)
    params.data.raw_dir = str(corpus_dir)
    report = stages.prepare_corpus(params, progress=False)
    return {
        "prepared": float(report.prepared), "rejected": float(len(report.rejected)),
        "clips_per_second": float(report.clips_per_second), "miss_rate": float(report.miss_rate),
        "cache_mb": report.cache_bytes / 1e6,
    }  # fmt: skip


def validate_data(
    config: Config, prepared_dir: str, docs_dir: str, html_path: str
) -> tuple[dict[str, float], list[str]]:
    """Great Expectations over the manifest; raises when the data is not usable, else
    returns the metrics and the quarantined clip ids (left out of training)."""
    from mouthmap import stages

    t0 = time.perf_counter()
    params = _params(config, Path(docs_dir).parent / "work-validate", prepared_dir)
    params.validate_.data_docs_dir = str(docs_dir)
    quality = stages.validate_corpus(params)
    write_data_docs_page(quality.report, Path(docs_dir), Path(html_path))
    if not quality.usable:
        raise ValueError(f"the data is not usable for training:\n{quality.report.summary()}")
    r = quality.report
    metrics = {
        "clips": float(r.n_clips), "bad_clips": float(r.n_bad),
        "quarantined": float(len(quality.quarantined)), "success": float(r.success),
        "step_seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    return metrics, quality.quarantined


def write_data_docs_page(report, docs_dir: Path, out: Path) -> Path:
    """One self-contained page for the Kubeflow HTML viewer: the GE validation page when it
    is a single file, else a summary with every expectation and bad clip."""
    pages = sorted((docs_dir / "validations").rglob("*.html")) if docs_dir.is_dir() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(
        f"<tr><td>{html.escape(rule)}</td><td>{'pass' if ok else '<b>FAIL</b>'}</td></tr>"
        for rule, ok in report.expectations.items()
    )
    bad = "".join(
        f"<li><code>{html.escape(cid)}</code>: {html.escape('; '.join(rs))}</li>"
        for cid, rs in report.problems.items()
    )
    verdict = "all clips pass" if report.success else f"{report.n_bad} of {report.n_clips} bad"
    page = (
        "<!doctype html><meta charset=utf-8><title>MouthMap data validation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:3px 8px;"
        "border-bottom:1px solid #ddd}</style><h1>Data validation (Great Expectations)</h1>"
        f"<p><b>{verdict}</b> ({report.n_clips} clips)</p><table>{rows}</table>"
        f"<ul>{bad}</ul><p>Full data docs: the <code>data_docs</code> artifact "
        f"({len(pages)} validation page(s), open <code>index.html</code>).</p>"
    )
    out.write_text(page + "\n")
    return out


# --- models ----------------------------------------------------------------------------------


def _train_metrics(result) -> dict[str, float]:
    last = result.history[-1] if result.history else {}
    first = result.history[0] if result.history else {}
    out = {
        "best_val_wer": float(result.best_val_wer), "epochs": float(result.epochs_run),
        "train_seconds": float(result.seconds),
    }  # fmt: skip
    for key in ("train_loss", "loss"):
        if key in last:
            out["first_train_loss"], out["last_train_loss"] = float(first[key]), float(last[key])
            break
    return out


def _copy_checkpoint(result, model_dir: str) -> None:
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(result.best_checkpoint, out / "best.pt")


@_timed
def train_model(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    model_dir: str,
    model_name: str,
    model_spec: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train one model with CTC (the visual teacher, the audio teacher) -> ``best.pt``."""
    from mouthmap.train.trainer import train

    work = Path(model_dir).parent / f"work-{Path(model_dir).name}"
    params = _params(config, work, prepared_dir, quarantined)
    params.model.name, params.model.spec = model_name, model_spec or None
    params.train.init_from = None
    result = train(params, progress=False, run_name=f"pipeline-{model_name}")
    _copy_checkpoint(result, model_dir)
    return _train_metrics(result)


@_timed
def distil_student(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    visual_teacher_dir: str | None,
    audio_teacher_dir: str | None,
    model_dir: str,
) -> dict[str, float]:
    """The student (``model.*``) with CTC + response and cross-modal KD from the teachers."""
    from mouthmap import stages

    work = Path(model_dir).parent / "work-distil"
    params = _params(config, work, prepared_dir, quarantined)
    d = params.distill
    d.visual_teacher = str(Path(visual_teacher_dir) / "best.pt") if visual_teacher_dir else None
    d.audio_teacher = str(Path(audio_teacher_dir) / "best.pt") if audio_teacher_dir else None
    result = stages.distill(params, progress=False)
    _copy_checkpoint(result, model_dir)
    return _train_metrics(result)


@_timed
def export_onnx(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    checkpoint_dir: str,
    package_dir: str,
) -> dict[str, float]:
    """Checkpoint -> model package (FP32 ONNX parity-checked, word LM), decoder tuned on val."""
    from mouthmap import stages

    params = _params(config, Path(package_dir).parent / "work-export", prepared_dir, quarantined)
    pkg = stages.export_model(params, Path(checkpoint_dir) / "best.pt", package_dir)
    best = stages.tune_package_decoder(params, pkg.root)
    return {
        "onnx_max_abs_diff": float(pkg.meta["metrics"]["onnx_max_abs_diff"]),
        "fp32_mb": pkg.fp32_path.stat().st_size / 1e6,
        "val_wer_beam_tuned": float(best["wer"]),
    }


@_timed
def quantize(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    package_dir: str,
    checkpoint_dir: str,
    out_dir: str,
) -> dict[str, float]:
    """INT8 (PTQ / PT2E QAT / dynamic per ``quantize.method``); the better by val WER deploys."""
    from mouthmap import stages

    params = _params(config, Path(out_dir).parent / "work-quantize", prepared_dir, quarantined)
    _, report = stages.quantize_model(
        params, package_dir, Path(checkpoint_dir) / "best.pt", out_dir=out_dir, progress=False
    )
    out = {"fp32_mb": report["fp32_bytes"] / 1e6}
    for name, r in report["methods"].items():
        out[f"{name}_mb"] = r["bytes"] / 1e6
        out[f"{name}_ms_per_clip"] = float(r["latency_ms"])
        out[f"{name}_val_wer_greedy"] = float(r["comparison"]["wer_greedy"])
    return out


@_timed
def evaluate_and_bench(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    package_dir: str,
    checkpoint_dir: str,
    teacher_dir: str | None,
    report_dir: str,
    html_path: str,
) -> dict[str, float]:
    """WER/CER per split (greedy, beam+LM) and the PyTorch-vs-ORT benchmark, one report."""
    from mouthmap import stages
    from mouthmap.runtime.bench import BenchSettings, run_bench, write_outputs

    params = _params(config, Path(report_dir) / "work", prepared_dir, quarantined)
    results, (eval_json, eval_md) = stages.evaluate_model(
        params, package_dir, out_dir=Path(report_dir) / "eval"
    )
    extras = load_config(config)["extras"]
    repeats = int(extras.get("bench_repeats", 20))
    settings = BenchSettings(
        repeats=repeats, warmup=min(3, repeats), test_clips=extras.get("bench_test_clips") or None,
        batch_repeats=1 if repeats < 5 else 3, rss=repeats >= 5,
    )  # fmt: skip
    teacher = Path(teacher_dir) / "best.pt" if teacher_dir else None
    bench = run_bench(
        package_dir, params.path(params.data.prepared_dir), Path(checkpoint_dir) / "best.pt",
        teacher, settings, exclude=sorted(quarantined),
    )  # fmt: skip
    _, bench_md, bench_png = write_outputs(bench, Path(report_dir) / "bench")
    _report_page(eval_md.read_text(), bench_md.read_text(), bench_png, Path(html_path))
    out: dict[str, float] = {}
    for split in ("val", "test"):
        for dec, r in results.get(split, {}).items():
            if r.get("wer") is not None:
                out[f"{split}_wer_{dec}"] = float(r["wer"])
                out[f"{split}_cer_{dec}"] = float(r["cer"])
    return out


def _report_page(eval_md: str, bench_md: str, png: Path, out: Path) -> Path:
    """Evaluation and benchmark in one self-contained page (the plot inlined)."""
    import base64

    img = base64.b64encode(png.read_bytes()).decode() if png.is_file() else ""
    page = (
        "<!doctype html><meta charset=utf-8><title>MouthMap evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f8fa;padding:1em;"
        "overflow:auto}</style><h1>Evaluation</h1>"
        f"<pre>{html.escape(eval_md)}</pre><h1>Benchmark</h1><pre>{html.escape(bench_md)}</pre>"
        + (f"<img alt='benchmark' src='data:image/png;base64,{img}'>" if img else "")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page + "\n")
    return out


# --- registry --------------------------------------------------------------------------------


def _registry(config: Config):
    from mouthmap.registry import Registry

    return Registry(load_config(config)["extras"].get("registry_uri") or None)


def _policy(config: Config):
    from mouthmap.registry import load_policy

    path = Path(load_config(config)["extras"].get("gate_policy") or "mlops/gate.yaml")
    return load_policy(path if path.is_absolute() else REPO_ROOT / path)


def register_model(
    config: Config, package_dir: str, metrics: dict[str, float], pipeline_run_id: str
) -> str:
    """Register the package as a new version of ``mouthmap`` (alias challenger)."""
    return (
        _registry(config)
        .register(package_dir, pipeline_run_id=pipeline_run_id, metrics=metrics)
        .version
    )


def gate(
    config: Config,
    prepared_dir: str,
    quarantined: list[str],
    version: str,
    report_dir: str,
    html_path: str,
) -> dict[str, Any]:
    """Challenger vs champion on the fixed split; returns the decision as a dict."""
    from mouthmap.registry import gate_version, write_report

    policy = _policy(config)
    decision = gate_version(
        _registry(config), version, prepared_dir, policy, Path(report_dir) / "packages",
        set(quarantined),
    )  # fmt: skip
    page = write_report(decision, report_dir)
    shutil.copy(page, html_path)
    shutil.rmtree(Path(report_dir) / "packages", ignore_errors=True)
    return decision.as_dict()


def promote(config: Config, version: str, decision: str | Path | dict[str, Any]) -> str:
    """Move the champion alias to ``version`` (re-judged if the champion moved meanwhile);
    ``decision`` is the gate's decision or its ``gate.json``."""
    from mouthmap.registry import Decision, Measurement

    if not isinstance(decision, dict):
        decision = json.loads(Path(decision).read_text())
    d = Decision(
        passed=decision["passed"], reasons=decision["reasons"],
        challenger=Measurement.from_dict(decision["challenger"]),
        champion=Measurement.from_dict(decision["champion"]) if decision["champion"] else None,
        champion_version=decision["champion_version"], policy=decision["policy"],
    )  # fmt: skip
    result = _registry(config).promote(version, policy=_policy(config), decision=d)
    return result.version
