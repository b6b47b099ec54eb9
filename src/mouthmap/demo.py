"""The end-to-end demo (`make demo`, `mouthmap demo`): the whole platform on one machine.

Steps, each reusing the project's own pieces (nothing here trains, gates or serves by
itself):

1. ``stack``     S3 (SeaweedFS) and the MLflow server (:func:`mouthmap.stack.stack_up`);
2. ``baseline``  with no champion in the registry yet, the released package
                 (``models/mouthmap-student``) is registered and made champion, so the
                 quick pipeline's model is gated against it;
3. ``pipeline``  the Kubeflow training pipeline on the quick profile with ``kfp.local``
                 (:func:`mouthmap.pipeline.runner.run_local`), its gate and registry steps
                 on the stack's MLflow;
4. ``gate``      what the pipeline's gate decided (challenger vs champion);
5. ``serve``     the champion, downloaded from the registry, served by Triton (restarted
                 only when it serves another package);
6. ``stream``    held-out test clips streamed over gRPC (:func:`mouthmap.serving.client.
                 stream_frames`), each transcript beside the truth, and the WER;
7. ``drift``     the features Triton recorded of those streams (its drift sink) checked
                 against a reference of training clips (:func:`mouthmap.monitor.drift.
                 check_drift`): the report the dashboard's Drift page shows;
8. ``dashboard`` Streamlit in the background, pointed at that Triton and MLflow.

Re-running reuses what runs. :func:`demo_down` stops the dashboard and the stack.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mouthmap.package import DEFAULT_PACKAGE
from mouthmap.pipeline.params import repo_root

DEMO_DIR = "demo"  # under the stack's state dir: pipeline.log, the champion's package
SHARED_CORPUS = Path("..") / "shared" / "data" / "grid"  # beside the checkout, when present
BASELINE_TAG = "demo.baseline"
REFERENCE_CLIPS = 30  # training clips in the demo's drift reference (about 0.4 s each, once)
MAX_MESSAGE = 1500  # characters of a failed step's error shown; the log has the rest


class DemoError(RuntimeError):
    """A demo step failed: which one, why, and the log that says more."""

    def __init__(self, step: str, message: str, log: Path | None = None) -> None:
        if len(message) > MAX_MESSAGE:  # e.g. a whole HTML page quoted by a client library
            message = message[:MAX_MESSAGE] + " [...]"
        super().__init__(message)
        self.step, self.message, self.log = step, message, log

    def __str__(self) -> str:
        where = f"; log: {self.log}" if self.log else ""
        return f"step '{self.step}' failed: {self.message}{where}"


@dataclass
class DemoOptions:
    state_dir: Path | None = None  # default: the stack's (.mouthmap/stack)
    baseline: Path | None = DEFAULT_PACKAGE  # registered as champion when there is none
    pipeline: bool = True
    profile: str = "quick"
    assignments: dict[str, Any] = field(default_factory=dict)  # pipeline --set NAME=VALUE
    pipeline_out: Path | None = None  # default: runs/pipeline of the checkout
    corpus: Path | None = None  # held-out clips from here (default: the shared corpus)
    clips: int = 8
    realtime: bool = False  # pace the clips at 25 fps like a camera
    params_file: str | Path | None = None
    s3_port: int = 8333  # 0: any free port (a running stack keeps its own)
    mlflow_port: int = 5000
    triton_port: int = 8001  # gRPC; HTTP one below, metrics one above
    dashboard: bool = True
    dashboard_port: int = 8501  # taken by another process: a free one
    reports: Path | None = None  # the drift report goes here; default: the dashboard's


@dataclass
class StepTime:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    note: str = ""


@dataclass
class StreamReading:
    id: str
    truth: str
    text: str | None  # None: the stream failed (``error`` says why)
    final_ms: float | None = None
    error: str | None = None


@dataclass
class DemoResult:
    steps: list[StepTime] = field(default_factory=list)
    mlflow_uri: str | None = None
    triton_grpc: str | None = None
    dashboard_url: str | None = None
    champion: str | None = None  # the registry version served
    champion_package: Path | None = None
    challenger: str | None = None  # the version the pipeline registered
    promoted: bool | None = None  # whether the gate let it replace the champion
    readings: list[StreamReading] = field(default_factory=list)
    wer: float | None = None
    pipeline_log: Path | None = None
    pipeline_root: Path | None = None  # kfp.local's artifacts of all runs
    pipeline_started: float | None = None  # time.time() when this run began
    stream_started: float | None = None  # time.time() when the first clip was streamed
    drift_report: Path | None = None  # the Evidently HTML of this run's requests
    drifted: bool | None = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def table(self) -> str:
        lines = [f"{'step':<10} {'status':<8} {'seconds':>8}  note"]
        for s in self.steps:
            lines.append(f"{s.name:<10} {s.status:<8} {s.seconds:8.1f}  {s.note}".rstrip())
        lines.append(f"{'total':<10} {'':<8} {self.seconds:8.1f}")
        return "\n".join(lines)


Echo = Callable[[str], None]


def _state(state_dir: Path | None) -> Path:
    from mouthmap.stack import default_state_dir

    return Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()


@contextlib.contextmanager
def _step(result: DemoResult, name: str, log: Path | None = None) -> Iterator[StepTime]:
    """Time one step into ``result``; any failure becomes a :class:`DemoError` naming it."""
    t0 = time.perf_counter()
    step = StepTime(name, "ok", 0.0)
    try:
        yield step
    except DemoError:
        step.status = "failed"
        raise
    except Exception as e:  # a library error of the step: say which step and which log
        step.status = "failed"
        raise DemoError(name, f"{type(e).__name__}: {e}", log) from e
    finally:
        step.seconds = round(time.perf_counter() - t0, 1)
        result.steps.append(step)


def run_demo(opts: DemoOptions, echo: Echo = print) -> DemoResult:
    """Run every step; returns what it did, raises :class:`DemoError` for a failed step
    (the steps that ran are in ``error.result``)."""
    result = DemoResult()
    try:
        _run(opts, echo, result)
    except DemoError as e:
        e.result = result  # type: ignore[attr-defined]
        raise
    return result


def _run(opts: DemoOptions, echo: Echo, result: DemoResult) -> None:
    from mouthmap.config import DEFAULT_PARAMS, load_params
    from mouthmap.registry import Registry
    from mouthmap.stack import stack_up

    sd = _state(opts.state_dir)
    work = sd / DEMO_DIR
    work.mkdir(parents=True, exist_ok=True)
    params = load_params(opts.params_file or repo_root() / DEFAULT_PARAMS)

    echo("1/8 stack: S3 + MLflow on loopback")
    with _step(result, "stack", sd / "*.log") as step:
        info = stack_up(sd, s3_port=opts.s3_port, mlflow_port=opts.mlflow_port)
        result.mlflow_uri = info.mlflow_uri
        step.note = f"MLflow {info.mlflow_uri}" + (" (reused)" if info.reused else "")
        echo(f"  S3 {info.endpoint_url}, MLflow {info.mlflow_uri} (state {sd})")

    echo("2/8 baseline: the released model as champion when the registry has none")
    with _step(result, "baseline", sd / "mlflow.log") as step:
        reg = Registry(result.mlflow_uri)
        step.note = _ensure_baseline(reg, opts.baseline, echo)

    echo(f"3/8 pipeline: Kubeflow training pipeline, {opts.profile} profile, kfp.local")
    log = work / "pipeline.log"
    with _step(result, "pipeline", log) as step:
        if not opts.pipeline:
            step.status, step.note = "skipped", "--no-pipeline"
            echo("  skipped")
        else:
            result.pipeline_log = log
            step.note = _pipeline(opts, result, log, echo)

    echo("4/8 gate: the pipeline's model against the champion")
    with _step(result, "gate", log if opts.pipeline else None) as step:
        step.note = _gate_outcome(reg, result, ran=opts.pipeline, echo=echo)

    echo("5/8 serve: the champion on Triton")
    with _step(result, "serve", sd / "triton.log") as step:
        step.note = _serve(reg, sd, opts, result, echo)

    echo(f"6/8 stream: held-out test clips through Triton over gRPC ({opts.clips})")
    with _step(result, "stream", sd / "triton.log") as step:
        step.note = _stream(params, opts, result, echo)

    echo("7/8 drift: the streamed requests against a reference of training clips")
    with _step(result, "drift", sd / "triton.log") as step:
        step.note = _drift(params, opts, result, sd, echo)

    echo("8/8 dashboard")
    with _step(result, "dashboard", sd / "dashboard.log") as step:
        if not opts.dashboard:
            step.status, step.note = "skipped", "--no-dashboard"
            echo("  skipped")
        else:
            step.note = _dashboard(sd, opts, result, echo)


# --- the steps ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's client prints run links and download progress bars; the demo says itself
    what it registered and downloaded (errors still raise)."""
    import io
    import logging
    import os

    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _ensure_baseline(reg, baseline: Path | None, echo: Echo) -> str:
    champion = reg.champion()
    if champion is not None:
        echo(f"  the registry already has a champion: version {champion.version}")
        return f"champion v{champion.version} (kept)"
    if baseline is None or not (Path(baseline) / "mouthmap.json").is_file():
        echo(f"  no champion and no released package at {baseline}: the pipeline's model "
             "will be gated alone (mlops/gate.yaml promote_first)")  # fmt: skip
        return "none: no released package"
    with _quiet_mlflow():
        v = reg.register(
            baseline, pipeline_run_id="released", extra_tags={BASELINE_TAG: "released"}
        )
        reg.promote(v.version, force=True)
    echo(f"  registered {baseline} as version {v.version} and made it champion")
    return f"released package -> v{v.version} (champion)"


