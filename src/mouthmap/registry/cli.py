"""``mouthmap registry show|register|gate|promote|rollback``: a thin edge over the registry.

Exit codes: 0 done, 1 the gate refused (the champion stays), 2 an error (bad input, an
unreachable server: nothing was changed).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from mouthmap.config import DEFAULT_PARAMS, ParamsError, load_params

registry_app = typer.Typer(
    help="The MLflow model registry: versions, the gate, champion promotion and rollback.",
    no_args_is_help=True,
)
UriOpt = typer.Option(None, "--mlflow-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, "
                      "else the local stack's)")  # fmt: skip
PolicyOpt = typer.Option(None, "--policy", help="gate policy file (default: mlops/gate.yaml)")
ParamsOpt = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="parameter file (prepared data)")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _registry(uri: str | None):
    from mouthmap.registry import Registry, RegistryError

    try:
        return Registry(uri)
    except RegistryError as e:
        _fail(str(e))


def _policy(path: Path | None):
    from mouthmap.registry import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as e:
        _fail(str(e))


@registry_app.command("show")
def show(uri: str = UriOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the versions of the registered model, their aliases, lineage and gate figures."""
    from mouthmap.registry import RegistryError

    reg = _registry(uri)
    try:
        info = reg.show()
    except RegistryError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    typer.echo(f"{info['model']} at {info['uri']}: champion = {info['champion'] or 'none'}")
    if not info["versions"]:
        typer.echo("  no versions registered yet")
    for v in info["versions"]:
        tags = v["tags"]
        gate = json.loads(tags["gate.measurement"]) if "gate.measurement" in tags else {}
        figures = (
            f"WER {gate['wer']:.4f}  {gate['latency_ms']:.0f} ms  {gate['size_mb']:.2f} MB"
            if gate
            else "not gated"
        )
        aliases = ",".join(v["aliases"]) or "-"
        commit = (tags.get("lineage.git_commit") or "-")[:10]
        typer.echo(
            f"  v{v['version']:<4} {aliases:<22} {figures:<40} commit {commit}  "
            f"pipeline run {tags.get('lineage.pipeline_run_id', '-')}"
        )


@registry_app.command("register")
def register(
    package: Path = typer.Argument(..., help="model package directory"),
    pipeline_run_id: str = typer.Option(None, help="the pipeline run that made it (lineage)"),
    uri: str = UriOpt,
) -> None:
    """Register a model package as a new version (alias challenger) with its lineage tags."""
    from mouthmap.package import PackageError
    from mouthmap.registry import RegistryError

    reg = _registry(uri)
    try:
        v = reg.register(package, pipeline_run_id=pipeline_run_id)
    except (RegistryError, PackageError) as e:
        _fail(str(e))
    typer.echo(f"registered {package} as {reg.name} version {v.version} (alias challenger)")


def _gate(reg, version: str, params_file: str, policy_path: Path | None):
    from mouthmap import stages
    from mouthmap.registry import RegistryError, gate_version, write_report

    try:
        params = load_params(params_file)
    except ParamsError as e:
        _fail(str(e))
    policy = _policy(policy_path)
    prepared = params.path(params.data.prepared_dir)
    with tempfile.TemporaryDirectory(prefix="mouthmap-gate-") as tmp:
        try:
            decision = gate_version(
                reg, version, prepared, policy, tmp, stages.quarantined_ids(params),
                log=lambda m: typer.echo(m, err=True),
            )  # fmt: skip
        except (RegistryError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
    report = write_report(decision, params.path("reports/gate"))
    typer.echo(decision.summary())
    typer.echo(f"report: {report}")
    return decision, policy


@registry_app.command("gate")
def gate(
    version: str = typer.Option("challenger", help="version number, alias or 'latest'"),
    uri: str = UriOpt,
    policy: Path = PolicyOpt,
    params_file: str = ParamsOpt,
) -> None:
    """Measure a version and the champion side by side and say whether it would pass."""
    decision, _ = _gate(_registry(uri), version, params_file, policy)
    raise typer.Exit(0 if decision.passed else 1)


@registry_app.command("promote")
def promote(
    version: str = typer.Option("challenger", help="version number, alias or 'latest'"),
    force: bool = typer.Option(False, help="skip the gate (recorded as promoted_by=force)"),
    uri: str = UriOpt,
    policy: Path = PolicyOpt,
    params_file: str = ParamsOpt,
) -> None:
    """Run the gate and move the champion alias to the version only when it passes."""
    from mouthmap.registry import PromotionRefused, RegistryError

    reg = _registry(uri)
    try:
        target = reg.resolve(version).version
    except RegistryError as e:
        _fail(str(e))
    decision, pol = (None, None) if force else _gate(reg, target, params_file, policy)
    try:
        result = reg.promote(target, policy=pol, decision=decision, force=force)
    except PromotionRefused as e:
        typer.secho(str(e), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(1) from None
    except RegistryError as e:
        _fail(str(e))
    if not result.changed:
        typer.echo(f"version {result.version} already is the champion")
    else:
        typer.echo(f"champion: version {result.previous or 'none'} -> {result.version}")


@registry_app.command("rollback")
def rollback(uri: str = UriOpt) -> None:
    """Move the champion back to the version it replaced."""
    from mouthmap.registry import RegistryError

    reg = _registry(uri)
    try:
        result = reg.rollback()
    except RegistryError as e:
        _fail(str(e))
    typer.echo(f"champion rolled back: version {result.previous} -> {result.version}")


@registry_app.command("download")
def download(
    ref: str = typer.Argument("champion", help="version number, alias or 'latest'"),
    out: Path = typer.Option(Path("models/registry"), "--out", help="where the package goes"),
    uri: str = UriOpt,
) -> None:
    """Download a version's model package (what the Triton image serves)."""
    import shutil

    from mouthmap.registry import RegistryError

    reg = _registry(uri)
    try:
        info = reg.resolve(ref)
        with tempfile.TemporaryDirectory(prefix="mouthmap-download-") as tmp:
            path = reg.download(info.version, tmp)
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(path, out)
    except RegistryError as e:
        _fail(str(e))
    typer.echo(f"{reg.name} version {info.version} ({ref}) -> {out}")
