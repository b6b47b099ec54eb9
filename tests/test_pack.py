"""The portable pack of the prepared corpus: what goes in comes back, close enough to train."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_params
from mouthmap.cli import app
from mouthmap.config import load_params
from mouthmap.data import cache
from mouthmap.data.corpus import read_align
from mouthmap.data.dataset import GridDataset
from mouthmap.data.pack import PackError, decode_roi, encode_roi, pack, unpack
from mouthmap.data.prepare import read_manifest


@pytest.fixture(scope="module")
def packed(prepared_sample: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "sample.tar"
    quality = out.parent / "dq.json"
    quality.write_text(json.dumps({"quarantined": ["s1_bbaf2n"], "n_clips": 20}))
    report = pack(prepared_sample / "prepared", out, quality, workers=2)
    assert report.clips == 20 and report.mean_abs_error < 2.5
    return out


def test_a_roi_survives_h264_within_a_few_grey_levels():
    rng = np.random.default_rng(0)
    # a smooth moving blob, like a mouth: what the codec is good at and the data looks like
    yy, xx = np.mgrid[:96, :96]
    frames = np.stack([
        (120 + 60 * np.exp(-((xx - 40 - t) ** 2 + (yy - 48) ** 2) / 300)) for t in range(20)
    ]).astype(np.uint8)  # fmt: skip
    frames = np.clip(frames + rng.integers(-2, 3, frames.shape), 0, 255).astype(np.uint8)
    back = decode_roi(encode_roi(frames, crf=18))
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 2.5
    with pytest.raises(PackError, match="even frame size"):
        encode_roi(frames[:, :95])
    with pytest.raises(PackError, match="no frame could be decoded"):
        decode_roi(b"not a video", "bad.mp4")


def test_unpacking_rebuilds_a_cache_that_reads_like_the_original(
    prepared_sample: Path, packed: Path, tmp_path
):
    original = prepared_sample / "prepared"
    quality = tmp_path / "reports" / "dq.json"
    report = unpack(packed, tmp_path / "prepared", quality)
    assert report.clips == 20
    a, b = read_manifest(original), read_manifest(tmp_path / "prepared")
    cols = ["id", "split", "transcript", "n_frames", "roi_mean", "roi_std", "roi_path"]
    assert a[a["status"] == "ok"][cols].reset_index(drop=True).equals(b[cols])
    # the pixel statistics are the original's, so the input normalisation is the same
    for cid, align in zip(b["id"], b["align"], strict=True):
        assert Path(align).is_relative_to(tmp_path / "prepared") and read_align(align)
        x = cache.read_arrays(original / "clips" / f"{cid}.npz")
        y = cache.read_arrays(tmp_path / "prepared" / "clips" / f"{cid}.npz")
        assert y["roi"].shape == x["roi"].shape
        assert np.abs(y["roi"].astype(int) - x["roi"]).mean() < 3
        assert np.array_equal(y["centers"], x["centers"]) and "mel" not in y
        record = cache.read_record(tmp_path / "prepared" / "clips" / f"{cid}.json")
        assert record["row"]["align"] == align and "/" not in record["row"]["video"]
    assert json.loads(quality.read_text())["quarantined"] == ["s1_bbaf2n"]
    # without --audio there is no mel, and an audio model is told why
    ds = GridDataset(tmp_path / "prepared", with_audio=True)
    with pytest.raises(ValueError, match="mouthmap data pack --audio"):
        ds[0]


def test_a_model_trains_on_an_unpacked_cache_without_mlflow(packed: Path, tmp_path, monkeypatch):
    """The rented-GPU path: unpack, then train with tracking off (no MLflow installed there)."""
    import sys

    from mouthmap.train.trainer import train

    params = load_params(
        write_params(
            tmp_path,
            data={"prepared_dir": str(tmp_path / "prepared")},
            train={"mlflow_uri": "off", "align_weight": 1.0},
        )  # fmt: skip
    )
    unpack(packed, tmp_path / "prepared", params.path(params.validate_.metrics))
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it now fails
    monkeypatch.chdir(tmp_path)
    result = train(params, progress=False)
    assert result.best_checkpoint.is_file() and result.run_id is None
    assert json.loads((result.out_dir / "history.json").read_text())[0]["val_words_wer"] >= 0
    assert not (tmp_path / "mlruns").exists()
    from mouthmap import stages

    assert stages.quarantined_ids(params) == {"s1_bbaf2n"}  # training leaves it out


def test_a_pack_with_audio_keeps_the_mel(prepared_sample: Path, tmp_path):
    out = tmp_path / "a.tar"
    pack(prepared_sample / "prepared", out, audio=True)
    unpack(out, tmp_path / "prepared")
    ds = GridDataset(tmp_path / "prepared", splits=("val",), with_audio=True)
    x = cache.read_arrays(prepared_sample / "prepared" / "clips" / f"{ds.rows.iloc[0]['id']}.npz")
    assert np.array_equal(ds[0].mel.numpy(), x["mel"].astype(np.float32))


def _rewrite(src: Path, dst: Path, drop: str = "", add: tuple[str, bytes] | None = None) -> Path:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            if m.name != drop:
                tout.addfile(m, tin.extractfile(m))
        if add:
            info = tarfile.TarInfo(add[0])
            info.size = len(add[1])
            tout.addfile(info, io.BytesIO(add[1]))
    return dst


def test_bad_packs_are_refused_with_the_cause_and_leave_the_cache_alone(packed: Path, tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "keep.txt").write_text("still here")
    with pytest.raises(PackError, match="no such file"):
        unpack(tmp_path / "missing.tar", target)
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PackError, match="not a MouthMap pack"):
        unpack(tmp_path / "junk.tar", target)
    partial = _rewrite(packed, tmp_path / "partial.tar", drop="clips/s1_bbaf2n.mp4")
    with pytest.raises(PackError, match="clips/s1_bbaf2n.mp4 is missing"):
        unpack(partial, target)
    evil = _rewrite(packed, tmp_path / "evil.tar", add=("align/../../escape.align", b"x"))
    with pytest.raises(PackError, match="outside the cache"):
        unpack(evil, target)
    assert (target / "keep.txt").read_text() == "still here"
    assert not (tmp_path / "escape.align").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["prepared"]  # no leftovers


def test_the_cli_packs_and_unpacks(prepared_sample: Path, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = write_params(tmp_path / "a", data={"prepared_dir": str(prepared_sample / "prepared")})
    dst = write_params(tmp_path / "b")
    runner = CliRunner()
    got = runner.invoke(app, ["data", "pack", str(tmp_path / "p.tar"), "-p", str(src)])
    assert got.exit_code == 0, got.output
    assert "packed 20 clips" in got.output and "mean absolute pixel error" in got.output
    assert "no validation report" in got.output  # the sample was never validated here
    stale = tmp_path / "b" / "reports" / "dq.json"  # validate.metrics in write_params
    stale.parent.mkdir()
    stale.write_text(json.dumps({"quarantined": ["s1_of_another_cache"]}))
    got = runner.invoke(app, ["data", "unpack", str(tmp_path / "p.tar"), "-p", str(dst)])
    assert got.exit_code == 0, got.output
    assert "unpacked 20 clips" in got.output
    assert not stale.exists() and "run `mouthmap data validate`" in got.output
    assert len(read_manifest(tmp_path / "b" / "prepared")) == 20
    got = runner.invoke(app, ["data", "unpack", str(tmp_path / "nope.tar"), "-p", str(dst)])
    assert got.exit_code == 2 and "no such file" in got.output