def _progress(file: Any, echo: Echo, console: Any):
    """A stand-in for stdout while kfp.local runs: its output goes to ``file``, and each
    finished step is echoed to ``console`` as one line."""
    from mouthmap.pipeline.runner import StepTimer

    def report(step: Any) -> None:  # a pipeline.runner.StepTime
        secs = f"{step.seconds:7.1f} s" if step.seconds is not None else ""
        with contextlib.redirect_stdout(console):
            echo(f"  {step.name:<26} {step.status:<8} {secs}")

    return StepTimer(file, on_finished=report)


def _pipeline(opts: DemoOptions, result: DemoResult, log: Path, echo: Echo) -> str:
    from mouthmap.pipeline import runner

    values = runner.resolve_values(opts.profile, opts.assignments)
    out = Path(opts.pipeline_out or repo_root() / "runs" / "pipeline")
    echo(f"  registry {result.mlflow_uri}; artifacts under {out}; its output: {log}")
    console = sys.stdout
    result.pipeline_started = time.time()
    with open(log, "a", buffering=1) as f:
        f.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} mouthmap demo: pipeline run\n")
        stream = _progress(f, echo, console)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            run = runner.run_local(values, out, result.mlflow_uri)
    result.pipeline_root = run.pipeline_root
    if run.status != "SUCCESS":
        raise DemoError("pipeline", run.error or "the pipeline failed", log)
    return f"{len(run.steps)} steps in kfp.local"


