"""``mouthmap`` command line: a thin edge over :mod:`mouthmap.stages` and friends."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from mouthmap.config import DEFAULT_PARAMS, ParamsError, load_params

app = typer.Typer(help="MouthMap: lip reading small enough for a phone.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch, prepare and validate the GRID corpus.", no_args_is_help=True)
stack_app = typer.Typer(help="Local backing services on loopback (S3).", no_args_is_help=True)
lm_app = typer.Typer(help="The word n-gram language model for beam search.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo: sizes and compute.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")
app.add_typer(lm_app, name="lm")
app.add_typer(models_app, name="models")

ParamsOpt = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="parameter file")


def _params(path: str, **overrides):
    try:
        return load_params(path, {k: v for k, v in overrides.items() if v is not None})
    except ParamsError as e:
        _fail(str(e))


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


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
    out: str = typer.Option(None, "--out", help="output directory (default: train.out_dir)"),
    mlflow_uri: str = typer.Option(None, help="MLflow tracking URI (default: local SQLite)"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    params_file: str = ParamsOpt,
) -> None:
    """Train a model with CTC; works alone or under `torchrun --nproc_per_node N`."""
    from mouthmap.train.checkpoint import CheckpointError
    from mouthmap.train.trainer import train as run_training

    overrides = {
        "model.name": model, "train.epochs": epochs, "train.limit_train": limit_train,
        "train.out_dir": out, "train.mlflow_uri": mlflow_uri,
    }  # fmt: skip
    params = _params(params_file, **overrides)
    if model:
        params.model.spec = None  # a name on the command line wins over a spec in the file
    try:
        result = run_training(params, resume=resume)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        _fail(str(e))
    if result.history:
        typer.echo(
            f"trained {params.model.name} for {result.epochs_run} epochs on {result.device} in "
            f"{result.seconds:.0f} s; best val WER {result.best_val_wer:.4f} "
            f"({'stopped early' if result.stopped_early else 'all epochs'}); "
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
    """Grid-search the LM weight (alpha) and word bonus (beta) on a split; store the best."""
    from mouthmap import stages
    from mouthmap.evaluation.evaluate import tune_decoder
    from mouthmap.package import PackageError

    params = _params(params_file)
    try:
        best = tune_decoder(
            model, params.path(params.data.prepared_dir), split=split,
            exclude=stages.quarantined_ids(params),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, PackageError) as e:
        _fail(str(e))
    typer.echo(
        f"best on {best['clips']} {split} clips: alpha {best['alpha']}, beta {best['beta']} "
        f"(beam+LM WER {best['wer']:.4f}); stored in {model}/mouthmap.json"
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
def evaluate(
    model: str = typer.Option(None, help="model package (default: the released one)"),
    split: list[str] = typer.Option(["val", "test"], "--split", help="split(s) to score"),
    decoder: list[str] = typer.Option(["greedy", "beam"], "--decoder", help="greedy and/or beam"),
    out: Path = typer.Option(None, "--out", help="report directory (default: reports/eval)"),
    params_file: str = ParamsOpt,
) -> None:
    """WER/CER and GRID slot error rates per split, greedy and beam+LM (JSON + markdown)."""
    from mouthmap import stages
    from mouthmap.package import PackageError

    params = _params(params_file)
    try:
        results, (json_path, md_path) = stages.evaluate_model(
            params, model, split, decoder, out_dir=out
        )
    except (ValueError, FileNotFoundError, PackageError) as e:
        _fail(str(e))
    typer.echo(md_path.read_text())
    typer.echo(f"wrote {json_path} and {md_path}")


@app.command()
def transcribe(
    paths: list[Path] = typer.Argument(..., help="video file(s)"),
    model: str = typer.Option(None, help="model package (default: the released one)"),
    decoder: str = typer.Option("beam", help="greedy | beam (beam search + KenLM)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per input and line"),
) -> None:
    """Read lips: raw video in, text out (the same mouth-ROI preparation as training)."""
    from mouthmap.package import DEFAULT_PACKAGE, PackageError
    from mouthmap.runtime.transcriber import TranscribeError, Transcriber

    try:
        runner = Transcriber(model or DEFAULT_PACKAGE, decoder=decoder)
    except (PackageError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
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


@models_app.command("summary")
def models_summary(
    seconds: float = typer.Option(1.0, help="MACs are counted for this much video (25 fps)"),
    markdown: bool = typer.Option(False, help="print a markdown table"),
) -> None:
    """Parameters, FP32 size and MACs per second of video of every model and combination."""
    from mouthmap.models import summary

    rows = [summary.summarise(m, seconds) for m in summary.all_combinations()]
    typer.echo(summary.markdown_table(rows) if markdown else summary.format_table(rows))


@app.command()
def distill(
    visual_teacher: str = typer.Option(None, help="visual teacher checkpoint (distill.*)"),
    audio_teacher: str = typer.Option(None, help="audio teacher checkpoint (distill.*)"),
    epochs: int = typer.Option(None, help="override train.epochs"),
    limit_train: int = typer.Option(None, help="use only the first N training clips"),
    out: str = typer.Option(None, "--out", help="output directory (default: distill.out_dir)"),
    mlflow_uri: str = typer.Option(None, help="MLflow tracking URI (default: local SQLite)"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    params_file: str = ParamsOpt,
) -> None:
    """Train the student (model.*) with CTC + knowledge distillation from frozen teachers."""
    from mouthmap import stages
    from mouthmap.train.checkpoint import CheckpointError

    overrides = {
        "distill.visual_teacher": visual_teacher, "distill.audio_teacher": audio_teacher,
        "train.epochs": epochs, "train.limit_train": limit_train, "distill.out_dir": out,
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
            f"{result.device} in {result.seconds:.0f} s; best val WER {result.best_val_wer:.4f}; "
            f"checkpoint {result.best_checkpoint}"
        )


# --- stack -----------------------------------------------------------------------------------


@stack_app.command("up")
def stack_up_cmd(
    s3_port: int = typer.Option(8333, help="S3 port on 127.0.0.1 (0: any free port)"),
    state_dir: Path = typer.Option(None, help="where logs, pid files and data go"),
) -> None:
    """Start SeaweedFS S3 on loopback with the dvc and mlflow buckets."""
    from mouthmap.stack import StackError, stack_up

    try:
        info = stack_up(state_dir=state_dir, s3_port=s3_port)
    except (StackError, OSError, TimeoutError) as e:
        _fail(str(e))
    state = "already running" if info.reused else "started"
    typer.echo(f"S3 {state} at {info.endpoint_url} (buckets: {', '.join(info.buckets)})")
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


@app.command()
def demo(
    source: str = typer.Option(None, help="corpus to use (default: data.source in params)"),
    params_file: str = ParamsOpt,
) -> None:
    """The main job on the embedded defaults: import, prepare and validate the data, then
    read the held-out clips' lips with the released model."""
    from mouthmap import stages

    params = _params(params_file)
    t0 = time.perf_counter()
    typer.secho("1/4 import corpus", bold=True)
    imported = stages.import_corpus(params, source)
    typer.echo(imported.summary() if hasattr(imported, "summary") else str(imported))
    typer.secho("2/4 prepare mouth ROIs and audio features", bold=True)
    rep = stages.prepare_corpus(params)
    typer.echo(
        f"  {rep.prepared} prepared, {rep.skipped} up to date, {len(rep.rejected)} rejected; "
        f"{rep.clips_per_second:.2f} clips/s; mouth missed in "
        f"{100 * rep.miss_rate:.2f}% of frames; cache {_mb(rep.cache_bytes)}"
    )
    typer.secho("3/4 validate (Great Expectations)", bold=True)
    usable = _report_quality(stages.validate_corpus(params), exit_when_bad=False)
    data_summary(as_json=False, params_file=params_file)
    _demo_read_lips(params)
    typer.secho(f"demo finished in {time.perf_counter() - t0:.1f} s", fg=typer.colors.GREEN)
    if not usable:
        raise typer.Exit(1)


def _demo_read_lips(params) -> None:
    from mouthmap import stages
    from mouthmap.evaluation.metrics import wer
    from mouthmap.package import DEFAULT_PACKAGE

    typer.secho("4/4 read lips: held-out test sentences, released model, beam+LM", bold=True)
    if not DEFAULT_PACKAGE.is_dir():
        typer.echo(f"  no released model at {DEFAULT_PACKAGE}; skipped")
        return
    readings = stages.read_held_out(params)
    for r in readings:
        mark = "ok" if r.text == r.truth else "!="
        typer.echo(f"  {r.id:10s} {mark} {r.text:32s} (truth: {r.truth}; {r.elapsed_ms:.0f} ms)")
    if readings:
        score = wer([r.truth for r in readings], [r.text for r in readings])
        typer.echo(f"  WER {100 * score:.1f}% over {len(readings)} unseen sentences")
