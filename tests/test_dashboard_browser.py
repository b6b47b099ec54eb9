"""The dashboard in headless Chromium (Playwright): every page loads without an error, a
sample clip's transcript appears, the Grad-CAM image is rendered, bad uploads are reported
and the app keeps working, the webcam (Chromium's fake camera) is read. Screenshots are
kept under reports/dashboard/ (gitignored) as artefacts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, sample_clip

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "reports" / "dashboard"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # fmt: skip
SLOW = 240_000  # ms: a cold first read on a loaded 2-core machine


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """A reports directory with a benchmark report rendered by `mouthmap bench`'s own writers
    and a real Evidently drift report."""
    import numpy as np
    import pandas as pd

    from mouthmap.monitor.drift import check_drift
    from mouthmap.runtime.bench import markdown, plot
    from test_explain import BENCH

    root = tmp_path_factory.mktemp("reports")
    (root / "bench").mkdir()
    (root / "bench" / "bench.json").write_text(json.dumps(BENCH))
    (root / "bench" / "bench.md").write_text(markdown(BENCH))
    plot(BENCH, root / "bench" / "bench.png")
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"brightness": rng.normal(100, 5, 60), "contrast": rng.normal(30, 2, 60)})
    cur = pd.DataFrame({"brightness": rng.normal(60, 5, 40), "contrast": rng.normal(30, 2, 40)})
    (root / "drift").mkdir()
    check_drift(ref, cur, min_requests=10, html=root / "drift" / "report.html")
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real MLflow registry (the local stack) holding two versions: the released package as
    champion, gated on a 3-clip set, and the tiny package as challenger, not yet gated."""
    from _stack_fixtures import free_port
    from mouthmap.package import DEFAULT_PACKAGE
    from mouthmap.registry import Measurement, Registry
    from mouthmap.stack import stack_down, stack_up

    state = tmp_path_factory.mktemp("registry-stack")
    try:
        info = stack_up(state, s3_port=free_port(), mlflow_port=free_port(), timeout=300)
        reg = Registry(info.mlflow_uri)
        champion = reg.register(DEFAULT_PACKAGE, pipeline_run_id="released")
        reg.record_measurement(
            champion.version,
            Measurement(wer=1 / 9, cer=0.05, clips=3, latency_ms=21.0, size_mb=1.39),
        )
        reg.promote(champion.version, force=True)
        yield info.mlflow_uri
    finally:
        stack_down(state)


@pytest.fixture(scope="module")
def dashboard(tiny_package, reports, registry, tmp_path_factory):
    from _stack_fixtures import free_port
    from mouthmap.dashboard.launch import start, wait_ready
    from mouthmap.dashboard.settings import Settings
    from mouthmap.registry import Registry

    Registry(registry).register(tiny_package, pipeline_run_id="quick")  # the challenger
    port = free_port()
    settings = Settings(
        model=Path(tiny_package), checkpoint=None, decoder="beam",
        samples=ROOT / "data" / "sample" / "s1", reports=reports, triton="127.0.0.1:1",
        mlflow=registry, threads=1, live_fps=0,
    )  # fmt: skip
    log_path = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
    env_before = dict(os.environ)
    os.environ["MOUTHMAP_STACK_DIR"] = str(log_path.parent / "no-stack")  # only `registry`
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MOUTHMAP_DASHBOARD_WEBCAM_AUTO"] = "1"
    with open(log_path, "w") as log:
        proc = start(settings, port, log=log)
    os.environ.clear()
    os.environ.update(env_before)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=120)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        print(log_path.read_text()[-3000:])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian chromium (scripts/install_browser.sh)")
    from playwright.sync_api import sync_playwright

    from _serving_fixtures import write_y4m

    camera = write_y4m(sample_clip("bbaf2n")[0], tmp_path_factory.mktemp("cam") / "cam.y4m")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        args = [*ARGS, f"--use-file-for-fake-video-capture={camera}"]
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 2600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


EXCEPTION = '[data-testid="stException"]'


def _no_exception(page) -> None:
    shown = page.locator(EXCEPTION)
    assert shown.count() == 0, shown.first.inner_text()


def _wait_for(page, selector: str, timeout: float = SLOW):
    """The element, or a failure at once with the text of the exception Streamlit shows
    instead (a page that raised never draws what the test waits for)."""
    found = page.wait_for_selector(f"{selector}, {EXCEPTION}", timeout=timeout)
    if page.locator(EXCEPTION).count():
        pytest.fail("the page shows an exception:\n" + page.locator(EXCEPTION).first.inner_text())
    return found


