"""Explanations: words aligned to frames, Grad-CAM that points where the model looks, the
checkpoint behind a package, overlays, and the dashboard's loaders and inputs."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SAMPLE, sample_clip
from mouthmap import alphabet
from mouthmap.explain import AlignmentError, GradCAM, explain_word, word_spans
from mouthmap.explain.gradcam import last_conv_layer, spatial_layers, word_score


def _log_probs(frame_symbols: str, sharp: float = 8.0) -> np.ndarray:
    """(T, C) log-probs peaked on one symbol per frame ('_' = blank)."""
    idx = [0 if ch == "_" else alphabet.SYMBOLS.index(ch) for ch in frame_symbols]
    logits = np.zeros((len(idx), alphabet.NUM_CLASSES))
    logits[np.arange(len(idx)), idx] = sharp
    return torch.from_numpy(logits).log_softmax(-1).numpy()


def test_each_word_gets_the_frames_its_letters_and_neighbouring_blanks_occupy():
    #                0         1         2
    #                01234567890123456789012
    lp = _log_probs("__bb_i_n__ ___bbl_ue___")
    spans = word_spans(lp, "bin blue")
    assert [(s.word, s.start, s.end) for s in spans] == [("bin", 0, 10), ("blue", 11, 23)]


def test_a_beam_transcript_that_differs_from_the_greedy_path_is_still_aligned():
    lp = _log_probs("__bb_i_n__ ___bbl_ue___")
    spans = word_spans(lp, "bin bleu")  # not the argmax text: the best path still fits it
    assert [s.word for s in spans] == ["bin", "bleu"]
    assert spans[0].end <= spans[1].start and spans[1].end == 23


def test_a_text_longer_than_the_clip_cannot_be_aligned():
    with pytest.raises(AlignmentError, match="need at least"):
        word_spans(_log_probs("__b__"), "bin blue")


class _Bright(nn.Module):
    """A per-frame front end whose channel 0 fires on bright pixels only; channels 1-3 fire
    elsewhere, but the classifier below ignores them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=4, padding=2)  # 88 -> 22
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1 / 25  # mean brightness ...
            self.conv.bias[0] = -0.5  # ... above 0.5 (normalised) only where it is bright
            self.conv.weight[1:] = -1 / 25  # the dark parts
            self.conv.bias[1:] = 0.0
        self.out_dim = 4

    def forward(self, x, mask=None):
        b, _, t, h, w = x.shape
        y = torch.relu(self.conv(x.transpose(1, 2).reshape(b * t, 1, h, w)))
        return y.mean(dim=(2, 3)).reshape(b, t, -1)


class _PerFrame(nn.Module):
    def __init__(self, word: str = "blue") -> None:
        super().__init__()
        self.frontend = _Bright()
        self.classifier = nn.Linear(4, alphabet.NUM_CLASSES)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            self.classifier.bias[0] = 2.0  # blanks, as a CTC model has
            for i in alphabet.encode(word):
                self.classifier.weight[i, 0] = 3.0  # the word's letters follow channel 0

    def forward(self, video, lengths):
        return self.classifier(self.frontend(video)).log_softmax(-1)


def test_grad_cam_lights_the_region_and_the_frames_the_word_depends_on():
    model = _PerFrame().eval()
    rois = np.zeros((30, 96, 96), np.uint8)
    rois[:, 60:84, 60:84] = 255  # the only bright part: a square low on the right
    lp = _log_probs("__bb_i_n____ ____bbl_ue_____")  # 30 frames; "blue" from frame 12
    sal = explain_word(model, rois, 0.5, 0.25, "bin blue", 1, log_probs=lp)
    assert sal.layer == "conv" and sal.map_size == (22, 22)
    assert sal.cam.shape == (30, 96, 96) and sal.cam.min() >= 0
    assert sal.cam.max() == pytest.approx(1.0)
    hot = sal.cam[sal.peak_frame]
    ys, xs = np.nonzero(hot > 0.5)
    assert 60 <= ys.mean() < 84 and 60 <= xs.mean() < 84  # centred on the bright square
    ring = np.ones_like(hot, bool)
    ring[52:92, 52:92] = False  # everything more than 8 px (two map cells) away from it
    assert hot[ring].max() < 0.05
    # a per-frame model: frames outside the word's span cannot change its score
    assert sal.frame_weight[: sal.span.start].sum() == 0
    assert sal.frame_weight[sal.span.start : sal.span.end].min() > 0
    assert sal.cam[:, :4].max() == 0 and sal.cam[:, 92:].max() == 0  # outside the 88 crop


