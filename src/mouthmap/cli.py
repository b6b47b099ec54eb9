"""``mouthmap`` command line: a thin edge over :mod:`mouthmap.stages` and friends."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mouthmap.config import DEFAULT_PARAMS, ParamsError, load_params
from mouthmap.dashboard.cli import dashboard_cmd
from mouthmap.images.cli import images_app
from mouthmap.monitor.cli import drift_app
from mouthmap.pipeline.cli import pipeline_app
from mouthmap.registry.cli import registry_app
from mouthmap.serving.cli import register as register_serving

app = typer.Typer(help="MouthMap: lip reading small enough for a phone.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch, prepare and validate the GRID corpus.", no_args_is_help=True)
stack_app = typer.Typer(help="Local backing services on loopback (S3).", no_args_is_help=True)
lm_app = typer.Typer(help="The word n-gram language model for beam search.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo: sizes and compute.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")
app.add_typer(lm_app, name="lm")
app.add_typer(models_app, name="models")
app.add_typer(registry_app, name="registry")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(drift_app, name="drift")
app.add_typer(images_app, name="images")
register_serving(app)  # serve build-repo|up|down|status, stream, proxy, loadtest
app.command("dashboard")(dashboard_cmd)  # Streamlit app (mouthmap.dashboard)

ParamsOpt = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="parameter file")


def _params(path: str, **overrides):
    try:
        return load_params(path, {k: v for k, v in overrides.items() if v is not None})
    except ParamsError as e:
        _fail(str(e))


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _best_epoch(result) -> str:
    """How the selected epoch scored on validation (the word head's WER picks it, if any)."""
    greedy = f"best val WER {result.best_val_wer:.4f}"
    if result.best_val_words_wer is None:
        return greedy
    words = result.best_val_words_wer
    return f"best val WER {words:.4f} (word head; greedy {result.best_val_wer:.4f})"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@app.command()
def version() -> None:
    """Print the MouthMap version."""
    from mouthmap import __version__

    typer.echo(__version__)


# --- data ------------------------------------------------------------------------------------


@data_app.command("fetch")
def data_fetch(
    speakers: list[str] = typer.Option(None, "--speaker", "-s", help="speaker(s), e.g. s1"),
    from_dir: Path = typer.Option(
        None, "--from", help="import a local copy instead of downloading"
    ),
    record_url: str = typer.Option(None, help="Zenodo record API URL of the GRID corpus"),
    params_file: str = ParamsOpt,
) -> None:
    """Download the public GRID corpus (or import a local copy with --from)."""
    from mouthmap import stages

    overrides = {"data.speakers": speakers or None, "fetch.record_url": record_url}
    params = _params(params_file, **overrides)
    try:
        if from_dir is not None:
            report = stages.import_corpus(params, from_dir)
        else:
            report = stages.fetch_corpus(params)
    except (OSError, ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(report.summary() if hasattr(report, "summary") else str(report))
    if getattr(report, "failed", None):
        raise typer.Exit(1)


@data_app.command("prepare")
def data_prepare(
    workers: int = typer.Option(None, "--workers", "-j", help="parallel worker processes"),
    limit: int = typer.Option(None, help="prepare only the first N clips"),
    force: bool = typer.Option(False, help="prepare again even when up to date"),
    params_file: str = ParamsOpt,
) -> None:
    """Decode clips, track the mouth, cache 96x96 ROI sequences and log-mel features."""
    from mouthmap import stages

    params = _params(params_file)
    try:
        report = stages.prepare_corpus(params, workers=workers, limit=limit, force=force)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(
        f"prepared {report.prepared} clips, skipped {report.skipped} up to date, "
        f"{len(report.rejected)} rejected, in {report.seconds:.1f} s "
        f"({report.clips_per_second:.2f} clips/s); mouth missed in "
        f"{report.frames_missed}/{report.frames} frames ({100 * report.miss_rate:.2f}%); "
        f"cache {_mb(report.cache_bytes)}; manifest {report.manifest}"
    )
    for cid, reason in report.rejected:
        typer.secho(f"  rejected {cid}: {reason}", fg=typer.colors.YELLOW)


@data_app.command("validate")
def data_validate(params_file: str = ParamsOpt) -> None:
    """Run the Great Expectations suite over the prepared data; non-zero exit when bad."""
    from mouthmap import stages

    params = _params(params_file)
    try:
        quality = stages.validate_corpus(params)
    except FileNotFoundError as e:
        _fail(str(e))
    _report_quality(quality)


@data_app.command("pack")
def data_pack(
    out: Path = typer.Argument(..., help="the pack to write, e.g. grid_s1.tar"),
    crf: int = typer.Option(18, help="H.264 quality: lower is closer to the original, larger"),
    audio: bool = typer.Option(False, help="keep the log-mel features (audio models, KD)"),
    workers: int = typer.Option(2, "--workers", "-j", help="parallel encoders"),
    params_file: str = ParamsOpt,
) -> None:
    """Write the prepared corpus as one compact file (ROIs as H.264) for another machine."""
    from tqdm import tqdm

    from mouthmap.data.pack import PackError, pack

    params = _params(params_file)
    prepared, quality = params.path(params.data.prepared_dir), params.path(params.validate_.metrics)
    n = _count_ok(prepared)
    if n is not None and not quality.is_file():
        typer.secho(
            f"warning: no validation report at {quality} (run `mouthmap data validate`): "
            "the pack quarantines no clip",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    try:
        report = pack(
            prepared, out, quality, crf=crf, audio=audio,
            workers=workers, progress=lambda it: tqdm(it, total=n, desc="pack", unit="clip"),
        )  # fmt: skip
    except (PackError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(
        f"packed {report.clips} clips into {out} ({report.mb:.1f} MB, {report.seconds:.0f} s); "
        f"mean absolute pixel error {report.mean_abs_error:.2f} of 255 (crf {crf})"
    )


@data_app.command("unpack")
def data_unpack(
    pack_file: Path = typer.Argument(..., help="a pack written by `mouthmap data pack`"),
    workers: int = typer.Option(4, "--workers", "-j", help="parallel decoders"),
    params_file: str = ParamsOpt,
) -> None:
    """Rebuild data.prepared_dir (and the validation report) from a pack; replaces them."""
    from tqdm import tqdm

    from mouthmap.data.pack import PackError, unpack

    params = _params(params_file)
    prepared, quality = params.path(params.data.prepared_dir), params.path(params.validate_.metrics)
    try:
        report = unpack(
            pack_file, prepared, quality, workers=workers,
            progress=lambda it: tqdm(it, desc="unpack", unit="clip"),
        )  # fmt: skip
    except PackError as e:
        _fail(str(e))
    typer.echo(f"unpacked {report.clips} clips into {prepared} in {report.seconds:.0f} s")
    if report.removed_report is not None:
        typer.secho(
            f"the pack carries no validation report: removed {report.removed_report}, which"
            " described the replaced cache; run `mouthmap data validate` before training",
            fg="yellow",
        )


def _count_ok(prepared: Path) -> int | None:
    from mouthmap.data.prepare import read_manifest

    try:
        return int((read_manifest(prepared)["status"] == "ok").sum())
    except FileNotFoundError:
        return None


def _report_quality(quality, exit_when_bad: bool = True) -> bool:
    """Print the validation summary; exit 1 (or return False) unless the data is usable."""
    typer.echo(quality.report.summary())
    if quality.report.success:
        return True
    share = 100 * quality.report.n_bad / max(quality.report.n_clips, 1)
    tolerance = 100 * quality.max_bad_fraction
    if quality.usable:
        typer.secho(
            f"{quality.report.n_bad} clips ({share:.1f}%) quarantined: left out of training "
            f"(tolerance {tolerance:.1f}%)",
            fg=typer.colors.YELLOW,
        )
        return True
    typer.secho(
        f"data is bad: {share:.1f}% of clips fail (tolerance {tolerance:.1f}%)",
        fg=typer.colors.RED,
        err=True,
    )
    if exit_when_bad:
        raise typer.Exit(1)
    return False


@data_app.command("summary")
def data_summary(
    as_json: bool = typer.Option(False, "--json"), params_file: str = ParamsOpt
) -> None:
    """Summarise the prepared corpus: clips per split, frames, rejections."""
    from mouthmap.data.prepare import read_manifest

    params = _params(params_file)
    try:
        df = read_manifest(params.path(params.data.prepared_dir))
    except FileNotFoundError as e:
        _fail(str(e))
    ok = df[df["status"] == "ok"]
    info = {
        "clips": int(len(df)),
        "ok": int(len(ok)),
        "rejected": int((df["status"] != "ok").sum()),
        "per_split": {k: int(v) for k, v in ok["split"].value_counts().sort_index().items()},
        "frames": int(ok["n_frames"].sum()),
        "hours_of_video": round(float(ok["n_frames"].sum()) / 25 / 3600, 3),
        "mean_roi_found": round(float(df["roi_found_frac"].mean()), 4) if len(df) else 0.0,
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    for k, v in info.items():
        typer.echo(f"{k:>16}: {v}")


# --- training --------------------------------------------------------------------------------


@app.command()
def train(
    model: str = typer.Option(None, "--model", "-m", help="model name (default: model.name)"),
    epochs: int = typer.Option(None, help="override train.epochs"),
    limit_train: int = typer.Option(None, help="use only the first N training clips"),
    init_from: str = typer.Option(None, help="start from this checkpoint's weights (fine-tune)"),
    out: str = typer.Option(None, "--out", help="output directory (default: train.out_dir)"),
    mlflow_uri: str = typer.Option(
        None, help="MLflow tracking URI (default: local SQLite; off: none)"
    ),
    max_minutes: float = typer.Option(
        None, help="wall-time budget: start no epoch that would end past it"
    ),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    params_file: str = ParamsOpt,
) -> None:
    """Train a model with CTC; works alone or under `torchrun --nproc_per_node N`."""
    from mouthmap.train.checkpoint import CheckpointError
    from mouthmap.train.trainer import train as run_training

    overrides = {
        "model.name": model, "train.epochs": epochs, "train.limit_train": limit_train,
        "train.init_from": init_from, "train.out_dir": out, "train.mlflow_uri": mlflow_uri,
        "train.max_minutes": max_minutes,
    }  # fmt: skip
    params = _params(params_file, **overrides)
    if model:
        params.model.spec = None  # a name on the command line wins over a spec in the file
    try:
        result = run_training(params, resume=resume)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        _fail(str(e))
    if result.history:
        how = "stopped early" if result.stopped_early else "all epochs"
        if result.out_of_time:
            how = f"stopped at the {params.train.max_minutes:g}-minute limit"
        typer.echo(
            f"trained {params.model.name} for {result.epochs_run} epochs on {result.device} in "
            f"{result.seconds:.0f} s; {_best_epoch(result)} ({how}); "
            f"checkpoint {result.best_checkpoint}"
        )


@lm_app.command("build")
def lm_build(
    out: Path = typer.Option(None, "--out", help="directory for lm.arpa + unigrams.txt"),
    order: int = typer.Option(None, help="n-gram order (default: lm.order)"),
    params_file: str = ParamsOpt,
) -> None:
    """Estimate the word LM from the training transcripts (never from val/test)."""
    from mouthmap import stages

    params = _params(params_file, **{"lm.order": order})
    try:
        files = stages.build_language_model(params, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(
        f"wrote {files.arpa} (order {params.lm.order}, {len(files.words())} words) "
        f"and {files.unigrams}"
    )


@lm_app.command("tune")
def lm_tune(
    model: Path = typer.Option(..., help="model package whose decoder settings to tune"),
    split: str = typer.Option("val", help="split to tune on (never test)"),
    params_file: str = ParamsOpt,
) -> None:
    """Grid-search the LM order (lm.tune_orders; the winner's LM replaces the package's),
    LM weight (alpha) and word bonus (beta) on a split; store the best."""
    from mouthmap import stages
    from mouthmap.package import PackageError

    params = _params(params_file)
    try:
        best = stages.tune_package_decoder(params, model, split=split)
    except (ValueError, FileNotFoundError, PackageError) as e:
        _fail(str(e))
    order = f"LM order {best['lm_order']}, " if best["lm_order"] else ""
    if best["word_weight"]:
        order = f"word head weight {best['word_weight']}, {order}"
    typer.echo(
        f"best on {best['clips']} {split} clips: {order}alpha {best['alpha']}, "
        f"beta {best['beta']}{', grammar rescoring' if best['grammar'] else ''} "
        f"(beam+LM WER {best['wer']:.4f}); stored in {model}"
    )


@app.command()
def export(
    checkpoint: Path = typer.Option(None, help="checkpoint (default: train.out_dir/best.pt)"),
    out: Path = typer.Option(None, "--out", help="package directory (default: package.dir)"),
    lm: Path = typer.Option(None, help="LM directory (default: build it from train transcripts)"),
    params_file: str = ParamsOpt,
) -> None:
    """Checkpoint -> model package: FP32 ONNX (checked, parity-tested), LM, mouthmap.json."""
    from mouthmap import stages
    from mouthmap.train.checkpoint import CheckpointError

    params = _params(params_file)
    ckpt = checkpoint or params.path(params.train.out_dir) / "best.pt"
    try:
        pkg = stages.export_model(params, ckpt, out or params.path(params.package.dir), lm)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        _fail(str(e))
    size = pkg.model_path.stat().st_size
    diff = pkg.meta["metrics"]["onnx_max_abs_diff"]
    typer.echo(f"wrote {pkg.root} (model.onnx {_mb(size)}; ONNX vs PyTorch max |diff| {diff:.1e})")


@app.command()
def release(
    checkpoint: Path = typer.Option(..., help="the trained (or distilled) checkpoint"),
    out: Path = typer.Option(None, "--out", help="package directory (default: the released one)"),
    lm: Path = typer.Option(None, help="LM directory (default: build it from train transcripts)"),
    notes: str = typer.Option(None, help="a line for the model card's training section"),
    params_file: str = ParamsOpt,
) -> None:
    """Checkpoint -> finished package: export, tune the decoder on val, score val and test,
    write size/cost/training facts and a model card (README.md) into it."""
    from mouthmap import stages
    from mouthmap.package import DEFAULT_PACKAGE, PackageError
    from mouthmap.train.checkpoint import CheckpointError

    params = _params(params_file)
    try:
        root, _ = stages.release_model(params, checkpoint, out or DEFAULT_PACKAGE, lm, notes)
    except (ValueError, FileNotFoundError, CheckpointError, PackageError) as e:
        _fail(str(e))
    typer.echo((root / "README.md").read_text())
    typer.echo(f"released {root}")


@app.command()
def quantize(
    model: Path = typer.Option(None, help="FP32 model package (default: package.dir)"),
    checkpoint: Path = typer.Option(
        None, help="its checkpoint, for QAT (default: the package's checkpoint.pt, else train best)"
    ),
    method: str = typer.Option(None, help="all | ptq | qat | dynamic (default: quantize.method)"),
    out: Path = typer.Option(None, "--out", help="quantized package (default: quantize.out_dir)"),
    in_place: bool = typer.Option(False, help="quantize the package itself, not a copy"),
    params_file: str = ParamsOpt,
) -> None:
    """INT8 for the edge: PTQ / QAT / dynamic variants, compared with FP32 on val; the better
    of PTQ and QAT by WER becomes model.onnx (model_fp32.onnx stays)."""
    from mouthmap import stages
    from mouthmap.package import PackageError
    from mouthmap.train.checkpoint import CheckpointError

    params = _params(params_file, **{"quantize.method": method})
    src = model or params.path(params.package.dir)
    try:
        root, report = stages.quantize_model(
            params, src, checkpoint, out_dir=src if in_place else out,
            log=lambda m: typer.echo(m, err=True),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, CheckpointError, PackageError) as e:
        _fail(str(e))
    fp32_mb = report["fp32_bytes"]
    typer.echo(f"{'method':>8} {'MB':>6} {'x smaller':>9} {'ms/clip':>7} {'WER greedy':>10} "
               f"{'WER beam':>9} {'agree':>6} {'frames':>7}")  # fmt: skip
    for name, r in report["methods"].items():
        c = r["comparison"]
        beam = f"{c['wer_beam']:.4f}" if c["wer_beam"] is not None else "n/a"
        typer.echo(
            f"{name:>8} {r['bytes'] / 1e6:6.2f} {fp32_mb / r['bytes']:9.1f} "
            f"{r['latency_ms']:7.1f} {c['wer_greedy']:10.4f} {beam:>9} "
            f"{c['transcript_agreement']:6.2f} {c['frame_agreement']:7.3f}"
        )
    c = next(iter(report["methods"].values()))["comparison"]
    beam = f"{c['fp32_wer_beam']:.4f}" if c["fp32_wer_beam"] is not None else "n/a"
    typer.echo(f"{'fp32':>8} {fp32_mb / 1e6:6.2f} {1:9.1f} {report['fp32_latency_ms']:7.1f} "
               f"{c['fp32_wer_greedy']:10.4f} {beam:>9}")  # fmt: skip
    typer.echo(
        f"model.onnx <- {report['chosen']} ({report['selection_split']} split, "
        f"{c['clips']} clips; ms/clip: a {report['latency_frames']}-frame clip, one thread); "
        f"package {root}"
    )


@app.command()
def evaluate(
    model: str = typer.Option(None, help="model package (default: the released one)"),
    checkpoint: Path = typer.Option(
        None, help="score a training checkpoint instead (any model, e.g. the audio teacher)"
    ),
    split: list[str] = typer.Option(["val", "test"], "--split", help="split(s) to score"),
    decoder: list[str] = typer.Option(
        ["greedy", "beam"],
        "--decoder",
        help="greedy, beam and/or words (slot decoding by the model's word head, if it has one)",
    ),  # fmt: skip
    out: Path = typer.Option(None, "--out", help="report directory (default: reports/eval)"),
    params_file: str = ParamsOpt,
) -> None:
    """WER/CER and GRID slot error rates per split, greedy and beam+LM (JSON + markdown)."""
    from mouthmap import stages
    from mouthmap.package import PackageError
    from mouthmap.train.checkpoint import CheckpointError

    params = _params(params_file)
    try:
        results, (json_path, md_path) = stages.evaluate_model(
            params, model, split, decoder, out_dir=out, checkpoint_path=checkpoint
        )
    except (ValueError, FileNotFoundError, PackageError, CheckpointError) as e:
        _fail(str(e))
    typer.echo(md_path.read_text())
    typer.echo(f"wrote {json_path} and {md_path}")


@app.command()
def transcribe(
    paths: list[Path] = typer.Argument(..., help="video file(s)"),
    model: str = typer.Option(None, help="model package (default: the released one)"),
    decoder: str = typer.Option("beam", help="greedy | beam (beam search + KenLM)"),
    provider: str = typer.Option(
        "cpu",
        help="ONNX Runtime execution provider: cpu | nnapi | qnn | coreml | cuda "
        "(one this build lacks falls back to cpu with a warning)",
    ),  # fmt: skip
    fp32: bool = typer.Option(False, help="run model_fp32.onnx instead of model.onnx (INT8)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per input and line"),
) -> None:
    """Read lips: raw video in, text out (the same mouth-ROI preparation as training)."""
    import warnings

    from mouthmap.package import DEFAULT_PACKAGE, PackageError
    from mouthmap.runtime.runner import ProviderFallbackWarning
    from mouthmap.runtime.transcriber import TranscribeError, Transcriber

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ProviderFallbackWarning)
            runner = Transcriber(
                model or DEFAULT_PACKAGE, decoder=decoder, provider=provider,
                model_file="model_fp32.onnx" if fp32 else None,
            )  # fmt: skip
    except (PackageError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    for w in caught:
        typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    failed = 0
    for path in paths:
        try:
            t = runner.transcribe(path)
        except TranscribeError as e:
            failed += 1
            if as_json:
                typer.echo(json.dumps({"path": str(path), "error": str(e)}))
            else:
                typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            continue
        if as_json:
            typer.echo(json.dumps(t.as_dict()))
        else:
            typer.echo(f"{t.path}: {t.text}")
    if failed:
        raise typer.Exit(1)


@app.command()
def bench(
    model: Path = typer.Option(None, help="model package (default: quantize.out_dir)"),
    checkpoint: Path = typer.Option(None, help="the student's checkpoint: the PyTorch row"),
    teacher: Path = typer.Option(None, help="teacher checkpoint (missing: untrained architecture)"),
    out: Path = typer.Option(Path("reports/bench"), "--out", help="bench.json/.md/.png here"),
    repeats: int = typer.Option(20, help="timed runs per latency figure"),
    test_clips: int = typer.Option(None, help="score only N test clips (default: all)"),
    frames: int = typer.Option(75, help="frames per timed clip (75: a 3 s GRID clip)"),
    quick: bool = typer.Option(False, help="a smoke run: 3 repeats, 4 test clips, batch 2"),
    params_file: str = ParamsOpt,
) -> None:
    """PyTorch FP32 vs ONNX Runtime FP32 / INT8 (PTQ, QAT, dynamic) vs the teacher, side by
    side: size, parameters, latency p50/p95 at 1 and 2 threads, throughput, memory, test WER."""
    from mouthmap import stages
    from mouthmap.package import PackageError
    from mouthmap.runtime.bench import BenchSettings, run_bench, write_outputs
    from mouthmap.train.checkpoint import CheckpointError

    params = _params(params_file)
    settings = BenchSettings(repeats=repeats, test_clips=test_clips, frames=frames)
    if quick:
        settings = BenchSettings(repeats=3, warmup=1, batch=2, batch_repeats=1,
                                 test_clips=test_clips or 4, frames=frames)  # fmt: skip
    try:
        report = run_bench(
            model or params.path(params.quantize.out_dir), params.path(params.data.prepared_dir),
            checkpoint, teacher, settings, exclude=sorted(stages.quarantined_ids(params)),
            log=lambda m: typer.echo(m, err=True),
        )  # fmt: skip
        paths = write_outputs(report, out)
    except (ValueError, FileNotFoundError, CheckpointError, PackageError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(paths[1].read_text())
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@app.command("export-mobile")
def export_mobile_cmd(
    model: Path = typer.Option(None, help="model package (default: quantize.out_dir)"),
    onnx_file: str = typer.Option("model.onnx", "--file", help="which ONNX file of the package"),
    out: Path = typer.Option(None, "--out", help="output directory (default: PACKAGE/mobile)"),
    frames: int = typer.Option(75, help="clip length the fixed-shape model is made for"),
    params_file: str = ParamsOpt,
) -> None:
    """The Android (NNAPI) path without a phone: fixed-shape ONNX, ORT-format model and
    ONNX Runtime's mobile-usability / NNAPI partition report."""
    from mouthmap.package import ModelPackage, PackageError
    from mouthmap.runtime.mobile import export_mobile

    params = _params(params_file)
    try:
        pkg = ModelPackage.load(model or params.path(params.quantize.out_dir))
        art = export_mobile(pkg.root / onnx_file, out or pkg.root / "mobile", frames=frames)
    except (PackageError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    n = art.nnapi
    if n:
        typer.echo(
            f"NNAPI: {n['supported_nodes']}/{n['nodes']} nodes in {n['partitions']} partition(s), "
            f"ORT's verdict {n['suitability']}; unsupported: {', '.join(n['unsupported_ops'])}; "
            f"Conv3d nodes (NNAPI runs 2-D Conv only): {n['conv3d_nodes']}"
        )
    typer.echo(f"ORT format model: {art.ort_model}\nusability report: {art.usability_report}")
    for note in art.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    for e in art.errors:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    if art.errors:
        raise typer.Exit(1)


@models_app.command("summary")
def models_summary(
    seconds: float = typer.Option(1.0, help="MACs are counted for this much video (25 fps)"),
    markdown: bool = typer.Option(False, help="print a markdown table"),
) -> None:
    """Parameters, FP32 size and MACs per second of video of every model and combination."""
    from mouthmap.models import summary

    rows = [summary.summarise(m, seconds) for m in summary.all_combinations()]
    typer.echo(summary.markdown_table(rows) if markdown else summary.format_table(rows))


@models_app.command("slim")
def models_slim(
    checkpoint: Path = typer.Argument(..., help="training checkpoint, e.g. runs/train/best.pt"),
    out: Path = typer.Argument(..., help="where to write the slim copy"),
) -> None:
    """Copy a checkpoint without its optimiser state: a third of the size, for sharing a
    teacher or a fine-tune's starting point (it cannot resume training)."""
    from mouthmap.train import checkpoint as ckpt

    try:
        ckpt.slim(checkpoint, out)
    except ckpt.CheckpointError as e:
        _fail(str(e))
    typer.echo(f"wrote {out} ({_mb(out.stat().st_size)}, from {_mb(checkpoint.stat().st_size)})")


@app.command()
def distill(
    visual_teacher: str = typer.Option(
        None, help="visual teacher: a checkpoint or a model package directory (distill.*)"
    ),
    audio_teacher: str = typer.Option(None, help="audio teacher checkpoint (distill.*)"),
    epochs: int = typer.Option(None, help="override train.epochs"),
    limit_train: int = typer.Option(None, help="use only the first N training clips"),
    init_from: str = typer.Option(None, help="start from this checkpoint's weights (fine-tune)"),
    out: str = typer.Option(None, "--out", help="output directory (default: distill.out_dir)"),
    mlflow_uri: str = typer.Option(
        None, help="MLflow tracking URI (default: local SQLite; off: none)"
    ),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    params_file: str = ParamsOpt,
) -> None:
    """Train the student (model.*) with CTC + knowledge distillation from frozen teachers."""
    from mouthmap import stages
    from mouthmap.train.checkpoint import CheckpointError

    overrides = {
        "distill.visual_teacher": visual_teacher, "distill.audio_teacher": audio_teacher,
        "train.epochs": epochs, "train.limit_train": limit_train, "distill.out_dir": out,
        "train.init_from": init_from,
        "train.mlflow_uri": mlflow_uri,
    }  # fmt: skip
    params = _params(params_file, **overrides)
    try:
        result = stages.distill(params, resume=resume)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        _fail(str(e))
    if result.history:
        typer.echo(
            f"distilled into {params.model.name} for {result.epochs_run} epochs on "
            f"{result.device} in {result.seconds:.0f} s; {_best_epoch(result)}; "
            f"checkpoint {result.best_checkpoint}"
        )


# --- stack -----------------------------------------------------------------------------------


@stack_app.command("up")
def stack_up_cmd(
    s3_port: int = typer.Option(8333, help="S3 port on 127.0.0.1 (0: any free port)"),
    state_dir: Path = typer.Option(None, help="where logs, pid files and data go"),
    mlflow_port: int = typer.Option(5000, help="MLflow server port on 127.0.0.1 (0: any free)"),
    mlflow: bool = typer.Option(True, help="start the MLflow tracking + registry server"),
    triton: bool = typer.Option(True, help="start Triton with the streaming model"),
    model: Path = typer.Option(None, help="model package Triton serves (default: the released)"),
    triton_port: int = typer.Option(8001, help="Triton gRPC port (HTTP -1, metrics +1; 0: free)"),
) -> None:
    """Start SeaweedFS S3 on loopback with the dvc and mlflow buckets, MLflow on it, and
    Triton serving the streaming model."""
    from mouthmap.package import DEFAULT_PACKAGE
    from mouthmap.stack import StackError, stack_up

    triton_model = (model or DEFAULT_PACKAGE) if triton else None
    if triton and model is None and not (DEFAULT_PACKAGE / "mouthmap.json").is_file():
        typer.echo(f"Triton: skipped, no released model at {DEFAULT_PACKAGE} (pass --model DIR)")
        triton_model = None
    try:
        port = mlflow_port if mlflow else None
        info = stack_up(state_dir=state_dir, s3_port=s3_port, mlflow_port=port,
                        triton_model=triton_model, triton_grpc_port=triton_port)  # fmt: skip
    except (StackError, OSError, TimeoutError, ValueError) as e:
        _fail(str(e))
    state = "already running" if info.reused else "started"
    typer.echo(f"S3 {state} at {info.endpoint_url} (buckets: {', '.join(info.buckets)})")
    if info.mlflow_uri:
        typer.echo(f"MLflow tracking + registry at {info.mlflow_uri} (artifacts on the S3)")
    if info.triton_grpc:
        typer.echo(f"Triton gRPC at {info.triton_grpc} (mouthmap stream VIDEO --url ...)")
    typer.echo('point DVC, boto3 and MLflow at it with: eval "$(mouthmap stack env)"')


@stack_app.command("env")
def stack_env_cmd(state_dir: Path = typer.Option(None)) -> None:
    """Print shell exports that point DVC/MLflow/boto3 at the running local stack."""
    from mouthmap.stack import s3_env, stack_status, stack_up

    if not stack_status(state_dir=state_dir)["seaweedfs"].healthy:
        _fail("the stack is not running: `mouthmap stack up`")
    for k, v in s3_env(stack_up(state_dir=state_dir)).items():  # reuses the running one
        typer.echo(f"export {k}={v}")


@stack_app.command("down")
def stack_down_cmd(state_dir: Path = typer.Option(None)) -> None:
    """Stop the local services."""
    from mouthmap.stack import stack_down

    stopped = stack_down(state_dir=state_dir)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status_cmd(state_dir: Path = typer.Option(None)) -> None:
    """Say which local services run, where, and whether they answer; exit 1 if any is down."""
    from mouthmap.stack import stack_status

    services = stack_status(state_dir=state_dir)
    for st in services.values():
        state = "healthy" if st.healthy else ("running, not answering" if st.running else "down")
        typer.echo(f"{st.name:>10}: {state}  {st.endpoint or ''}  (log: {st.log})")
    if not all(st.healthy for st in services.values()):
        raise typer.Exit(1)


# --- demo ------------------------------------------------------------------------------------

demo_app = typer.Typer(
    help="The end-to-end demo: stack, pipeline, gate, serve, stream, dashboard "
    "(`mouthmap demo`; `mouthmap demo down` stops it).",
    invoke_without_command=True,
)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
def demo(
    ctx: typer.Context,
    pipeline: bool = typer.Option(True, help="run the quick training pipeline (kfp.local)"),
    profile: str = typer.Option("quick", help="pipeline profile: quick | full | FILE"),
    sets: list[str] = typer.Option(None, "--set", "-s", help="a pipeline parameter NAME=VALUE"),
    baseline: Path = typer.Option(
        None, help="package registered as champion when there is none (default: the released)"
    ),
    clips_from: Path = typer.Option(
        None,
        help="corpus of the streamed test clips (default: ../shared/data/grid, else the sample)",
    ),  # fmt: skip
    clips: int = typer.Option(8, help="held-out test clips to stream through Triton"),
    realtime: bool = typer.Option(False, help="stream each clip at 25 fps, like a camera"),
    dashboard: bool = typer.Option(True, help="start the dashboard in the background"),
    dashboard_port: int = typer.Option(8501, help="its port (taken or 0: a free one)"),
    s3_port: int = typer.Option(8333, help="S3 port (0: any free)"),
    mlflow_port: int = typer.Option(5000, help="MLflow port (0: any free)"),
    triton_port: int = typer.Option(8001, help="Triton gRPC port (0: any free)"),
    state_dir: Path = typer.Option(None, help="the stack's state dir (logs, pids)"),
    params_file: str = ParamsOpt,
) -> None:
    """Start the local stack (S3, MLflow, Triton), run the training pipeline on the quick
    profile, gate and register its model, serve the champion, stream held-out clips over
    gRPC (transcript, truth, WER) and start the dashboard. Re-running reuses what runs."""
    if ctx.invoked_subcommand is not None:
        return
    from mouthmap.config import ParamsError
    from mouthmap.demo import DemoError, DemoOptions, run_demo, summary
    from mouthmap.package import DEFAULT_PACKAGE
    from mouthmap.pipeline.runner import parse_assignments

    try:
        assignments = parse_assignments(sets or [])
    except ParamsError as e:
        _fail(str(e))
    opts = DemoOptions(
        state_dir=state_dir, baseline=baseline or DEFAULT_PACKAGE, pipeline=pipeline,
        profile=profile, assignments=assignments, corpus=clips_from, clips=clips,
        realtime=realtime, params_file=params_file, s3_port=s3_port, mlflow_port=mlflow_port,
        triton_port=triton_port, dashboard=dashboard, dashboard_port=dashboard_port,
    )  # fmt: skip

    def echo(line: str) -> None:
        bold = line[:1].isdigit() and line[1:2] == "/"
        typer.secho(line, bold=bold)

    try:
        result = run_demo(opts, echo)
    except (DemoError, ParamsError) as e:
        done = getattr(e, "result", None)
        if done is not None and done.steps:
            typer.echo("\n" + done.table())
        down = (
            "make demo-down" if state_dir is None else f"mouthmap demo down --state-dir {state_dir}"
        )
        _fail(f"{e}\n(`{down}` stops what was started)", code=1)
    typer.echo("")
    typer.echo(result.table())
    typer.echo("")
    for line in summary(result):
        typer.echo(line)
    typer.secho(f"demo finished in {result.seconds:.0f} s", fg=typer.colors.GREEN)


@demo_app.command("down")
def demo_down_cmd(state_dir: Path = typer.Option(None, help="the stack's state dir")) -> None:
    """Stop the dashboard and the whole local stack (Triton, MLflow, S3)."""
    from mouthmap.demo import demo_down
    from mouthmap.stack import StackError

    try:
        stopped = demo_down(state_dir)
    except StackError as e:
        _fail(str(e))
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
