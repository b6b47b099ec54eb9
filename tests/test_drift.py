"""Drift monitoring: per-request features, the sink, the Evidently check, on real GRID clips."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE
from mouthmap.monitor import drift, evaluate, features, shifts, sink
from mouthmap.monitor.reference import build_reference, prepared_features

MOUTHMAP = str(Path(sys.executable).parent / "mouthmap")
CLIP = SAMPLE / "s1" / "video" / "bbaf2n.mp4"


@pytest.fixture(scope="module")
def clip_frames() -> np.ndarray:
    from mouthmap.data import media

    return media.probe_and_decode_video(CLIP).frames


# --- features --------------------------------------------------------------------------------


def test_image_features_move_the_way_each_shift_does(clip_frames):
    from mouthmap.data.media import to_gray

    clean = features.image_features(to_gray(clip_frames))
    dark = features.image_features(to_gray(shifts.darken(clip_frames, 0.5)))
    blurred = features.image_features(to_gray(shifts.blur(clip_frames, 2.0)))
    noisy = features.image_features(to_gray(shifts.noise(clip_frames, 12.0)))
    assert dark["brightness"] == pytest.approx(clean["brightness"] / 2, rel=0.02)
    assert dark["contrast"] == pytest.approx(clean["contrast"] / 2, rel=0.05)
    assert blurred["sharpness"] < clean["sharpness"] / 3
    assert noisy["sharpness"] > 3 * clean["sharpness"]
    assert noisy["motion_energy"] > 3 * clean["motion_energy"]
    assert clean["clip_seconds"] == pytest.approx(3.0)


def test_model_features_tell_a_sure_model_from_a_lost_one():
    t, c = 50, 28
    sure = np.full((t, c), -20.0)
    sure[np.arange(t), np.where(np.arange(t) % 2 == 0, 0, 5)] = 0.0  # blank / one letter
    flat = np.full((t, c), -np.log(c))
    a, b = features.model_features(sure), features.model_features(flat)
    assert a["confidence"] > 0.99 and b["confidence"] == pytest.approx(1 / c)
    assert a["entropy"] < 0.01 and b["entropy"] == pytest.approx(np.log(c))
    assert a["blank_share"] == pytest.approx(0.5)
    assert a["emb_delta"] > b["emb_delta"] == 0.0
    emb = features.model_features(flat, embeddings=np.ones((t, 4)))
    assert emb["emb_norm"] == pytest.approx(2.0) and emb["emb_std"] == 0.0


@pytest.mark.parametrize("shape", [(0, 96, 96), (96, 96), (3, 96, 96, 3)])
def test_features_refuse_inputs_that_are_not_roi_stacks(shape):
    with pytest.raises(features.FeatureError, match="expected"):
        features.image_features(np.zeros(shape, np.uint8))


# --- sink ----------------------------------------------------------------------------------


def test_sink_appends_jsonl_and_a_window_reads_it_back(tmp_path, clip_frames):
    rois = clip_frames[:, 100:196, 130:226, 0]
    out = sink.FeatureSink(tmp_path / "requests")
    for i in range(5):
        rec = sink.record_request(rois, sink=out, mouth_found=1.0, model="m@3", request=i)
        assert rec is not None and rec["model"] == "m@3"
    window = sink.load_window(tmp_path / "requests", since="1h")
    assert len(window) == 5
    assert list(window["request"]) == [0, 1, 2, 3, 4]
    assert {"brightness", "sharpness", "mouth_found", "ts"} <= set(window.columns)
    assert sink.load_window(tmp_path / "requests", since="2000-01-01").shape[0] == 5
    assert sink.load_window(tmp_path / "requests", last=2)["request"].tolist() == [3, 4]


def test_sampling_and_faults_never_fail_a_request(tmp_path, caplog):
    none = sink.FeatureSink(tmp_path / "none", sample_rate=0.0)
    assert sink.record_request(np.zeros((10, 96, 96), np.uint8), sink=none) is None
    assert not list((tmp_path / "none").glob("*.jsonl"))
    some = sink.FeatureSink(tmp_path / "some", sample_rate=1.0)
    with caplog.at_level(logging.WARNING):
        assert sink.record_request(np.zeros((96, 96)), sink=some) is None  # not a clip
    assert "not recorded" in caplog.text
    with pytest.raises(ValueError, match="sample_rate"):
        sink.FeatureSink(tmp_path, sample_rate=1.5)


def test_the_server_configures_the_sink_through_its_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(sink, "_DEFAULT", None)
    monkeypatch.delenv(sink.ENV_SINK, raising=False)
    assert sink.record_request(np.zeros((10, 96, 96), np.uint8)) is None  # no sink: no-op
    monkeypatch.setenv(sink.ENV_SINK, str(tmp_path / "env"))
    assert sink.record_request(np.zeros((10, 96, 96), np.uint8)) is not None
    assert len(sink.load_window(tmp_path / "env")) == 1


@pytest.mark.parametrize("bad", ["yesterday", "5x", "h"])
def test_since_names_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="1h, 30m, 2d"):
        sink.parse_since(bad)


@pytest.mark.integration
def test_sink_and_check_work_against_real_s3(tmp_path, clip_frames, monkeypatch):
    import boto3

    from _stack_fixtures import running_stack
    from mouthmap.stack import s3_env

    with running_stack(tmp_path / "stack") as info:
        env = s3_env(info)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ENDPOINT_URL", info.endpoint_url)
        s3 = boto3.client("s3", endpoint_url=info.endpoint_url)
        s3.create_bucket(Bucket="drift")
        out = sink.FeatureSink("s3://drift/requests", flush_every=10)
        for i in range(25):  # 25 different requests: other frames, other crops
            rois = clip_frames[i : i + 40, 90 + i : 186 + i, 120:216, 0]
            sink.record_request(rois, sink=out, request=i)
        out.close()  # uploads the last 5
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="drift")["Contents"]]
        assert len(keys) == 3 and all(k.startswith("requests/date=") for k in keys)
        window = sink.load_window("s3://drift/requests", since="10m")
        assert sorted(window["request"]) == list(range(25))
        # the reference on S3 as well, the way the CronJob reads both
        ref = window.drop(columns=["ts", "request"])
        s3.put_object(Bucket="drift", Key="reference.csv", Body=ref.to_csv(index=False).encode())
        proc = subprocess.run(
            [MOUTHMAP, "drift", "check", "s3://drift/requests", "--reference",
             "s3://drift/reference.csv", "--html", str(tmp_path / "r.html"), "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["drifted"] is False


# --- the check on real clips -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_pools(prepared_sample: Path):
    """Reference (14 train clips), clean held-out (6 val+test clips, from the prepared cache)
    and the same held-out clips darkened, blurred and noisy through the serving path."""
    prepared = prepared_sample / "prepared"
    ref = prepared_features(prepared, ["train"])
    clean = prepared_features(prepared, ["val", "test"])
    videos = [SAMPLE / "s1" / "video" / f"{i.split('_', 1)[1]}.mp4" for i in clean["id"]]
    shifted = evaluate.feature_tables({k: (videos, k, None) for k in shifts.SHIFTS}, workers=1)
    return ref, clean, shifted, videos


def test_serving_path_features_equal_the_prepared_ones(sample_pools):
    ref, clean, _, videos = sample_pools
    live = evaluate.video_record(videos[0])  # decode -> locate -> crop -> features, as served
    row = clean.iloc[0]
    for name in features.IMAGE_FEATURES + features.TRACK_FEATURES:
        assert live[name] == pytest.approx(row[name], rel=1e-6, abs=1e-9), name


def test_clean_held_out_clips_are_not_flagged(sample_pools):
    ref, clean, _, _ = sample_pools
    result = drift.check_drift(ref, clean, min_requests=5)
    assert not result.drifted, result.summary()


@pytest.mark.parametrize("kind", list(shifts.SHIFTS))
def test_darkened_blurred_and_noisy_inputs_are_flagged(sample_pools, kind):
    ref, _, shifted, _ = sample_pools
    result = drift.check_drift(ref, shifted[kind], min_requests=5)
    assert result.drifted, result.summary()
    expected = {"dark": "brightness", "blur": "sharpness", "noise": "sharpness"}[kind]
    assert expected in result.drifted_columns


def test_report_and_lean_check_agree(sample_pools, tmp_path):
    ref, _, shifted, _ = sample_pools
    lean = drift.check_drift(ref, shifted["blur"], min_requests=5)
    full = drift.check_drift(ref, shifted["blur"], min_requests=5, html=tmp_path / "r.html")
    assert (lean.share, lean.drifted) == (full.share, full.drifted)
    for name, col in lean.columns.items():
        assert col.p_value == pytest.approx(full.columns[name].p_value), name


def test_too_small_a_window_gives_no_verdict(sample_pools):
    ref, clean, _, _ = sample_pools
    with pytest.raises(drift.DriftInputError, match="fewer than the 20 needed"):
        drift.check_drift(ref, clean)


def test_drift_cli_builds_reference_checks_writes_report_metric_and_mlflow_run(
    prepared_sample, sample_pools, tmp_path
):
    _, clean, shifted, _ = sample_pools
    refcsv = tmp_path / "reference.csv"
    proc = subprocess.run(
        [MOUTHMAP, "drift", "reference", "--prepared", str(prepared_sample / "prepared"),
         "--out", str(refcsv)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "14 clips" in proc.stdout
    assert json.loads(refcsv.with_suffix(".meta.json").read_text())["splits"] == ["train"]

    def check(frame: pd.DataFrame, name: str, *extra: str) -> subprocess.CompletedProcess:
        window = sink.write_jsonl(frame.to_dict("records"), tmp_path / f"{name}.jsonl")
        return subprocess.run(
            [MOUTHMAP, "drift", "check", str(window), "--reference", str(refcsv),
             "--min-requests", "5", "--html", str(tmp_path / f"{name}.html"),
             "--metrics-file", str(tmp_path / f"{name}.prom"), "--label", "release=t", *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ok = check(clean, "clean")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert 'mouthmap_drift_detected{release="t"} 0' in (tmp_path / "clean.prom").read_text()
    mlflow_db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dark = check(shifted["dark"], "dark", "--mlflow-uri", mlflow_db)
    assert dark.returncode == 1, dark.stdout + dark.stderr
    assert dark.stdout.startswith("DRIFT:") and "brightness" in dark.stdout
    prom = (tmp_path / "dark.prom").read_text()
    assert 'mouthmap_drift_detected{release="t"} 1' in prom
    assert 'mouthmap_drift_feature_drifted{feature="brightness",release="t"} 1' in prom
    html = (tmp_path / "dark.html").read_text()
    assert len(html) > 10_000 and "brightness" in html and "Dataset Drift" in html

    import mlflow

    mlflow.set_tracking_uri(mlflow_db)
    (run,) = mlflow.search_runs(experiment_names=["mouthmap-drift"], output_format="list")
    assert run.data.metrics["drift_detected"] == 1.0 and run.data.tags["drift"] == "yes"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"dark.html", "drift_result.json"} <= arts


def test_check_cli_names_a_missing_reference(tmp_path):
    (tmp_path / "w.jsonl").write_text('{"brightness": 1}\n')
    proc = subprocess.run(
        [MOUTHMAP, "drift", "check", str(tmp_path / "w.jsonl"), "--reference",
         str(tmp_path / "nope.csv")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nope.csv" in proc.stderr and "mouthmap drift reference" in proc.stderr


def test_model_features_join_the_reference_when_a_package_is_given(prepared_sample, tiny_package,
                                                                   tmp_path):  # fmt: skip
    path = build_reference(prepared_sample / "prepared", tmp_path / "ref.csv",
                           package=tiny_package, progress=False)  # fmt: skip
    ref = pd.read_csv(path)
    assert set(features.MODEL_FEATURES) <= set(ref.columns)
    assert ref["confidence"].between(1 / 28, 1).all()
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["package"] == str(tiny_package)


# --- the shared corpus: many windows --------------------------------------------------------


@pytest.mark.slow
def test_false_alarms_and_detection_over_many_windows_of_the_shared_corpus(shared_grid):
    """A subset of the 900 clips through the serving path (the full measurement is
    `mouthmap drift evaluate`, README): clean held-out windows rarely alarm, each shift is
    caught in every window."""
    from mouthmap.data import splits as splits_lib

    splits = splits_lib.load(
        Path(__file__).resolve().parents[1] / "data" / "splits" / "grid_s1.json"
    )
    video = shared_grid / "s1" / "video"
    ids = sorted(splits)
    train = [video / f"{i.split('_', 1)[1]}.mp4" for i in ids if splits[i] == "train"][::12][:60]
    held = [video / f"{i.split('_', 1)[1]}.mp4" for i in ids if splits[i] != "train"][:40]
    specs = {"ref": (train, None, None), "clean": (held, None, None)}
    specs.update({k: (held[:12], k, None) for k in shifts.SHIFTS})
    tables = evaluate.feature_tables(specs, workers=2)
    ref, clean = tables.pop("ref"), tables.pop("clean")
    pools = tables
    report = evaluate.evaluate_monitor(ref, clean, pools, window=20, n_windows=30)
    print(evaluate.format_report(report))
    assert report["clean_random"]["rate"] <= 0.05
    assert report["clean_disjoint"]["alarms"] == 0
    for kind in shifts.SHIFTS:
        assert report["shifts"][kind]["rate"] == 1.0, kind