def test_the_word_score_is_the_ctc_log_likelihood_of_its_letters():
    lp = torch.from_numpy(_log_probs("_bb_i_n_")).float()[None]
    good = word_score(lp, alphabet.encode("bin"), 0, 8)
    bad = word_score(lp, alphabet.encode("dog"), 0, 8)
    assert good > -1.0 and bad < good - 10


def test_the_students_last_conv_features_are_its_3x3_head(tiny_package):
    from mouthmap.explain.checkpoints import load_explainer
    from mouthmap.package import ModelPackage

    ex = load_explainer(ModelPackage.load(tiny_package))
    layers = spatial_layers(ex.model)
    assert last_conv_layer(ex.model) == layers[-1][0] == "head"
    assert layers[-1][1:] == (3, 3) and any(h == 22 for _, h, _ in layers)  # the stem's maps


def test_the_package_records_its_checkpoint_and_grad_cam_runs_on_a_real_clip(tiny_package):
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.explain.checkpoints import file_sha256, load_explainer
    from mouthmap.package import ModelPackage
    from mouthmap.runtime.transcriber import Transcriber

    pkg = ModelPackage.load(tiny_package)
    lineage = pkg.meta["lineage"]
    assert file_sha256(lineage["checkpoint"]) == lineage["checkpoint_sha256"]
    tr = Transcriber(pkg, threads=1)
    a = analyse_clip(sample_clip("bbaf2n")[0], tr)
    assert a.text == tr.transcribe(sample_clip("bbaf2n")[0]).text  # the same reading
    assert a.spans and a.rois.shape == (75, 96, 96) and a.boxes.shape == (75, 4)
    ex = load_explainer(pkg)
    assert ex.check_parity(pkg, a.rois) < 1e-3
    sal = explain_word(ex.model, a.rois, pkg.mean, pkg.std, a.text, 0, log_probs=a.log_probs)
    assert sal.cam.shape == (75, 96, 96) and sal.cam.max() == pytest.approx(1.0)
    assert 0 <= sal.peak_frame < 75


def test_a_released_package_explains_from_the_checkpoint_it_keeps(tiny_package, tmp_path):
    """On another machine the lineage's path is gone; the checkpoint kept in the package
    still gives Grad-CAM a model that matches the ONNX."""
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.explain.checkpoints import CheckpointMismatch, find_checkpoint, load_explainer
    from mouthmap.package import ModelPackage, keep_checkpoint, update_meta
    from mouthmap.runtime.transcriber import Transcriber

    pkg = ModelPackage.load(shutil.copytree(tiny_package, tmp_path / "pkg"))
    source = pkg.meta["lineage"]["checkpoint"]
    moved = {**pkg.meta["lineage"], "checkpoint": str(tmp_path / "gone.pt")}
    pkg = update_meta(pkg, lineage=moved)
    with pytest.raises(CheckpointMismatch, match="gone.pt is not on this machine"):
        find_checkpoint(pkg)
    pkg = keep_checkpoint(pkg, source)
    assert find_checkpoint(pkg) == pkg.root / "checkpoint.pt"
    ex = load_explainer(pkg)
    a = analyse_clip(sample_clip("bbaf2n")[0], Transcriber(pkg, decoder="greedy", threads=1))
    assert ex.check_parity(pkg, a.rois) < 1e-3


def test_a_checkpoint_of_another_model_is_refused(tiny_package, tmp_path):
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.explain.checkpoints import CheckpointMismatch, load_explainer
    from mouthmap.package import ModelPackage
    from mouthmap.runtime.transcriber import Transcriber
    from mouthmap.train import checkpoint

    pkg = ModelPackage.load(tiny_package)
    state = checkpoint.load(pkg.meta["lineage"]["checkpoint"])
    state["model"] = {k: v + 0.05 if v.is_floating_point() else v
                      for k, v in state["model"].items()}  # fmt: skip
    other = tmp_path / "other.pt"
    checkpoint.save(other, {k: v for k, v in state.items() if k not in ("format", "alphabet")})
    ex = load_explainer(pkg, other)
    a = analyse_clip(sample_clip("bbaf2n")[0], Transcriber(pkg, decoder="greedy", threads=1))
    with pytest.raises(CheckpointMismatch, match="is not the model of"):
        ex.check_parity(pkg, a.rois)


def test_a_package_without_a_recorded_checkpoint_says_how_to_give_one(tiny_package, tmp_path):
    import shutil

    from mouthmap.explain.checkpoints import CheckpointMismatch, find_checkpoint
    from mouthmap.package import ModelPackage, update_meta

    shutil.copytree(tiny_package, tmp_path / "pkg")
    pkg = ModelPackage.load(tmp_path / "pkg")
    pkg = update_meta(pkg, lineage={"git_commit": "x"})
    with pytest.raises(CheckpointMismatch, match="--checkpoint"):
        find_checkpoint(pkg)
    with pytest.raises(CheckpointMismatch, match="not found"):
        find_checkpoint(pkg, tmp_path / "nope.pt")


