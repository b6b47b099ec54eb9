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
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")

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
    """The main job on the embedded defaults: import, prepare and validate the data."""
    from mouthmap import stages

    params = _params(params_file)
    t0 = time.perf_counter()
    typer.secho("1/3 import corpus", bold=True)
    imported = stages.import_corpus(params, source)
    typer.echo(imported.summary() if hasattr(imported, "summary") else str(imported))
    typer.secho("2/3 prepare mouth ROIs and audio features", bold=True)
    rep = stages.prepare_corpus(params)
    typer.echo(
        f"  {rep.prepared} prepared, {rep.skipped} up to date, {len(rep.rejected)} rejected; "
        f"{rep.clips_per_second:.2f} clips/s; mouth missed in "
        f"{100 * rep.miss_rate:.2f}% of frames; cache {_mb(rep.cache_bytes)}"
    )
    typer.secho("3/3 validate (Great Expectations)", bold=True)
    usable = _report_quality(stages.validate_corpus(params), exit_when_bad=False)
    data_summary(as_json=False, params_file=params_file)
    typer.secho(f"demo finished in {time.perf_counter() - t0:.1f} s", fg=typer.colors.GREEN)
    if not usable:
        raise typer.Exit(1)
