"""The WebSocket proxy in front of a real Triton, and the web page in headless Chromium with a
GRID clip as its camera: the token, frame checks and limits, one bad client among good ones,
and the transcript on the page."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest

from _serving_fixtures import active_streams, clip, make_varied_package, proxy, triton, write_y4m
from mouthmap.data import media

pytestmark = pytest.mark.integration

TOKEN = "test-token-123"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def varied(tiny_package, tmp_path_factory) -> Path:
    return make_varied_package(tiny_package, tmp_path_factory.mktemp("varied") / "package")


@pytest.fixture(scope="module")
def server(varied, tmp_path_factory):
    from mouthmap.serving.repository import RepoOptions, build_repo

    root = tmp_path_factory.mktemp("triton")
    opts = RepoOptions(stream_instances=2)
    with triton(build_repo(varied, root / "repo", opts), root / "state") as ep:
        yield ep


@pytest.fixture(scope="module")
def ws_url(server):
    from mouthmap.serving.proxy import ProxySettings

    settings = ProxySettings(triton_url=server.grpc, token=TOKEN, max_fps=1000, max_seconds=10)
    with proxy(settings) as base:
        yield base


def _connect(base: str, token: str = TOKEN):
    from websockets.sync.client import connect

    return connect(f"ws://{base}/ws?token={token}", max_size=2**24, open_timeout=10)


def _start(ws, w=360, h=288, fmt="rgb", fps=25) -> dict:
    ws.send(json.dumps({"type": "start", "width": w, "height": h, "format": fmt, "fps": fps}))
    return json.loads(ws.recv(timeout=20))


def _until_closed(ws, timeout: float = 30) -> list[dict]:
    from websockets.exceptions import ConnectionClosed

    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            out.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
    except (ConnectionClosed, TimeoutError):
        pass
    return out


def test_a_wrong_token_is_refused_before_anything_is_streamed(ws_url):
    with _connect(ws_url, token="nope") as ws:
        msgs = _until_closed(ws, 10)
        assert msgs == [
            {"type": "error", "code": "unauthorized", "message": "missing or wrong token"}
        ]
        assert ws.close_code == 1008


def test_a_bad_start_message_is_named(ws_url):
    with _connect(ws_url) as ws:
        ws.send("hello")
        msgs = _until_closed(ws, 10)
        assert msgs[0]["code"] == "bad_start" and "first message must be JSON" in msgs[0]["message"]
    with _connect(ws_url) as ws:
        assert _start(ws, w=5000)["code"] == "bad_start"


def test_raw_frames_give_the_offline_transcript_despite_bad_frames_and_a_bad_neighbour(
    ws_url, varied
):
    from mouthmap.runtime.transcriber import Transcriber

    frames = media.probe_and_decode_video(clip("sgiv2p")).frames
    expected = Transcriber(varied).transcribe(clip("sgiv2p")).text

    def bad_neighbour() -> None:  # garbage only, on its own connection
        with _connect(ws_url) as ws:
            _start(ws, fmt="jpeg")
            for _ in range(30):
                ws.send(b"\xff\xd8 not a jpeg")
            _until_closed(ws, 10)

    t = threading.Thread(target=bad_neighbour)
    t.start()
    with _connect(ws_url) as ws:
        ready = _start(ws)
        assert ready["type"] == "ready" and ready["limits"]["max_fps"] == 1000
        for i, f in enumerate(frames):
            ws.send(f.tobytes())
            if i == 20:
                ws.send(b"\x00" * 1000)  # wrong size for a 360x288 RGB frame
        ws.send(json.dumps({"type": "end"}))
        msgs = _until_closed(ws)
    t.join(20)
    errors = [m for m in msgs if m["type"] == "error"]
    assert (
        len(errors) == 1
        and "frame 22: 1000 bytes; a 360x288 rgb frame has 311040" in errors[0]["message"]
    )
    assert any(m["type"] == "partial" for m in msgs)
    final = msgs[-1]
    assert final["type"] == "final" and final["frames"] == 75
    assert final["text"] == expected  # lossless frames: exactly `mouthmap transcribe`


def test_limits_on_bad_frames_rate_and_length_end_only_the_offending_stream(server):
    from websockets.exceptions import ConnectionClosed

    from mouthmap.serving.proxy import ProxySettings

    rgb = media.probe_and_decode_video(clip("bbaf2n")).frames
    strict = ProxySettings(triton_url=server.grpc, token=TOKEN, max_fps=2, max_seconds=2,
                           max_bad_frames=3)  # fmt: skip
    with proxy(strict) as base:
        with _connect(base) as ws:  # too many bad frames
            _start(ws, fmt="jpeg")
            for _ in range(6):
                ws.send(b"garbage")
            msgs = _until_closed(ws, 10)
            assert msgs[-1]["code"] == "too_many_bad_frames" and ws.close_code == 1008
        with _connect(base) as ws:  # faster than 2 fps: frames beyond the allowance dropped
            _start(ws)
            with contextlib.suppress(ConnectionClosed):  # closed once bad frames pile up
                for f in rgb[:15]:
                    ws.send(f.tobytes())
            msgs = _until_closed(ws, 10)
            assert any(m.get("code") == "too_fast" for m in msgs)
        with _connect(base) as ws:  # longer than 2 s of video (2 fps declared: 4 frames)
            _start(ws, fps=2)
            with contextlib.suppress(ConnectionClosed):
                for f in rgb[:8]:
                    ws.send(f.tobytes())
                    time.sleep(0.6)
            msgs = _until_closed(ws, 10)
            assert (
                msgs[-1]["code"] == "too_long"
                and "longer than 2 s (4 frames)" in msgs[-1]["message"]
            )
            assert ws.close_code == 1008


def test_a_browser_that_vanishes_mid_stream_leaves_no_state_on_the_server(ws_url, server):
    from mouthmap.serving.server import metrics_text

    frames = media.probe_and_decode_video(clip("pric5a")).frames
    with _connect(ws_url) as ws:
        _start(ws)
        for f in frames[:40]:
            ws.send(f.tobytes())
        time.sleep(1.0)
        assert active_streams(metrics_text(server.metrics_port)) >= 1
    # closed without an end message
    deadline = time.monotonic() + 5
    while active_streams(metrics_text(server.metrics_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active_streams(metrics_text(server.metrics_port)) == 0  # aborted, not left to idle


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium (scripts/install_browser.sh)"
)
def test_the_web_page_reads_lips_from_the_camera_in_headless_chromium(ws_url, tmp_path):
    from playwright.sync_api import sync_playwright

    camera = write_y4m(clip("bbaf2n"), tmp_path / "camera.y4m")
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(f"http://{ws_url}/?token={TOKEN}&autostart=1&seconds=3.2")
            page.wait_for_function("document.getElementById('partial').textContent.length > 0 "
                                   "|| document.getElementById('final').textContent.length > 0",
                                   timeout=90_000)  # fmt: skip
            page.wait_for_function("document.getElementById('final').textContent.length > 0",
                                   timeout=90_000)  # fmt: skip
            final = page.inner_text("#final")
            frames = int(page.get_attribute("#final", "data-frames"))
            errors = page.inner_text("#errors")
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert errors == ""
    assert frames >= 25  # 3.2 s of the fake camera (25 fps; fewer when the CPU is busy)
    assert final.strip() and set(final) <= set(" abcdefghijklmnopqrstuvwxyz")


def test_a_token_file_that_is_missing_or_empty_is_refused_before_listening(tmp_path):
    from typer.testing import CliRunner

    from mouthmap.cli import app

    run = CliRunner().invoke
    missing = run(app, ["proxy", "--token-file", str(tmp_path / "none"), "--port", "0"])
    assert missing.exit_code == 2 and "cannot read the token file" in missing.output
    (tmp_path / "empty").write_text("\n")
    empty = run(app, ["proxy", "--token-file", str(tmp_path / "empty"), "--port", "0"])
    assert empty.exit_code == 2 and "is empty" in empty.output
