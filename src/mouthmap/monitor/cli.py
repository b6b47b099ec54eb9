"""``mouthmap drift``: build the training reference, check a window, measure the monitor."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mouthmap.config import DEFAULT_PARAMS, ParamsError, load_params
from mouthmap.monitor import drift as drift_lib

drift_app = typer.Typer(
    help="Input/prediction drift of the served model (Evidently).", no_args_is_help=True
)

EXIT_DRIFT = 1
EXIT_ERROR = 2
EXIT_TOO_FEW = 3


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _prepared_dir(prepared: Path | None, params_file: str) -> Path:
    if prepared is not None:
        return prepared
    try:
        params = load_params(params_file)
    except ParamsError as e:
        _fail(str(e))
    return params.path(params.data.prepared_dir)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--label {item!r}: use key=value")
        out[key] = value
    return out


@drift_app.command("reference")
def reference_cmd(
    out: Path = typer.Option(Path("reports/drift/reference.csv"), help="reference CSV to write"),
    prepared: Path = typer.Option(None, help="prepared corpus (default: params.yaml's)"),
    split: list[str] = typer.Option(["train"], help="split(s) the reference is built from"),
    model: Path = typer.Option(
        None, help="model package: adds decoder confidence and embedding statistics"
    ),
    params_file: str = typer.Option(DEFAULT_PARAMS, "--params", "-p"),
) -> None:
    """Per-clip features of the prepared training clips: what "no drift" looks like."""
    from mouthmap.monitor.reference import build_reference, summarise

    root = _prepared_dir(prepared, params_file)
    try:
        path = build_reference(root, out, splits=split, package=model)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    df = drift_lib.read_table(path)
    typer.echo(f"reference: {len(df)} clips of split(s) {', '.join(split)} -> {path}")
    typer.echo(summarise(df).round(4).to_string())


@drift_app.command("check")
def check_cmd(
    window: str = typer.Argument(
        ..., help="request features: JSONL file, directory of them, s3://bucket/prefix, or CSV"
    ),
    reference: str = typer.Option(
        "reports/drift/reference.csv", help="reference CSV (local or s3://)"
    ),
    since: str = typer.Option(None, help="only requests newer than this: 1h, 30m, 2d or ISO time"),
    last: int = typer.Option(None, help="only the last N requests"),
    html: Path = typer.Option(Path("reports/drift/report.html"), help="Evidently HTML report"),
    metrics_file: Path = typer.Option(
        None, help="write Prometheus metrics here (node-exporter textfile collector)"
    ),
    pushgateway: str = typer.Option(None, help="push the metrics to this Pushgateway URL"),
    label: list[str] = typer.Option(None, help="metric label key=value (repeatable)"),
    mlflow_uri: str = typer.Option(None, help="log the check as an MLflow run on this server"),
    mlflow_experiment: str = typer.Option("mouthmap-drift"),
    alpha: float = typer.Option(drift_lib.DEFAULT_ALPHA, help="family-wise p-value level"),
    drift_share: float = typer.Option(
        drift_lib.DEFAULT_DRIFT_SHARE, help="share of features that must drift"
    ),
    min_requests: int = typer.Option(drift_lib.DEFAULT_MIN_REQUESTS),
    exclude: list[str] = typer.Option(None, help="leave this feature out (repeatable)"),
    strict: bool = typer.Option(
        False, help=f"exit {EXIT_TOO_FEW} (not 0) when the window is too small for a verdict"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compare a window of requests with the reference; exit 1 when it drifted."""
    from mouthmap.monitor.sink import load_window

    try:
        ref = drift_lib.read_table(reference)
        cur = load_window(window, since=since, last=last)
    except (FileNotFoundError, ValueError, OSError) as e:
        _fail(str(e))
    except Exception as e:  # botocore errors: no credentials, no bucket, endpoint down
        _fail(f"cannot read {window}: {e}")
    try:
        result = drift_lib.check_drift(
            ref, cur, alpha=alpha, drift_share=drift_share, min_requests=min_requests,
            exclude=exclude, html=html,
        )  # fmt: skip
    except drift_lib.DriftInputError as e:
        if "fewer than" in str(e):
            typer.secho(f"no verdict: {e}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(EXIT_TOO_FEW if strict else 0) from None
        _fail(str(e))
    labels = _labels(label)
    if metrics_file is not None:
        drift_lib.write_prometheus(result, metrics_file, labels)
    if pushgateway:
        try:
            drift_lib.push_metrics(result, pushgateway, labels=labels)
        except Exception as e:  # the verdict stands even when the gateway is down
            typer.secho(f"warning: metrics not pushed: {e}", fg=typer.colors.YELLOW, err=True)
    if mlflow_uri:
        run_id = drift_lib.log_to_mlflow(result, mlflow_uri, mlflow_experiment)
        typer.echo(f"logged to MLflow run {run_id}", err=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), default=float))
    else:
        typer.echo(result.summary())
        typer.echo(f"report: {result.report_html}")
    if result.drifted:
        raise typer.Exit(EXIT_DRIFT)


