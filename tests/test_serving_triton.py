"""The streaming service on a real Triton (the `tritonserver` of nvidia-pytriton, loopback):
transcripts equal `mouthmap transcribe`, bad clients cannot hurt others or leak state,
batching, health and metrics, the CLI, `stack up`, and the load test."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _serving_fixtures import CLIPS, active_streams, clip, counter, make_varied_package, triton
from mouthmap.cli import app

pytestmark = pytest.mark.integration

LIMITS = {"max_frames": 150, "idle_timeout_s": 3.0, "partial_every": 8}


@pytest.fixture(scope="module")
def varied(tiny_package, tmp_path_factory) -> Path:
    return make_varied_package(tiny_package, tmp_path_factory.mktemp("varied") / "package")


@pytest.fixture(scope="module")
def offline(varied) -> dict[str, str]:
    from mouthmap.runtime.transcriber import Transcriber

    t = Transcriber(varied)
    return {code: t.transcribe(clip(code)).text for code in CLIPS}


@pytest.fixture(scope="module")
def server(varied, tmp_path_factory):
    from mouthmap.serving.repository import RepoOptions, build_repo
    from mouthmap.serving.streams import StreamLimits

    root = tmp_path_factory.mktemp("triton")
    opts = RepoOptions(limits=StreamLimits(**LIMITS), stream_instances=2, queue_delay_us=5000)
    mp = pytest.MonkeyPatch()
    mp.setenv("MOUTHMAP_DRIFT_SINK", str(root / "drift"))  # the server inherits it at start
    try:
        with triton(build_repo(varied, root / "repo", opts), root / "state") as ep:
            mp.undo()
            yield ep
    finally:
        mp.undo()


def _metrics(ep) -> str:
    from mouthmap.serving.server import metrics_text

    return metrics_text(ep.metrics_port)


def _stream_clip(ep, code: str, realtime: bool = False, **kw):
    from mouthmap.serving.client import stream_frames
    from mouthmap.serving.frames import paced, video_frames

    fps, frames = video_frames(clip(code))
    return stream_frames(paced(frames, fps) if realtime else frames, ep.grpc, **kw)


def test_streamed_transcripts_equal_offline_transcribe(server, offline):
    texts = {}
    for code in CLIPS[:3]:
        res = _stream_clip(server, code)
        assert res.text == offline[code], code
        assert res.frames == res.rois == 75
        partials = [e for e in res.events if e.kind == "partial"]
        assert partials and partials[0].at < res.final.at  # text while it is still streaming
        texts[code] = res.text
    assert len(set(texts.values())) == 3  # the clips say different things: not a constant


def test_finished_streams_feed_the_drift_monitor(server):
    records = [json.loads(line) for f in (server.repo.parent / "drift").rglob("*.jsonl")
               for line in f.read_text().splitlines() if line.strip()]  # fmt: skip
    assert len(records) >= 3 and all(r["source"] == "mouthmap_stream" for r in records)
    assert {"brightness", "motion_energy", "confidence", "blank_share"} <= set(records[0])


def test_stream_cli_prints_partials_then_the_same_final_text_as_transcribe(server, varied):
    run = CliRunner().invoke
    out = run(app, ["stream", str(clip("pgbk6n")), "--url", server.grpc, "--json", "--no-realtime"])
    assert out.exit_code == 0, out.output
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert events[0]["type"] == "partial" and events[-1]["type"] == "final"
    offline = run(app, ["transcribe", str(clip("pgbk6n")), "--model", str(varied), "--json"])
    assert events[-1]["text"] == json.loads(offline.stdout.strip().splitlines()[-1])["text"]
    bad = run(app, ["stream", str(clip("pgbk6n")), "--url", "127.0.0.1:1"])
    assert bad.exit_code == 2 and "is `mouthmap serve up` running?" in bad.output


def _raw_request(ep, rois_input, start=True, end=False, sid=None):
    """One request on its own stream; returns the first error message (or None)."""
    import queue

    import tritonclient.grpc as g

    from mouthmap.serving.client import new_sequence_id

    q: queue.Queue = queue.Queue()
    c = g.InferenceServerClient(ep.grpc)
    c.start_stream(callback=lambda result, error: q.put(error))
    try:
        c.async_stream_infer("mouthmap_stream", [rois_input], sequence_id=sid or new_sequence_id(),
                             sequence_start=start, sequence_end=end)  # fmt: skip
        err = q.get(timeout=20)
        return None if err is None else str(err)
    finally:
        c.stop_stream()
        c.close()


def test_bad_clients_leave_the_server_up_other_streams_unaffected_and_no_state_behind(
    server, offline
):
    import tritonclient.grpc as g

    from mouthmap.serving.client import TritonStream

    good: dict = {}
    runner = threading.Thread(
        target=lambda: good.setdefault("res", _stream_clip(server, "lgaz8p", realtime=True))
    )
    runner.start()
    time.sleep(0.5)

    garbage = g.InferInput("ROIS", [1, 4, 96, 96], "UINT8")
    garbage._raw_content = b"\x8b\x00garbage bytes"  # not 4*96*96 bytes
    assert "byte size" in _raw_request(server, garbage)
    wrong = g.InferInput("ROIS", [1, 8, 90, 90], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 8, 90, 90), np.uint8))
    assert "unexpected shape for input 'ROIS'" in _raw_request(server, wrong)
    floats = g.InferInput("ROIS", [1, 8, 96, 96], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 8, 96, 96), np.float32))
    assert "data-type" in _raw_request(server, floats) or "datatype" in _raw_request(server, floats)
    ok_shape = g.InferInput("ROIS", [1, 8, 96, 96], "UINT8")
    ok_shape.set_data_from_numpy(np.zeros((1, 8, 96, 96), np.uint8))
    assert "START" in _raw_request(server, ok_shape, start=False)  # never started

    # a client that vanishes mid-stream (no END, connection closed)
    gone = TritonStream(server.grpc)
    gone.send(np.zeros((16, 96, 96), np.uint8))
    gone.send(np.zeros((16, 96, 96), np.uint8))
    time.sleep(0.3)
    gone.close()

    # a stream that never ends: cut at the server's length limit (150 frames here)
    endless = TritonStream(server.grpc)
    for _ in range(25):
        endless.send(np.zeros((8, 96, 96), np.uint8))
    deadline = time.monotonic() + 20
    errors = []
    while time.monotonic() < deadline and not errors:
        ev = endless.events.get(timeout=20)
        if ev.kind == "error":
            errors.append(ev)
    assert errors[0].code in ("too_long", "unknown_stream")
    assert "longer than 150 frames" in errors[0].text
    endless.close()

    runner.join(30)
    assert good["res"].text == offline["lgaz8p"]  # unaffected by all of the above
    # the vanished client's stream is freed once idle (3 s here); nothing else is held
    deadline = time.monotonic() + 15
    while active_streams(_metrics(server)) and time.monotonic() < deadline:
        time.sleep(0.5)
    m = _metrics(server)
    assert active_streams(m) == 0
    assert counter(m, "expired") >= 1 and counter(m, "failed") >= 2
    assert _stream_clip(server, "bbaf2n").text == offline["bbaf2n"]  # and it still serves


def test_health_readiness_and_prometheus_metrics(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mouthmap_stream/ready"):
        with urllib.request.urlopen(server.http + path, timeout=5) as r:
            assert r.status == 200
    m = _metrics(server)
    series = (
        'nv_inference_request_success{model="mouthmap_encoder"',
        'nv_inference_request_success{model="mouthmap_stream"',
        "nv_cpu_utilization",
        "mouthmap_active_streams{",
        "mouthmap_started_total{",
    )
    for name in series:
        assert name in m, name


def test_concurrent_streams_meet_in_the_stream_models_batches(server, varied, offline):
    from mouthmap.package import ModelPackage
    from mouthmap.serving.loadtest import _model_stats, prepare_clips, run_one

    clips = prepare_clips(ModelPackage.load(varied), [clip(c) for c in CLIPS[:2]], log=lambda m: 0)
    before = _model_stats(_metrics(server))
    records: list = []
    threads = [threading.Thread(target=lambda k=k: records.append(
        run_one(server.grpc, clips[k % 2], 8, None, 30))) for k in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = _model_stats(_metrics(server))
    assert len(records) == 8 and all(r.ok for r in records), [r.error for r in records]
    batches = after["requests"] - before["requests"], after["executions"] - before["executions"]
    assert batches[0] / batches[1] > 1.05, batches  # more requests than executions: batched


def test_serve_up_status_and_down_from_the_cli(varied, tmp_path):
    run = CliRunner().invoke
    sd = str(tmp_path / "state")
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    try:
        up = run(app, ["serve", "up", "--model", str(varied), "--state-dir", sd, *ports])
        assert up.exit_code == 0, up.output
        assert "Triton started" in up.output and "gRPC 127.0.0.1:" in up.output
        again = run(app, ["serve", "up", "--model", str(varied), "--state-dir", sd, *ports])
        assert "already running" in again.output
        status = run(app, ["serve", "status", "--state-dir", sd])
        assert status.exit_code == 0 and "triton: ready" in status.output
    finally:
        down = run(app, ["serve", "down", "--state-dir", sd])
    assert "stopped: triton" in down.output
    assert run(app, ["serve", "status", "--state-dir", sd]).exit_code == 1


def test_stack_up_starts_triton_beside_s3_and_stack_down_stops_it(varied, tmp_path):
    from _stack_fixtures import free_port
    from mouthmap.stack import stack_down, stack_status, stack_up

    sd = tmp_path / "stack"
    try:
        info = stack_up(sd, s3_port=free_port(), triton_model=varied, triton_grpc_port=0)
        assert info.triton_grpc and info.triton_grpc.startswith("127.0.0.1:")
        st = stack_status(sd)
        assert st["triton"].healthy and st["seaweedfs"].healthy
        assert stack_up(sd).triton_grpc == info.triton_grpc  # reported, not started twice
    finally:
        stopped = stack_down(sd)
    assert "triton" in stopped and "seaweedfs" in stopped
    assert not stack_status(sd)["triton"].running


def test_loadtest_reports_latency_and_throughput_and_checks_every_transcript(varied, tmp_path):
    from mouthmap.package import ModelPackage
    from mouthmap.serving.loadtest import LoadTestSettings, run_loadtest, write_report

    settings = LoadTestSettings(streams=2, throughput_streams=3, duration_s=3.0, stream_instances=2)
    report = run_loadtest(ModelPackage.load(varied), [clip(c) for c in CLIPS[:3]], settings,
                          log=lambda m: None)  # fmt: skip
    assert report["failed_streams"] == 0
    assert set(report["phases"]) == {"latency", "batching", "no_batching"}
    lat = report["phases"]["latency"]
    assert lat["completed"] >= 2 and lat["final_ms"]["p95"] >= lat["final_ms"]["p50"] > 0
    assert lat["first_partial_ms"]["p50"] is not None
    assert report["phases"]["no_batching"]["stream_model"]["mean_batch"] == 1.0
    assert report["batching_speedup"] > 0
    _, md = write_report(report, tmp_path)
    text = md.read_text()
    assert (
        "| final p95 <= 150 ms at 2 streams |" in text
        and "| failed streams = 0 | 0 | yes |" in text
    )
