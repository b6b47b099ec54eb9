"""``mouthmap dashboard``: the Streamlit app on loopback, until Ctrl+C."""

from __future__ import annotations

from pathlib import Path

import typer


def dashboard_cmd(
    model: Path = typer.Option(None, help="model package (default: the released one)"),
    checkpoint: Path = typer.Option(
        None,
        help="PyTorch checkpoint of the package, for Grad-CAM (default: the one it keeps, "
        "else its lineage's)",
    ),
    decoder: str = typer.Option("beam", help="greedy or beam (+ the package's LM)"),
    port: int = typer.Option(8501, help="HTTP port on 127.0.0.1"),
    address: str = typer.Option("127.0.0.1", help="address to listen on"),
    triton: str = typer.Option(
        None, help="Triton gRPC host:port for the live transcript (default: the local stack's)"
    ),
    mlflow_uri: str = typer.Option(
        None, "--mlflow-uri", help="MLflow registry (default: $MLFLOW_TRACKING_URI / the stack's)"
    ),
    reports: Path = typer.Option(None, help="reports directory (bench/, drift/)"),
    samples: Path = typer.Option(None, help="clips to pick from (video/*.mp4 + align/)"),
    threads: int = typer.Option(1, help="CPU threads for ONNX Runtime and PyTorch"),
) -> None:
    """The dashboard: read lips from a sample, an upload or the webcam (live transcript,
    probability timeline, Grad-CAM), and the registry, benchmark and drift pages."""
    from mouthmap.dashboard.launch import DashboardError, start, wait_ready
    from mouthmap.dashboard.settings import Settings

    if decoder not in ("greedy", "beam"):
        typer.secho(f"error: unknown decoder {decoder!r}: use greedy or beam", err=True)
        raise typer.Exit(2)
    base = Settings.from_env({})
    settings = Settings(
        model=model or base.model, checkpoint=checkpoint, decoder=decoder,
        samples=samples or base.samples, reports=reports or base.reports, triton=triton,
        mlflow=mlflow_uri, threads=threads, live_fps=base.live_fps,
    )  # fmt: skip
    url = f"http://{address}:{port}"
    try:
        proc = start(settings, port, address)
        wait_ready(url, proc)
    except DashboardError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"MouthMap dashboard: {url}  (Ctrl+C stops it)")
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