@drift_app.command("evaluate")
def evaluate_cmd(
    videos: Path = typer.Option(
        None, help="raw videos of the prepared clips (e.g. ../shared/data/grid/s1/video)"
    ),
    features_from: Path = typer.Option(
        None, help="reuse the tables a previous run wrote with --save-features (no videos needed)"
    ),
    prepared: Path = typer.Option(None, help="prepared corpus (default: params.yaml's)"),
    model: Path = typer.Option(None, help="model package (adds the model features)"),
    window: int = typer.Option(30, help="requests per window"),
    windows: int = typer.Option(200, help="clean windows drawn (a quarter as many per shift)"),
    shifted: int = typer.Option(60, help="held-out clips pushed through each shift"),
    severity: list[str] = typer.Option(
        None, help="shift=value to override a default severity, e.g. dark=0.7"
    ),
    workers: int = typer.Option(2),
    seed: int = typer.Option(0),
    alpha: float = typer.Option(drift_lib.DEFAULT_ALPHA),
    drift_share: float = typer.Option(drift_lib.DEFAULT_DRIFT_SHARE),
    out: Path = typer.Option(Path("reports/drift/evaluation.json")),
    save_features: Path = typer.Option(
        None, help="also write the reference, clean and shifted feature tables (CSV) here"
    ),
    params_file: str = typer.Option(DEFAULT_PARAMS, "--params", "-p"),
) -> None:
    """Measure false alarms on clean held-out windows and detection of dark/blur/noise."""
    from mouthmap.monitor import evaluate as ev
    from mouthmap.monitor.reference import prepared_features
    from mouthmap.monitor.shifts import DEFAULT_SEVERITY

    root = _prepared_dir(prepared, params_file)
    sev = dict(DEFAULT_SEVERITY)
    for item in severity or []:
        k, _, v = item.partition("=")
        if k not in sev:
            _fail(f"--severity {item!r}: shifts are {', '.join(sev)}")
        sev[k] = float(v)
    if features_from is not None:
        import pandas as pd

        tables = {n: pd.read_csv(features_from / f"{n}.csv") for n in ("reference", "clean", *sev)}
        ref, clean = tables.pop("reference"), tables.pop("clean")
        _report(ref, clean, tables, sev, window, windows, seed, alpha, drift_share, model, out)
        return
    if videos is None:
        _fail("give --videos (raw clips) or --features-from (saved feature tables)")
    transcriber = None
    settings = ev.RoiSettings()
    if model is not None:
        from mouthmap.runtime.transcriber import Transcriber

        transcriber = Transcriber(model, decoder="greedy")
        prep = transcriber.package.meta.get("prepare", {})
        settings = ev.RoiSettings(**{k: prep[k] for k in ev.RoiSettings.__dataclass_fields__
                                     if k in prep})  # fmt: skip
    ref = prepared_features(root, ["train"], transcriber, progress=True)
    clean = prepared_features(root, ["val", "test"], transcriber, progress=True)
    codes = clean["id"].str.split("_", n=1).str[-1].tolist()[:shifted]
    paths = [videos / f"{c}.mp4" for c in codes]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        _fail(f"{len(missing)} videos not found under {videos} (first: {missing[0]})")
    specs = {k: (paths, k, v) for k, v in sev.items()}
    pools = ev.feature_tables(specs, settings, model, workers, progress=True)
    if save_features is not None:
        save_features.mkdir(parents=True, exist_ok=True)
        for name, table in {"reference": ref, "clean": clean, **pools}.items():
            table.to_csv(save_features / f"{name}.csv", index=False)
    _report(ref, clean, pools, sev, window, windows, seed, alpha, drift_share, model, out)


def _report(ref, clean, pools, sev, window, windows, seed, alpha, drift_share, model, out) -> None:
    from mouthmap.monitor import evaluate as ev

    report = ev.evaluate_monitor(ref, clean, pools, window, windows, seed,
                                 alpha=alpha, drift_share=drift_share)  # fmt: skip
    for k, v in sev.items():
        report["shifts"][k]["severity"] = v
    report["model"] = str(model) if model else None
    ev.save_report(report, out)
    typer.echo(ev.format_report(report))
    typer.echo(f"written: {out}")