def _idle(page, timeout: float = SLOW) -> None:
    """Until Streamlit has finished running the script (its status widget disappears)."""
    time.sleep(0.5)
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout
    )


def test_a_sample_clip_is_read_live_and_its_saliency_rendered(dashboard, browser, tiny_package):
    from mouthmap.runtime.transcriber import Transcriber

    page, errors = _page(browser)
    page.goto(dashboard + "/")
    _wait_for(page, ".st-key-final-transcript h3")
    text = page.inner_text(".st-key-final-transcript").strip()
    expected = Transcriber(tiny_package, threads=1).transcribe(sample_clip("bbaf2n")[0]).text
    assert text == expected
    img = _wait_for(page, ".st-key-saliency img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img,
                           timeout=30_000)  # fmt: skip
    assert img.evaluate("(img) => img.naturalWidth") == 192  # the 96x96 ROI at twice the size
    assert page.locator("video").count() == 1
    assert page.get_by_text("Truth:").count() == 1
    assert page.get_by_text("local ONNX Runtime").count() >= 1  # the given Triton is down
    _idle(page)
    _no_exception(page)
    page.screenshot(path=str(SHOTS / "read.png"), full_page=True)
    assert errors == []
    page.close()


def test_bad_uploads_are_explained_and_the_app_keeps_working(dashboard, browser, tmp_path):
    from media_factory import noise_video

    page, errors = _page(browser)
    page.goto(dashboard + "/")
    _wait_for(page, ".st-key-final-transcript h3")
    page.get_by_text("Upload a video").click()
    upload = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all\n")
    upload.set_input_files(str(notes))
    err = _wait_for(page, ".st-key-clip-error")
    assert "not a video MouthMap can read" in err.inner_text()
    page.screenshot(path=str(SHOTS / "upload_not_a_video.png"))
    upload.set_input_files(str(noise_video(tmp_path / "noise.mp4")))
    page.wait_for_function(
        "document.querySelector('.st-key-clip-error')?.innerText.includes('no face')",
        timeout=SLOW,
    )
    page.screenshot(path=str(SHOTS / "upload_no_face.png"))
    page.get_by_text("Sample clip").click()  # the app still works
    _wait_for(page, ".st-key-final-transcript h3")
    _idle(page)
    _no_exception(page)
    assert errors == []
    page.close()


def test_the_webcam_clip_is_read(dashboard, browser):
    page, errors = _page(browser)
    page.goto(dashboard + "/")
    page.get_by_text("Webcam").click()
    _wait_for(page, ".st-key-final-transcript h3")  # fake camera, 3 s
    assert page.inner_text(".st-key-final-transcript").strip()
    caption = page.get_by_text("mouth found in").first.inner_text()
    frames = int(caption.split(" frames,")[0])
    assert 70 <= frames <= 76 and "at 25 fps" in caption, caption  # 3 s of the fake camera
    _idle(page)
    _no_exception(page)
    page.screenshot(path=str(SHOTS / "webcam.png"), full_page=True)
    assert errors == []
    page.close()


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("registry", ".st-key-registry-table [data-testid='stDataFrame']"),
        ("benchmarks", ".st-key-bench-table [data-testid='stDataFrame']"),
        ("drift", ".st-key-drift-report iframe"),
    ],
)
def test_every_other_page_loads_without_errors(dashboard, browser, path, marker):
    page, errors = _page(browser)
    page.goto(f"{dashboard}/{path}")
    el = _wait_for(page, marker, timeout=60_000)
    _idle(page, 60_000)
    if path == "registry":  # each WER says which set of clips it is on
        champion = page.inner_text(".st-key-registry-champion")
        assert "11.11%" in champion and "gate WER on 3 test clips, beam" in champion
        assert "6.45%" in champion and "model card WER on 93 test clips, beam" in champion
        challenger = page.inner_text(".st-key-registry-challenger")
        assert "not gated yet" in challenger and "no model card figure" in challenger
    if path == "benchmarks":  # the table is drawn on a canvas; the caption is text
        assert page.get_by_text("test cpu (2 cores)").count() == 1
        img = page.wait_for_selector(".st-key-bench-plot img")
        page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img)
    if path == "drift":
        frame = el.content_frame()
        frame.wait_for_load_state()
        assert "drift" in frame.content().lower()  # Evidently's report inside
    _no_exception(page)
    page.screenshot(path=str(SHOTS / f"{path}.png"), full_page=True)
    assert errors == []
    page.close()
