"""The manifest's data contract: bad clips are caught, named by id, and documented."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mouthmap.config import load_params
from mouthmap.validation import ValidationReport, ValidationRules, validate_manifest
from mouthmap.validation.suite import MISSING_ID, SUITE_NAME

SENTENCES = (
    "bin blue at f two now",
    "lay green by a one soon",
    "place red in b three again",
    "set white with c four please",
    "bin red with z nine soon",
)
REPO = Path(__file__).resolve().parents[1]


def good_manifest(n: int = 20) -> pd.DataFrame:
    rows = []
    for i in range(n):
        cid = f"s1_c{i:04d}"
        rows.append(
            {
                "id": cid,
                "speaker": "s1",
                "video": f"data/grid/s1/video/c{i:04d}.mpg",
                "align": f"data/grid/s1/align/c{i:04d}.align",
                "split": ("train", "val", "test")[i % 3],
                "status": "ok",
                "error": "",
                "n_frames": 75 - (i % 2),
                "fps": 25.0,
                "width": 360,
                "height": 288,
                "audio_present": True,
                "audio_seconds": 3.0,
                "align_ok": True,
                "transcript": SENTENCES[i % len(SENTENCES)],
                "roi_found_frac": 1.0 - 0.01 * (i % 2),
                "roi_mean": 90.0 + i % 50,
                "roi_std": 35.0,
                "roi_min": 3.0,
                "roi_max": 250.0,
                "mel_frames": 300,
                "roi_path": f"roi/{cid}.npz",
            }
        )
    return pd.DataFrame(rows)


def reject(df: pd.DataFrame, i: int, error: str) -> None:
    """What prepare writes for a clip it could not decode."""
    df.loc[i, ["status", "error", "roi_path"]] = ["rejected", error, ""]
    df.loc[i, ["n_frames", "width", "height", "mel_frames"]] = 0
    df.loc[i, ["fps", "roi_found_frac", "roi_mean", "roi_std", "roi_min", "roi_max"]] = np.nan
    df.loc[i, ["audio_present", "align_ok"]] = False


def line_for(report: ValidationReport, cid: str) -> str:
    lines = [ln for ln in report.summary().splitlines() if ln.startswith(f" - {cid}:")]
    assert len(lines) == 1, report.summary()
    return lines[0]


@pytest.fixture(scope="module")
def rules() -> ValidationRules:
    return ValidationRules()


@pytest.fixture(scope="module")
def good_report(tmp_path_factory, rules) -> ValidationReport:
    # also pays Great Expectations' import (seconds) once for the whole module
    return validate_manifest(good_manifest(), rules, tmp_path_factory.mktemp("docs_good"))


def test_good_manifest_passes_and_writes_data_docs(good_report):
    assert good_report.success, good_report.summary()
    assert (good_report.n_clips, good_report.n_bad, good_report.failures) == (20, 0, [])
    assert good_report.summary().startswith("all 20 clips pass validation")
    index = good_report.docs_index
    assert index.name == "index.html" and index.is_file()
    assert SUITE_NAME in index.read_text()
    pages = list(index.parent.glob("validations/**/*.html"))
    assert len(pages) == 1 and "n_frames" in pages[0].read_text()


def test_metrics_json_has_counts_and_per_expectation_success(good_report):
    metrics = json.loads(good_report.to_json())
    assert metrics["n_clips"] == 20 and metrics["n_bad"] == 0 and metrics["success"] is True
    assert metrics["expectations"]["n_frames_in_range"] is True
    assert metrics["expectations"]["transcript_in_grammar"] is True
    assert all(metrics["expectations"].values())


BAD_KINDS = {
    "wrong frame count": ({"n_frames": 12}, "n_frames=12 not in [74, 75]"),
    "wrong fps": ({"fps": 29.97}, "fps=30 != 25"),
    "no audio": ({"audio_present": False}, "no audio"),
    "missing alignment": ({"align_ok": False, "transcript": ""}, "alignment missing"),
    "transcript outside the grammar": (
        {"transcript": "bin purple at w two now"},
        "transcript 'bin purple at w two now' is not a GRID sentence",
    ),
    "transcript with an extra word": (
        {"transcript": "bin blue at f two now please"},
        "'bin blue at f two now please' is not a GRID sentence",
    ),
    "mouth mostly not found": ({"roi_found_frac": 0.5}, "mouth found in only 50% of frames"),
    "blank crop": ({"roi_std": 0.0}, "roi_std=0 <= 5 (blank crop)"),
    "black crop": ({"roi_mean": 2.0}, "roi_mean=2 not in [20, 235]"),
    "unknown split": ({"split": "holdout"}, "split='holdout' not in"),
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_each_kind_of_bad_clip_is_named_with_its_reason(kind, rules, tmp_path):
    changes, reason = BAD_KINDS[kind]
    df = good_manifest()
    for col, value in changes.items():
        df[col] = df[col].astype(object) if isinstance(value, str) else df[col]
        df.loc[[3, 11], col] = value
    report = validate_manifest(df, rules, tmp_path)
    assert not report.success
    assert report.n_bad == 2
    assert report.bad_ids == ["s1_c0003", "s1_c0011"]
    assert report.summary().startswith("2 of 20 clips fail validation:")
    for cid in report.bad_ids:
        assert reason in line_for(report, cid)
    failing = [f for f in report.failures if f.ids]
    assert failing and all(f.ids == ["s1_c0003", "s1_c0011"] for f in failing)


def test_duplicate_and_missing_ids_are_caught(rules, tmp_path):
    df = good_manifest()
    df.loc[5, "id"] = df.loc[4, "id"]
    df.loc[9, "id"] = None
    report = validate_manifest(df, rules, tmp_path)
    assert not report.success
    assert report.bad_ids == ["s1_c0004", MISSING_ID]
    assert report.n_bad == 3  # both rows sharing the id, and the row without one
    assert "duplicate id (2 rows)" in line_for(report, "s1_c0004")
    assert "no id (manifest row 9" in line_for(report, MISSING_ID)


def test_rejected_clip_reports_why_prepare_rejected_it(rules, tmp_path):
    df = good_manifest()
    reject(df, 7, "no mouth found")
    report = validate_manifest(df, rules, tmp_path)
    assert report.bad_ids == ["s1_c0007"]
    line = line_for(report, "s1_c0007")
    assert "status=rejected (no mouth found)" in line
    assert "no audio" in line and "missing fps" in line


def test_a_clip_breaking_several_rules_gets_one_line_listing_all(rules, tmp_path):
    df = good_manifest()
    df.loc[2, ["n_frames", "audio_present"]] = [12, False]
    df.loc[2, "transcript"] = "bin purple at w two now"
    df.loc[15, "roi_std"] = 0.0
    report = validate_manifest(df, rules, tmp_path)
    assert report.summary().splitlines()[0] == "2 of 20 clips fail validation:"
    line = line_for(report, "s1_c0002")
    assert "n_frames=12 not in [74, 75]" in line and "no audio" in line
    assert "'bin purple at w two now'" in line
    assert "blank crop" in line_for(report, "s1_c0015")
    metrics = report.to_dict()
    assert metrics["n_bad"] == 2 and metrics["bad_ids"] == ["s1_c0002", "s1_c0015"]
    assert metrics["expectations"]["audio_present"] is False
    assert metrics["expectations"]["fps_ok"] is True
    json.dumps(metrics)  # plain JSON types only


def test_manifest_read_back_from_csv_is_validated_the_same(rules, tmp_path):
    df = good_manifest()
    reject(df, 3, "not a video file")
    df.loc[6, ["align", "transcript", "align_ok"]] = ["", "", False]
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    back = pd.read_csv(io.StringIO(buf.getvalue()))  # "" comes back as NaN
    report = validate_manifest(back, rules, tmp_path)
    assert report.bad_ids == ["s1_c0003", "s1_c0006"]
    assert "status=rejected (not a video file)" in line_for(report, "s1_c0003")
    assert "alignment missing" in line_for(report, "s1_c0006")


def test_rerunning_in_the_same_docs_dir_works(rules, tmp_path):
    docs = tmp_path / "docs"
    bad = good_manifest()
    bad.loc[0, "n_frames"] = 3
    first = validate_manifest(bad, rules, docs)
    second = validate_manifest(good_manifest(), rules, docs)
    assert not first.success and second.success
    assert len(list(docs.glob("validations/**/*.html"))) == 1  # ephemeral: latest run only
    # a file context (gx/ under the project) keeps the suite and every run
    project = tmp_path / "project"
    for _ in range(2):
        report = validate_manifest(good_manifest(), rules, project / "reports/docs", project)
        assert report.success and report.docs_index.is_file()
    assert (project / "gx" / "great_expectations.yml").is_file()
    assert len(list((project / "reports/docs").glob("validations/**/*.html"))) == 2


def test_empty_manifest_fails(rules, tmp_path):
    report = validate_manifest(good_manifest().iloc[0:0], rules, tmp_path)
    assert not report.success and report.n_bad == 0
    assert "no clips" in report.summary()


def test_manifest_without_a_required_column_is_refused(rules, tmp_path):
    with pytest.raises(ValueError, match="roi_std"):
        validate_manifest(good_manifest().drop(columns=["roi_std"]), rules, tmp_path)


def test_rules_follow_params_yaml():
    rules = ValidationRules.from_params(load_params(REPO / "params.yaml").validate_)
    assert (rules.min_frames, rules.max_frames, rules.fps, rules.min_roi_found) == (
        74,
        75,
        25,
        0.98,
    )
    assert ValidationRules.from_params({"min_frames": 70, "data_docs_dir": "x"}).min_frames == 70


def test_full_speaker_manifest_validates_in_seconds(rules, tmp_path, good_report):
    df = good_manifest(900)
    df.loc[[5, 800], "n_frames"] = [12, 3]
    start = time.perf_counter()
    report = validate_manifest(df, rules, tmp_path)
    seconds = time.perf_counter() - start
    assert report.bad_ids == ["s1_c0005", "s1_c0800"] and report.n_clips == 900
    assert seconds < 30  # about 0.5 s once GE is imported
