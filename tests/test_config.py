"""params.yaml is validated into typed objects with clear errors."""

from pathlib import Path

import pytest

from mouthmap.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_resolve_paths_against_the_file():
    params = load_params(ROOT / "params.yaml")
    assert params.prepare.roi_size == 96
    assert params.path(params.data.source) == ROOT / "data" / "sample"


def test_overrides_use_dotted_keys():
    params = load_params(ROOT / "params.yaml", {"prepare.workers": 1, "data.speakers": ["s2"]})
    assert params.prepare.workers == 1 and params.data.speakers == ["s2"]


def test_invalid_value_names_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("prepare:\n  localiser: dlib\n  roi_size: 8\n")
    with pytest.raises(ParamsError) as err:
        load_params(p)
    assert "prepare.localiser" in str(err.value) and "prepare.roi_size" in str(err.value)


def test_unknown_key_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("prepare:\n  roi_sise: 96\n")
    with pytest.raises(ParamsError, match="roi_sise"):
        load_params(p)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_tracking_off_reads_the_same_bare_or_quoted(tmp_path):
    from mouthmap.train.tracking import is_off

    for text in ("off", "'off'", "Off"):
        p = tmp_path / "params.yaml"
        p.write_text(f"train:\n  mlflow_uri: {text}\n")
        assert is_off(load_params(p).train.mlflow_uri), text  # YAML reads bare `off` as false
    p.write_text("train:\n  mlflow_uri: http://127.0.0.1:5000\n")
    assert not is_off(load_params(p).train.mlflow_uri)
