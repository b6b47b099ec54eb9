"""``mouthmap pipeline compile|run|params``: a thin edge over :mod:`mouthmap.pipeline.runner`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from mouthmap.config import ParamsError

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile it, run it here (kfp.local) or on a cluster.",
    no_args_is_help=True,
)
SetOpt = typer.Option(None, "--set", "-s", help="a pipeline parameter, NAME=VALUE (repeatable)")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@pipeline_app.command("compile")
def compile_cmd(
    out: Path = typer.Option(None, "--out", help="IR YAML (default: pipelines/training.yaml)"),
) -> None:
    """Compile the pipeline to its IR YAML (commit pipelines/training.yaml afterwards)."""
    from mouthmap.pipeline.runner import compile_pipeline

    typer.echo(f"wrote {compile_pipeline(out)}")


@pipeline_app.command("params")
def params_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the pipeline's parameters (mirrored from params.yaml) and their defaults."""
    from mouthmap.pipeline.params import PIPELINE_EXTRAS, mirrored

    spec = mirrored()
    if as_json:
        typer.echo(json.dumps({p.name: p.default for p in spec}, indent=1))
        return
    for p in spec:
        where = p.key or f"pipeline: {PIPELINE_EXTRAS[p.name][2]}"
        typer.echo(f"{p.name:<32} {p.type.__name__:<6} {p.default!r:<24} {where}")


@pipeline_app.command("run")
def run_cmd(
    local: bool = typer.Option(False, "--local", help="run here with kfp.local"),
    host: str = typer.Option(None, "--host", help="Kubeflow Pipelines endpoint URL"),
    profile: str = typer.Option(
        None, help="quick (the 20-clip sample, 1 epoch; default with --local) | full | FILE"
    ),
    sets: list[str] = SetOpt,
    mlflow_uri: str = typer.Option(
        None,
        help="MLflow registry (default: $MLFLOW_TRACKING_URI, "
        "else the local stack's, started if needed)",
    ),  # fmt: skip
    out: Path = typer.Option(Path("runs/pipeline"), "--out", help="local runs' artifacts"),
    cache: bool = typer.Option(False, help="reuse outputs of unchanged steps (local runs)"),
    runner_opt: str = typer.Option(
        "subprocess",
        "--runner",
        help="local runs: subprocess (this Python) | docker (each step in the pipeline image, "
        "as on a cluster; `make images` builds it)",
    ),  # fmt: skip
    experiment: str = typer.Option("mouthmap", help="KFP experiment (--host)"),
    namespace: str = typer.Option(None, help="Kubeflow namespace (--host, multi-user)"),
) -> None:
    """Run the training pipeline: --local here (quick profile by default) or --host URL."""
    from mouthmap.images import ImageError
    from mouthmap.pipeline import runner

    runner_kind = runner_opt
    if local == bool(host):
        _fail("give exactly one of --local or --host URL")
    try:
        values = runner.resolve_values(
            profile or ("quick" if local else None), runner.parse_assignments(sets or [])
        )
    except ParamsError as e:
        _fail(str(e))
    if host:
        if mlflow_uri:
            values["registry_uri"] = mlflow_uri
        try:
            sub = runner.run_host(host, values, experiment=experiment, namespace=namespace)
        except ConnectionError as e:
            _fail(str(e))
        typer.echo(f"submitted run {sub['run_id']}: {sub['url']}")
        return
    from mouthmap.registry import RegistryError, check_reachable

    try:
        uri = runner.local_registry_uri(mlflow_uri)
        check_reachable(uri)
    except (RegistryError, OSError) as e:
        _fail(str(e))
    typer.echo(f"running the pipeline here (kfp.local, {runner_kind} runner); registry {uri}; "
               f"artifacts under {out}")  # fmt: skip
    t0 = time.perf_counter()
    try:
        result = runner.run_local(values, out, uri, cache=cache, runner=runner_kind)
    except (ValueError, ImageError) as e:
        _fail(str(e))
    typer.echo("")
    typer.echo(result.table())
    typer.echo(f"pipeline {result.status} in {time.perf_counter() - t0:.0f} s; "
               f"artifacts under {result.pipeline_root}")  # fmt: skip
    if result.status != "SUCCESS":
        _fail(result.error or "the pipeline failed", code=1)