def _gate_report(pipeline_root: Path | None, since: float | None) -> dict | None:
    """The gate step's decision (``gate.json``) written by the pipeline run since ``since``."""
    import json

    if pipeline_root is None or since is None or not pipeline_root.is_dir():
        return None
    found = [p for p in pipeline_root.rglob("gate.json") if p.stat().st_mtime >= since]
    if not found:
        return None
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())


def _gate_outcome(reg, result: DemoResult, ran: bool, echo: Echo) -> str:
    champion = reg.champion()
    if not ran:
        echo("  no pipeline run: nothing new was gated")
        return f"champion v{champion.version}" if champion else "no champion"
    challenger = reg.alias("challenger")
    if challenger is None:
        raise DemoError("gate", "the pipeline registered no version (no challenger alias)")
    result.challenger = challenger.version
    result.promoted = bool(champion and champion.version == challenger.version)
    m = challenger.measurement
    if m is not None:
        echo(f"  pipeline's model: version {challenger.version}, WER {m.wer:.4f}, "
             f"{m.latency_ms:.0f} ms, {m.size_mb:.2f} MB")  # fmt: skip
    decision = _gate_report(result.pipeline_root, result.pipeline_started)
    if decision:
        for reason in decision.get("reasons", []):
            echo(f"    {reason}")
    verdict = "PASSED: promoted" if result.promoted else "REFUSED: the champion stays"
    echo(f"  gate {verdict}; champion is version {champion.version if champion else 'none'}")
    return f"v{challenger.version} {'promoted' if result.promoted else 'refused'}"


