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
def dashboard(tiny_package, reports, tmp_path_factory):
    from _stack_fixtures import free_port
    from mouthmap.dashboard.launch import start, wait_ready
    from mouthmap.dashboard.settings import Settings

    port = free_port()
    settings = Settings(
        model=Path(tiny_package), checkpoint=None, decoder="beam",
        samples=ROOT / "data" / "sample" / "s1", reports=reports, triton="127.0.0.1:1",
        mlflow=None, threads=1, live_fps=0,
    )  # fmt: skip
    log_path = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
    env_before = dict(os.environ)
    os.environ["MOUTHMAP_STACK_DIR"] = str(log_path.parent / "no-stack")  # no registry here
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


def _no_exception(page) -> None:
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


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
    page.wait_for_selector(".st-key-final-transcript h3", timeout=SLOW)
    text = page.inner_text(".st-key-final-transcript").strip()
    expected = Transcriber(tiny_package, threads=1).transcribe(sample_clip("bbaf2n")[0]).text
    assert text == expected
    img = page.wait_for_selector(".st-key-saliency img", timeout=SLOW)
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
    page.wait_for_selector(".st-key-final-transcript h3", timeout=SLOW)
    page.get_by_text("Upload a video").click()
    upload = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all\n")
    upload.set_input_files(str(notes))
    err = page.wait_for_selector(".st-key-clip-error", timeout=SLOW)
    assert "not a video MouthMap can read" in err.inner_text()
    page.screenshot(path=str(SHOTS / "upload_not_a_video.png"))
    upload.set_input_files(str(noise_video(tmp_path / "noise.mp4")))
    page.wait_for_function(
        "document.querySelector('.st-key-clip-error')?.innerText.includes('no face')",
        timeout=SLOW,
    )
    page.screenshot(path=str(SHOTS / "upload_no_face.png"))
    page.get_by_text("Sample clip").click()  # the app still works
    page.wait_for_selector(".st-key-final-transcript h3", timeout=SLOW)
    _idle(page)
    _no_exception(page)
    assert errors == []
    page.close()


def test_the_webcam_clip_is_read(dashboard, browser):
    page, errors = _page(browser)
    page.goto(dashboard + "/")
    page.get_by_text("Webcam").click()
    page.wait_for_selector(".st-key-final-transcript h3", timeout=SLOW)  # fake camera, 3 s
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
    ("path", "marker", "text"),
    [
        ("registry", ".st-key-registry-empty", "no registry configured"),
        ("benchmarks", ".st-key-bench-table [data-testid='stDataFrame']", None),
        ("drift", ".st-key-drift-report iframe", None),
    ],
)
def test_every_other_page_loads_without_errors(dashboard, browser, path, marker, text):
    page, errors = _page(browser)
    page.goto(f"{dashboard}/{path}")
    el = page.wait_for_selector(marker, timeout=60_000)
    _idle(page, 60_000)
    if text:
        page.wait_for_function(
            f"document.querySelector('{marker}').innerText.includes({text!r})", timeout=30_000
        )
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
