"""The `mouthmap data` commands as a user runs them: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from media_factory import noise_video
from mouthmap import stages
from mouthmap.cli import app
from mouthmap.config import load_params

runner = CliRunner()


def _params(tmp_path: Path, corpus: Path, max_bad: float = 0.02) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(
        f"data:\n  source: {corpus}\n  raw_dir: raw\n  prepared_dir: prepared\n"
        f"  splits: {Path(__file__).parents[1] / 'data/splits/grid_s1.json'}\n"
        f"prepare:\n  workers: 1\nvalidate:\n  max_bad_fraction: {max_bad}\n"
    )
    return p


def _cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_fetch_prepare_validate_summary_on_good_clips(small_corpus, tmp_path):
    p = str(_params(tmp_path, small_corpus))
    assert _cli("data", "fetch", "--from", str(small_corpus), "-p", p).exit_code == 0
    prep = _cli("data", "prepare", "-p", p)
    assert prep.exit_code == 0 and "prepared 4 clips" in prep.output
    val = _cli("data", "validate", "-p", p)
    assert val.exit_code == 0 and "all 4 clips pass" in val.output
    summary = json.loads(_cli("data", "summary", "--json", "-p", p).output)
    assert summary["ok"] == 4 and summary["frames"] >= 4 * 74


@pytest.fixture
def corpus_with_faceless_clip(small_corpus: Path) -> Path:
    noise_video(small_corpus / "s1" / "video" / "noface.mp4")
    align = (small_corpus / "s1" / "align" / "bbaf2n.align").read_text()
    (small_corpus / "s1" / "align" / "noface.align").write_text(align)
    return small_corpus


def test_validate_fails_and_names_the_bad_clip_when_too_many_are_bad(
    corpus_with_faceless_clip, tmp_path
):
    p = str(_params(tmp_path, corpus_with_faceless_clip))
    _cli("data", "fetch", "--from", str(corpus_with_faceless_clip), "-p", p)
    prep = _cli("data", "prepare", "-p", p)
    assert "rejected s1_noface" in prep.output and "no mouth found" in prep.output
    val = _cli("data", "validate", "-p", p)
    assert val.exit_code == 1
    assert "s1_noface" in val.output and "1 of 5 clips fail" in val.output


def test_few_bad_clips_within_tolerance_are_quarantined_not_fatal(
    corpus_with_faceless_clip, tmp_path
):
    p = _params(tmp_path, corpus_with_faceless_clip, max_bad=0.25)
    _cli("data", "fetch", "--from", str(corpus_with_faceless_clip), "-p", str(p))
    _cli("data", "prepare", "-p", str(p))
    val = _cli("data", "validate", "-p", str(p))
    assert val.exit_code == 0 and "quarantined" in val.output
    assert stages.quarantined_ids(load_params(p)) == {"s1_noface"}


def test_prepare_before_fetch_says_what_to_run(tmp_path):
    res = _cli("data", "prepare", "-p", str(_params(tmp_path, tmp_path / "nothing")))
    assert res.exit_code == 2 and "mouthmap data fetch" in res.output


def test_invalid_parameter_file_is_refused_with_the_key_named(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("prepare:\n  workers: 0\n")
    res = _cli("data", "prepare", "-p", str(p))
    assert res.exit_code == 2 and "prepare.workers" in res.output


@pytest.mark.integration
def test_stack_commands_start_report_and_stop_s3(tmp_path):
    from _stack_fixtures import free_port

    sd = str(tmp_path / "stack")
    try:
        up = _cli("stack", "up", "--s3-port", str(free_port()), "--state-dir", sd, "--no-mlflow",
                  "--no-triton")  # fmt: skip
        assert up.exit_code == 0 and "S3 started at http://127.0.0.1:" in up.output
        assert _cli("stack", "status", "--state-dir", sd).exit_code == 0
        env = _cli("stack", "env", "--state-dir", sd).output
        assert (
            "export AWS_ACCESS_KEY_ID=" in env and "export AWS_ENDPOINT_URL=http://127.0.0.1" in env
        )
    finally:
        assert "seaweedfs" in _cli("stack", "down", "--state-dir", sd).output
    status = _cli("stack", "status", "--state-dir", sd)
    assert status.exit_code == 1 and "down" in status.output
    assert _cli("stack", "env", "--state-dir", sd).exit_code == 2