def _champion_package(reg, sd: Path, echo: Echo) -> tuple[str, Path]:
    """The champion's package, downloaded once per version under the state dir."""
    import shutil
    import tempfile

    champion = reg.champion()
    if champion is None:
        raise DemoError(
            "serve", "the registry has no champion: run the pipeline, or give a released "
            "package to register as the baseline (models/mouthmap-student)"
        )  # fmt: skip
    dst = sd / DEMO_DIR / f"champion-v{champion.version}-{(champion.run_id or 'x')[:8]}"
    if not (dst / "mouthmap.json").is_file():
        with (
            tempfile.TemporaryDirectory(prefix="download-", dir=sd / DEMO_DIR) as tmp,
            _quiet_mlflow(),
        ):
            path = reg.download(champion.version, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(path, dst)
        echo(f"  downloaded champion version {champion.version} to {dst}")
    return champion.version, dst


def _serve(reg, sd: Path, opts: DemoOptions, result: DemoResult, echo: Echo) -> str:
    from mouthmap.serving.repository import read_manifest
    from mouthmap.serving.server import TritonServer
    from mouthmap.stack import stack_up
    from mouthmap.stack.triton import TritonService

    version, package = _champion_package(reg, sd, echo)
    result.champion, result.champion_package = version, package
    running = TritonServer(sd).endpoint()
    if running is not None:
        try:
            served = read_manifest(running.repo).get("package")
        except FileNotFoundError:
            served = None
        if served != str(package.resolve()):
            echo(f"  Triton serves {served}; restarting it with the champion")
            TritonServer(sd).down()
            running = None
        elif TritonService(sd).recording_to() is None:  # started before it had a drift sink
            echo("  Triton records no request features; restarting it with a drift sink")
            TritonServer(sd).down()
            running = None
    info = stack_up(
        sd, s3_port=opts.s3_port, triton_model=package, triton_grpc_port=opts.triton_port
    )
    result.triton_grpc = info.triton_grpc
    state = "reused" if running is not None else "started"
    echo(f"  Triton {state}: gRPC {info.triton_grpc} serving champion version {version}")
    return f"v{version} at {info.triton_grpc} ({state})"


def held_out_corpus(params, corpus: Path | None) -> Path:
    """Where the demo's held-out clips come from: ``corpus``, else the shared 900-clip
    corpus beside the checkout, else the corpus the parameters import (the sample)."""
    if corpus is not None:
        return Path(corpus)
    shared = (repo_root() / SHARED_CORPUS).resolve()
    if (shared / "s1" / "video").is_dir():
        return shared
    return params.path(params.data.source)


def _stream(params, opts: DemoOptions, result: DemoResult, echo: Echo) -> str:
    from mouthmap import stages
    from mouthmap.data import corpus as corpus_mod
    from mouthmap.evaluation.metrics import wer
    from mouthmap.serving.client import server_prepare, stream_frames
    from mouthmap.serving.frames import paced, video_frames

    url = result.triton_grpc
    root = held_out_corpus(params, opts.corpus)
    clips = stages.held_out_clips(params, root, limit=opts.clips)
    if not clips:
        raise DemoError("stream", f"no held-out test clips in {root}")
    echo(f"  {len(clips)} test-split clips of {root}")
    prepare = server_prepare(url)
    result.stream_started = time.time()
    for clip in clips:
        truth = corpus_mod.transcript(corpus_mod.read_align(clip.align))
        reading = StreamReading(clip.id, truth, None)
        try:
            fps, frames = video_frames(clip.video)
            res = stream_frames(paced(frames, fps) if opts.realtime else frames, url,
                                prepare=prepare)  # fmt: skip
            reading.text, reading.final_ms = res.text, res.final_latency_ms
            if res.text is None and res.error is not None:
                reading.error = f"[{res.error.code}] {res.error.text}"
        except Exception as e:  # one bad clip (no mouth found, ...) does not end the demo
            reading.error = f"{type(e).__name__}: {e}"
        result.readings.append(reading)
        if reading.text is None:
            echo(f"  {clip.id:10s} error: {reading.error}  (truth: {truth})")
        else:
            mark = "ok" if reading.text == truth else "!="
            echo(f"  {clip.id:10s} {mark} {reading.text:32s} (truth: {truth})")
    done = [r for r in result.readings if r.text is not None]
    if not done:
        raise DemoError("stream", "every stream failed (see the errors above)")
    result.wer = wer([r.truth for r in done], [r.text for r in done])
    failed = len(result.readings) - len(done)
    note = f"WER {100 * result.wer:.1f}% on {len(done)} clips" + (
        f", {failed} failed" if failed else ""
    )
    echo(f"  {note} (unseen sentences; champion version {result.champion}, over gRPC)")
    return note


def _reports(opts: DemoOptions) -> Path:
    from mouthmap.dashboard.settings import Settings

    return Path(opts.reports) if opts.reports else Settings.from_env({}).reports


def _reference(params, opts: DemoOptions, result: DemoResult, sd: Path, echo: Echo) -> Path:
    """Request features of training-split clips read by the champion, the way the server
    records them: built once per champion package, then reused."""
    import pandas as pd

    from mouthmap import stages
    from mouthmap.monitor import evaluate

    package = result.champion_package
    path = sd / DEMO_DIR / f"reference-{package.name}.csv"
    if path.is_file():
        return path
    root = held_out_corpus(params, opts.corpus)
    clips = stages.held_out_clips(params, root, splits=("train",), limit=REFERENCE_CLIPS)
    if len(clips) < 2:
        raise DemoError("drift", f"{root} has {len(clips)} training clips; the reference needs 2")
    echo(f"  reference: {len(clips)} training clips of {root} read by the champion (once)")
    meta = json.loads((package / "mouthmap.json").read_text())
    prep = meta.get("prepare", {})
    settings = evaluate.RoiSettings(
        **{k: prep[k] for k in evaluate.RoiSettings.__dataclass_fields__ if k in prep}
    )
    table = evaluate.videos_features([c.video for c in clips], settings=settings,
                                     package=package, workers=1)  # fmt: skip
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(table).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def _drift(params, opts: DemoOptions, result: DemoResult, sd: Path, echo: Echo) -> str:
    import datetime as dt

    import pandas as pd

    from mouthmap.monitor.drift import DEFAULT_MIN_REQUESTS, check_drift
    from mouthmap.monitor.sink import load_window
    from mouthmap.stack.triton import TritonService

    sink = TritonService(sd).recording_to()
    if not sink:
        raise DemoError("drift", "the running Triton records no request features "
                        "(restart it: `mouthmap stack down`, then `make demo`)")  # fmt: skip
    since = dt.datetime.fromtimestamp(result.stream_started or time.time(), dt.UTC)
    window = load_window(sink, since=since)
    if window.empty:
        raise DemoError("drift", f"Triton recorded no request features under {sink}",
                        sd / "triton.log")  # fmt: skip
    reference = pd.read_csv(_reference(params, opts, result, sd, echo))
    html = _reports(opts) / "drift" / "report.html"
    # a demo's window is a handful of clips; the CronJob waits for 20 requests or more
    check = check_drift(reference, window, min_requests=min(DEFAULT_MIN_REQUESTS, len(window)),
                        html=html)  # fmt: skip
    result.drift_report, result.drifted = html, check.drifted
    echo("  " + check.summary().splitlines()[0])
    echo(f"  report: {html} (the dashboard's Drift page); requests recorded under {sink}")
    if len(window) < DEFAULT_MIN_REQUESTS:
        echo(f"  ({len(window)} requests is a small window: `mouthmap drift check` asks for "
             f"{DEFAULT_MIN_REQUESTS})")  # fmt: skip
    verdict = "drift" if check.drifted else "no drift"
    return f"{verdict}: {len(window)} requests vs {len(reference)} training clips"


def _dashboard(sd: Path, opts: DemoOptions, result: DemoResult, echo: Echo) -> str:
    from mouthmap.dashboard.launch import start_background
    from mouthmap.dashboard.settings import Settings

    base = Settings.from_env({})
    settings = Settings(
        model=result.champion_package, checkpoint=None, decoder="beam", samples=base.samples,
        reports=_reports(opts), triton=result.triton_grpc, mlflow=result.mlflow_uri,
        threads=1, live_fps=base.live_fps,
    )  # fmt: skip
    url, reused = start_background(settings, sd, opts.dashboard_port)
    result.dashboard_url = url
    echo(f"  dashboard {'reused' if reused else 'started'}: {url}")
    return url


# --- down ------------------------------------------------------------------------------------


def demo_down(state_dir: Path | None = None) -> list[str]:
    """Stop the dashboard and the whole local stack; returns the names of those stopped."""
    from mouthmap.dashboard.launch import stop_background
    from mouthmap.stack import stack_down

    sd = _state(state_dir)
    stopped = ["dashboard"] if stop_background(sd) else []
    return stopped + stack_down(sd)


def summary(result: DemoResult) -> Sequence[str]:
    """The closing lines: where everything is."""
    lines = []
    if result.mlflow_uri:
        lines.append(f"MLflow registry: {result.mlflow_uri}  (mouthmap registry show)")
    if result.triton_grpc:
        lines.append(f"Triton gRPC:     {result.triton_grpc}  (mouthmap stream VIDEO --url ...)")
    if result.dashboard_url:
        lines.append(f"Dashboard:       {result.dashboard_url}")
    lines.append("stop everything: make demo-down  (mouthmap demo down)")
    return lines
