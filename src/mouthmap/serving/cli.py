"""CLI edges of serving: `serve build-repo|up|down|status`, `stream`, `proxy`, `loadtest`.

Registered on the main app by :func:`register` (one line in ``mouthmap.cli``). Imports
stay inside the commands so ``mouthmap --help`` does not load Triton or FastAPI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

serve_app = typer.Typer(
    help="Triton Inference Server with the streaming model (loopback).", no_args_is_help=True
)

DEFAULT_REPO = Path("runs/triton-repo")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _package(model: str | None):
    from mouthmap.package import DEFAULT_PACKAGE, ModelPackage, PackageError

    path = Path(model) if model else DEFAULT_PACKAGE
    try:
        return ModelPackage.load(path)
    except PackageError as e:
        hint = "" if model else " (the released model is not there yet: pass --model DIR)"
        _fail(f"{e}{hint}")


def _options(**kw):
    from mouthmap.serving.repository import RepoOptions
    from mouthmap.serving.streams import StreamLimits

    limit_keys = {"max_streams", "max_frames", "idle_timeout_s", "partial_every"}
    limits = StreamLimits(**{k: v for k, v in kw.items() if k in limit_keys and v is not None})
    rest = {k: v for k, v in kw.items() if k not in limit_keys and v is not None}
    try:
        return RepoOptions(limits=limits, **rest)
    except ValueError as e:
        _fail(str(e))


@serve_app.command("build-repo")
def build_repo_cmd(
    model: str = typer.Argument(None, help="model package (default: the released one)"),
    out: Path = typer.Argument(DEFAULT_REPO, help="where the model repository is written"),
    encoder_backend: str = typer.Option(
        "python", help="python (ONNX Runtime in the Python backend) | onnxruntime (cluster image)"
    ),
    device: str = typer.Option("cpu", help="cpu | gpu (gpu needs --encoder-backend onnxruntime)"),
    max_batch: int = typer.Option(
        16, help="largest batch (streams per stream-model batch, clips per encoder batch)"
    ),
    dynamic_batching: bool = typer.Option(
        True,
        help="let Triton batch concurrent streams (sequence batcher) and whole clips "
        "(dynamic batcher); off: batch size 1",
    ),
    queue_delay_us: int = typer.Option(
        2000, help="how long a whole-clip request may wait to fill a batch"
    ),
    stream_instances: int = typer.Option(1, help="stream-model instances (processes)"),
    batch_mode: str = typer.Option(
        "exact", help="exact (each clip run alone: bit-identical to transcribe) | padded (fused)"
    ),
    fp32: bool = typer.Option(False, help="serve model_fp32.onnx instead of model.onnx (INT8)"),
    partial_every: int = typer.Option(8, help="frames between partial transcripts (0: none)"),
    max_streams: int = typer.Option(64, help="open streams at once"),
    max_seconds: float = typer.Option(60.0, help="longest stream, in seconds of video"),
    idle_timeout: float = typer.Option(10.0, help="a silent stream is ended after this"),
) -> None:
    """Write a Triton model repository for a model package."""
    from mouthmap.serving.repository import build_repo

    opts = _options(
        encoder_backend=encoder_backend, device=device, max_batch_size=max_batch,
        dynamic_batching=dynamic_batching, queue_delay_us=queue_delay_us, batch_mode=batch_mode,
        stream_instances=stream_instances,
        model_file="model_fp32.onnx" if fp32 else "model.onnx", partial_every=partial_every,
        max_streams=max_streams, max_frames=int(max_seconds * 25), idle_timeout_s=idle_timeout,
    )  # fmt: skip
    pkg = _package(model)
    try:
        repo = build_repo(pkg, out, opts)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    batching = f"up to {opts.max_batch_size}" if opts.dynamic_batching else "off"
    typer.echo(f"wrote {repo} ({pkg.meta.get('name')}: {opts.model_file}, "
               f"{opts.encoder_backend} backend, batching {batching})")  # fmt: skip


@serve_app.command("up")
def serve_up_cmd(
    repo: Path = typer.Option(None, help="a repository from `serve build-repo`"),
    model: str = typer.Option(None, help="or a model package: the repository is built for it"),
    http_port: int = typer.Option(8000, help="0: any free port"),
    grpc_port: int = typer.Option(8001, help="0: any free port"),
    metrics_port: int = typer.Option(8002, help="0: any free port"),
    state_dir: Path = typer.Option(None, help="logs and pid file (default: the stack's)"),
) -> None:
    """Start Triton on 127.0.0.1 in the background (health, readiness, /metrics)."""
    from mouthmap.serving.repository import build_repo
    from mouthmap.serving.server import TritonServer
    from mouthmap.stack import StackError, default_state_dir

    sd = Path(state_dir) if state_dir else default_state_dir()
    if repo is None:
        repo = build_repo(_package(model), sd / "triton-repo")
    try:
        ep = TritonServer(sd).up(repo, http_port, grpc_port, metrics_port)
    except (StackError, FileNotFoundError) as e:
        _fail(str(e))
    state = "already running" if ep.reused else "started"
    typer.echo(f"Triton {state} (pid {ep.pid}) serving {ep.repo}")
    typer.echo(f"  gRPC {ep.grpc}   HTTP {ep.http}   metrics {ep.metrics}")
    typer.echo(f"  stream a video: mouthmap stream VIDEO --url {ep.grpc}")


@serve_app.command("run")
def serve_run_cmd(
    repo: Path = typer.Argument(..., help="a repository from `serve build-repo`"),
    address: str = typer.Option("0.0.0.0", help="address to listen on (a container's: all)"),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
    state_dir: Path = typer.Option(Path("/tmp/mouthmap-triton"), help="backends directory"),
    log_verbose: int = typer.Option(0),
) -> None:
    """Run Triton in the foreground (this process becomes the server): the CPU image's
    entry point, where no NGC image is at hand."""
    from mouthmap.serving.server import TritonServer
    from mouthmap.stack import StackError

    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    try:
        TritonServer(state_dir).exec_foreground(repo, ports, address, log_verbose)
    except (StackError, FileNotFoundError, OSError) as e:
        _fail(str(e))


@serve_app.command("down")
def serve_down_cmd(state_dir: Path = typer.Option(None)) -> None:
    """Stop the Triton server started by `serve up` or `stack up`."""
    from mouthmap.serving.server import TritonServer
    from mouthmap.stack import default_state_dir

    stopped = TritonServer(Path(state_dir) if state_dir else default_state_dir()).down()
    typer.echo("stopped: triton" if stopped else "nothing was running")


@serve_app.command("status")
def serve_status_cmd(state_dir: Path = typer.Option(None)) -> None:
    """Say whether Triton runs and is ready; exit 1 if not."""
    from mouthmap.serving.server import TritonServer, is_ready
    from mouthmap.stack import default_state_dir

    ep = TritonServer(Path(state_dir) if state_dir else default_state_dir()).endpoint()
    if ep is None:
        typer.echo("triton: down")
        raise typer.Exit(1)
    ready = is_ready(ep.http_port)
    typer.echo(f"triton: {'ready' if ready else 'running, not ready'}  gRPC {ep.grpc}  "
               f"HTTP {ep.http}  metrics {ep.metrics}  repo {ep.repo}")  # fmt: skip
    if not ready:
        raise typer.Exit(1)


def stream_cmd(
    video: Path = typer.Argument(None, help="a video file (or use --webcam)"),
    webcam: int = typer.Option(None, help="camera index for OpenCV (0: the first camera)"),
    url: str = typer.Option("127.0.0.1:8001", help="Triton gRPC address"),
    chunk: int = typer.Option(8, help="frames per request"),
    realtime: bool = typer.Option(True, help="play a file at its frame rate, like a camera"),
    seconds: float = typer.Option(None, help="stop after this long (webcam: Ctrl+C also stops)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per event and line"),
) -> None:
    """Stream a video or the webcam to Triton and print partial transcripts live."""
    import itertools

    from mouthmap.data.media import MediaError
    from mouthmap.data.roi import NoMouthError
    from mouthmap.serving.client import StreamClientError, server_prepare, stream_frames
    from mouthmap.serving.frames import camera_frames, paced, video_frames

    if (video is None) == (webcam is None):
        _fail("give a VIDEO or --webcam N (one of them)")
    try:
        prepare = server_prepare(url)
        fps, frames = video_frames(video) if video is not None else camera_frames(webcam)
    except (StreamClientError, MediaError) as e:
        _fail(str(e))
    if video is not None and realtime:
        frames = paced(frames, fps)
    if seconds:
        frames = itertools.islice(frames, int(seconds * fps))
    if webcam is not None and not as_json:
        typer.echo(
            "streaming the camera; Ctrl+C ends the stream and prints the final text", err=True
        )

    def show(ev) -> None:
        if as_json:
            typer.echo(json.dumps(ev.as_dict()))
        elif ev.kind == "partial":
            sys.stdout.write(f"\r\x1b[2K… {ev.text}")
            sys.stdout.flush()
        elif ev.kind == "final":
            sys.stdout.write(f"\r\x1b[2K{ev.text}\n")
        else:
            typer.secho(f"\nerror [{ev.code}]: {ev.text}", fg=typer.colors.RED, err=True)

    try:
        res = stream_frames(frames, url, prepare=prepare, chunk=chunk, on_event=show)
    except (StreamClientError, NoMouthError, MediaError, ValueError) as e:
        _fail(str(e), 1)
    if res.text is None:
        raise typer.Exit(1)
    if not as_json:
        typer.secho(f"{res.frames} frames, final transcript {res.final_latency_ms:.0f} ms "
                    "after the last frame", err=True, dim=True)  # fmt: skip


def proxy_cmd(
    triton: str = typer.Option(
        "127.0.0.1:8001", "--triton-url", envvar="MOUTHMAP_TRITON_URL", help="Triton gRPC address"
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8080),
    token: str = typer.Option(
        None, envvar="MOUTHMAP_PROXY_TOKEN", help="clients must send it (default: a random one)"
    ),
    token_file: Path = typer.Option(
        None,
        envvar="MOUTHMAP_PROXY_TOKEN_FILE",
        help="read the token from this file (a mounted Secret)",
    ),
    max_fps: float = typer.Option(30.0, help="frames per second a client may send"),
    max_seconds: float = typer.Option(60.0, help="longest stream"),
    max_connections: int = typer.Option(32, help="browsers at once"),
) -> None:
    """WebSocket proxy for browsers (and the web page) in front of Triton's gRPC stream."""
    import secrets

    import uvicorn

    from mouthmap.serving.proxy import ProxySettings, create_app

    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(f"cannot read the token file: {e}") from None
        if not token:
            raise typer.BadParameter(f"the token file {token_file} is empty")
    token = token or secrets.token_urlsafe(16)
    settings = ProxySettings(
        triton_url=triton, token=token, max_fps=max_fps, max_seconds=max_seconds,
        max_connections=max_connections,
    )  # fmt: skip
    typer.echo(f"open http://{host}:{port}/?token={token}")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                ws="websockets-sansio")  # fmt: skip


