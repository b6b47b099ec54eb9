"""The prepare stage on real clips: ROIs cached, bad clips named and skipped, resumable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import ROOT
from media_factory import noise_video, reencode
from mouthmap.config import load_params
from mouthmap.data import cache, corpus
from mouthmap.data.prepare import PrepareSettings, prepare, read_manifest

SETTINGS = PrepareSettings()


def _run(root: Path, out: Path, workers: int = 1, **kw):
    clips = corpus.discover(root)
    return prepare(
        clips, {c.id: "train" for c in clips}, out, SETTINGS, workers, progress=False, **kw
    )


def test_real_clips_become_96x96_mouth_sequences_with_audio_features(small_corpus, tmp_path):
    report = _run(small_corpus, tmp_path / "prep", workers=2)
    assert report.prepared == 4 and not report.rejected
    df = read_manifest(tmp_path / "prep")
    assert set(df["status"]) == {"ok"}
    row = df.iloc[0]
    arrays = cache.read_arrays(tmp_path / "prep" / row["roi_path"])
    assert arrays["roi"].shape == (row["n_frames"], 96, 96) and arrays["roi"].dtype == np.uint8
    assert 290 <= arrays["mel"].shape[0] <= 310 and arrays["mel"].shape[1] == 80
    assert row["transcript"] == corpus.transcript(corpus.read_align(row["align"]))
    assert row["roi_found_frac"] >= 0.98 and row["fps"] == 25


def test_second_run_skips_up_to_date_clips_and_redoes_changed_ones(small_corpus, tmp_path):
    out = tmp_path / "prep"
    _run(small_corpus, out)
    again = _run(small_corpus, out)
    assert again.skipped == 4 and again.prepared == 0
    align = next((small_corpus / "s1" / "align").glob("*.align"))
    align.write_text(align.read_text())  # touched: new mtime
    third = _run(small_corpus, out)
    assert third.prepared == 1 and third.skipped == 3


def test_bad_clips_are_rejected_by_name_and_the_others_still_prepared(small_corpus, tmp_path):
    vdir, adir = small_corpus / "s1" / "video", small_corpus / "s1" / "align"
    good = vdir / "bbaf2n.mp4"
    (vdir / "trunc1.mp4").write_bytes(good.read_bytes()[:3000])
    (vdir / "text1.mp4").write_text("this is not a video")
    noise_video(vdir / "noface.mp4")
    reencode(good, vdir / "mute1.mp4", keep_audio=False)
    shutil.copy(good, vdir / "noalig.mp4")
    shutil.copy(good, vdir / "badali.mp4")
    (adir / "badali.align").write_text("0 100 bin\r\n50 20 blue\r\n")
    for code in ("trunc1", "text1", "noface", "mute1"):
        shutil.copy(adir / "bbaf2n.align", adir / f"{code}.align")

    report = _run(small_corpus, tmp_path / "prep", workers=2)
    reasons = dict(report.rejected)
    assert set(reasons) == {
        f"s1_{c}" for c in ("trunc1", "text1", "noface", "mute1", "noalig", "badali")
    }
    assert "text1.mp4" in reasons["s1_text1"]
    assert "trunc1.mp4" in reasons["s1_trunc1"]
    assert "no mouth found" in reasons["s1_noface"]
    assert "audio" in reasons["s1_mute1"]
    assert "noalig.align" in reasons["s1_noalig"] and "not found" in reasons["s1_noalig"]
    assert "badali.align" in reasons["s1_badali"]
    df = read_manifest(tmp_path / "prep").set_index("id")
    assert (
        df.loc[[f"s1_{c}" for c in ("bbaf2n", "lgaz8p", "pric5a", "bbaf4p")], "status"] == "ok"
    ).all()


def test_interrupted_prepare_loses_nothing_and_resumes(tmp_path):
    root = tmp_path / "grid"
    shutil.copytree(ROOT / "data" / "sample", root)
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  raw_dir: {root}\n  prepared_dir: {tmp_path / 'prep'}\n"
        f"  splits: {ROOT / 'data' / 'splits' / 'grid_s1.json'}\nprepare:\n  workers: 2\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mouthmap", "data", "prepare", "-p", str(params)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    clips_dir = tmp_path / "prep" / "clips"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(clips_dir.glob("*.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up: as if the machine died
    proc.wait()
    done = list(clips_dir.glob("*.json"))
    assert 3 <= len(done) < 20, "the run should have been cut off part-way"
    for rec in done:  # everything written before the kill is whole
        npz = rec.with_suffix(".npz")
        assert cache.read_arrays(npz)["roi"].shape[1:] == (96, 96)
    from mouthmap import stages

    report = stages.prepare_corpus(load_params(params), progress=False)
    assert report.skipped >= len(done) and report.skipped + report.prepared == 20
    assert len(read_manifest(tmp_path / "prep")) == 20