def test_grad_cam_refuses_a_layer_the_front_end_does_not_have():
    with pytest.raises(ValueError, match="no layer"):
        GradCAM(_PerFrame(), layer="nope")


# --- pictures ------------------------------------------------------------------------------


def test_the_roi_box_is_the_square_the_crop_was_cut_from():
    from mouthmap.data.mouth.base import MouthTrack
    from mouthmap.data.roi import crop_rois
    from mouthmap.explain.overlay import draw_rois, roi_boxes

    frames = np.zeros((1, 120, 160), np.uint8)
    frames[0, 40:80, 50:110] = 255  # a bright 60x40 block
    track = MouthTrack(centers=np.array([[80.0, 60.0]], np.float32),
                       widths=np.array([50.0], np.float32), found=np.array([True]))  # fmt: skip
    ((x0, y0, x1, y1),) = roi_boxes(track, scale=1.2)
    assert (x1 - x0, y1 - y0) == (60, 60) and (x0, y0) == (50, 30)
    crop = crop_rois(frames, track, size=60, scale=1.2)[0]
    assert (crop == frames[0, y0:y1, x0:x1]).all()
    drawn = draw_rois(np.zeros((1, 120, 160, 3), np.uint8), np.array([[x0, y0, x1, y1]]))
    assert drawn[0, y0, x0 + 5].tolist() == [40, 220, 90] and drawn[0, 60, 80].sum() == 0


def test_overlays_encode_as_mp4_and_animated_gif_with_every_frame():
    import io

    import av
    from PIL import Image

    from mouthmap.explain.overlay import encode_gif, encode_mp4, heat_overlay

    rng = np.random.default_rng(1)
    rois = rng.integers(0, 255, (12, 96, 96), dtype=np.uint8)
    cam = np.zeros((12, 96, 96), np.float32)
    cam[:, 40:56, 40:56] = 1.0
    over = heat_overlay(rois, cam, scale=2)
    assert over.shape == (12, 192, 192, 3)
    assert (over[:, :40, :40] == np.repeat(rois[:, :20, :20], 2, 1).repeat(2, 2)[..., None]).all()
    assert over[0, 96, 96, 0] != over[0, 96, 96, 1]  # coloured where the map is hot
    gif = Image.open(io.BytesIO(encode_gif(over)))
    assert gif.n_frames == 12
    with av.open(io.BytesIO(encode_mp4(over))) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12


def test_the_timeline_plots_every_frame_and_marks_the_chosen_word():
    from mouthmap.explain.timeline import probability_table, timeline_figure

    lp = _log_probs("__bb_i_n__ ___bbl_ue___")
    spans = word_spans(lp, "bin blue")
    fig = timeline_figure(lp, spans, highlight=1, frame_weight=np.linspace(0, 1, 23))
    image = fig.axes[1].images[0].get_array()
    assert image.shape == (alphabet.NUM_CLASSES, 23)
    assert [t.get_text() for t in fig.axes[0].texts] == ["bin", "blue"]
    rows = probability_table(lp)
    assert rows[2]["top1"] == "b" and rows[0]["top1"] == "·"


# --- dashboard inputs and loaders ----------------------------------------------------------


def test_samples_come_with_their_true_sentences():
    from mouthmap.dashboard.inputs import list_samples

    samples = list_samples(SAMPLE / "s1")
    assert len(samples) == 20
    first = next(s for s in samples if s.code == "bbaf2n")
    assert first.truth == "bin blue at f two now"


def test_uploads_are_saved_under_a_safe_name_and_empty_ones_refused(tmp_path):
    from mouthmap.dashboard.inputs import save_upload

    p = save_upload("../../etc/pass wd.mp4", b"abc", tmp_path)
    assert p.parent == tmp_path and p.name.endswith("pass_wd.mp4") and p.read_bytes() == b"abc"
    with pytest.raises(ValueError, match="empty"):
        save_upload("x.mp4", b"", tmp_path)


def test_a_non_video_and_a_faceless_video_are_refused_with_the_cause(tiny_package, tmp_path):
    from media_factory import noise_video
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.runtime.transcriber import TranscribeError, Transcriber

    tr = Transcriber(tiny_package, decoder="greedy", threads=1)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(TranscribeError, match="not a video MouthMap can read"):
        analyse_clip(text, tr, name="notes.mp4")
    with pytest.raises(TranscribeError, match="no face or mouth found"):
        analyse_clip(noise_video(tmp_path / "noise.mp4"), tr)