def loadtest_cmd(
    model: str = typer.Option(None, help="model package to serve (default: the released one)"),
    clips: Path = typer.Option(Path("data/sample/s1/video"), help="video clips to stream"),
    streams: int = typer.Option(8, help="concurrent real-time streams (latency phase)"),
    throughput_streams: int = typer.Option(16, help="concurrent streams (throughput phases)"),
    duration: float = typer.Option(20.0, help="seconds per phase (each is bounded by it)"),
    partial_every: int = typer.Option(8, help="frames between partial transcripts"),
    batch_mode: str = typer.Option("exact", help="exact | padded (see `serve build-repo`)"),
    stream_instances: int = typer.Option(1, help="stream-model instances (processes)"),
    phases: str = typer.Option(
        "latency,batching,no_batching", help="which phases, comma-separated (e.g. batching)"
    ),
    out: Path = typer.Option(Path("reports/loadtest"), help="loadtest.json and .md here"),
) -> None:
    """Load test on loopback: latency at N real-time streams, throughput with and without
    batching, every transcript checked against offline `mouthmap transcribe`. Exit 1 when a
    stream failed or the server crashed."""
    import shlex

    from mouthmap.serving.loadtest import LoadTestSettings, run_loadtest, write_report

    settings = LoadTestSettings(
        streams=streams, throughput_streams=throughput_streams, duration_s=duration,
        partial_every=partial_every, batch_mode=batch_mode, stream_instances=stream_instances,
        phases=tuple(p.strip() for p in phases.split(",") if p.strip()),
    )  # fmt: skip
    videos = sorted(clips.glob("*.mp4")) if clips.is_dir() else [clips]
    if not videos:
        _fail(f"no .mp4 clips in {clips}")
    try:
        report = run_loadtest(
            _package(model), videos, settings, log=lambda m: typer.echo(m, err=True)
        )
    except ValueError as e:
        _fail(str(e))
    report["command"] = "mouthmap " + shlex.join(sys.argv[1:])
    json_path, md_path = write_report(report, out)
    typer.echo(md_path.read_text())
    typer.echo(f"wrote {json_path} and {md_path}")
    if report["failed_streams"] or report["server_crashes"]:
        raise typer.Exit(1)


# `mouthmap-proxy`: the proxy alone, for the proxy image (which holds neither PyTorch nor the
# libraries of the other commands)
proxy_app = typer.Typer(add_completion=False)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the main ``mouthmap`` app."""
    app.add_typer(serve_app, name="serve")
    app.command("stream")(stream_cmd)
    app.command("proxy")(proxy_cmd)
    app.command("loadtest")(loadtest_cmd)


proxy_app.command(help="The browsers' WebSocket in front of Triton's gRPC stream.")(proxy_cmd)