def test_the_local_live_transcript_grows_and_ends_with_the_packages_reading(tiny_package):
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.dashboard.live import local_events
    from mouthmap.runtime.transcriber import Transcriber

    tr = Transcriber(tiny_package, threads=1)
    a = analyse_clip(sample_clip("lgaz8p")[0], tr)
    events = list(local_events(tr, a.rois, fps=None))
    assert [e.kind for e in events[:-1]] == ["partial"] * (len(events) - 1)
    assert [e.frames for e in events] == [*range(8, 75, 8), 75]
    assert events[-1].kind == "final" and events[-1].text == a.text


def test_webcam_frames_arrive_as_jpegs_and_become_a_25_fps_clip(tmp_path):
    import av
    import cv2

    from mouthmap.dashboard.webcam import frames_from_value, save_recording

    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(10)]
    value = {"fps": 25, "frames": [base64.b64encode(cv2.imencode(".jpg", f)[1]).decode()
                                   for f in frames]}  # fmt: skip
    got, fps = frames_from_value(value)
    assert got.shape == (10, 48, 64, 3) and fps == 25
    path = save_recording(value, tmp_path)
    with av.open(str(path)) as c:
        assert float(c.streams.video[0].average_rate) == 25
        assert sum(1 for _ in c.decode(video=0)) == 10
    with pytest.raises(ValueError, match="not a JPEG"):
        frames_from_value({"frames": [base64.b64encode(b"nope").decode()]})


def test_the_benchmark_page_reads_bench_json(tmp_path):
    from mouthmap.dashboard.reports import bench_rows, load_bench

    assert load_bench(tmp_path) is None
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bench(tmp_path)
    (tmp_path / "bench" / "bench.json").write_text(json.dumps(BENCH))
    b = load_bench(tmp_path)
    rows = bench_rows(b.report)
    assert rows[0]["variant"] == "ORT FP32" and rows[0]["p50 ms (1 thr)"] == 33.3
    assert rows[0]["WER beam %"] == 12.5 and rows[1]["WER greedy %"] is None


def test_the_drift_page_shows_the_newest_report(tmp_path):
    import os
    import time

    from mouthmap.dashboard.reports import load_drift

    assert load_drift(tmp_path) is None
    (tmp_path / "drift").mkdir()
    old, new = tmp_path / "drift" / "old.html", tmp_path / "drift" / "report.html"
    old.write_text("<html>old</html>")
    new.write_text("<html>new</html>")
    os.utime(old, (time.time() - 60, time.time() - 60))
    d = load_drift(tmp_path)
    assert d.latest == new and d.html == "<html>new</html>" and d.others == [old]


def test_no_registry_configured_is_a_state_not_an_error(monkeypatch, tmp_path):
    from _stack_fixtures import free_port
    from mouthmap.dashboard.reports import load_registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MOUTHMAP_STACK_DIR", str(tmp_path / "no-stack"))
    v = load_registry(None)
    assert v.unavailable.startswith("no registry configured") and not v.rows
    v = load_registry(f"http://127.0.0.1:{free_port()}", timeout=1)
    assert "unreachable" in v.unavailable


BENCH = {
    "settings": {"threads": [1], "batch": 2, "frames": 75, "repeats": 3},
    "clip_seconds": 3.0,
    "machine": {"cpu": "test cpu", "cores": 2, "avx2": True, "vnni": False,
                "onnxruntime": "1.x", "load_average": [0.5, 0.5, 0.5]},
    "rows": [
        {"name": "ORT FP32", "note": "", "bytes": 7_500_000, "parameters": 1_800_000,
         "latency_ms": {"1": {"p50": 33.33, "p95": 40.0}}, "throughput_clips_s": 30.0,
         "peak_rss_mb": 200.0, "wer_greedy": 0.2, "wer_beam": 0.125, "test_clips": 3},
        {"name": "Teacher FP32 (eager)", "note": "untrained", "bytes": 30_000_000,
         "parameters": 8_000_000, "latency_ms": {"1": {"p50": 100.0, "p95": 120.0}},
         "throughput_clips_s": 10.0, "peak_rss_mb": 400.0, "wer_greedy": None,
         "wer_beam": None, "test_clips": None},
    ],
    "targets": [{"target": "INT8 model", "value": None, "met": False, "detail": "no INT8"}],
    "notes": ["a note"],
}  # fmt: skip


def test_the_dashboard_command_refuses_a_missing_package_before_starting(tmp_path):
    from typer.testing import CliRunner

    from mouthmap.cli import app

    result = CliRunner().invoke(app, ["dashboard", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a MouthMap model package" in result.output
    result = CliRunner().invoke(app, ["dashboard", "--decoder", "nope"])
    assert result.exit_code == 2 and "unknown decoder" in result.output
