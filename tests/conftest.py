"""Shared fixtures: where the sample and the shared corpus are, and small corpora to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SHARED_GRID = (ROOT / ".." / "shared" / "data" / "grid").resolve()


def sample_clip(code: str = "bbaf2n") -> tuple[Path, Path]:
    return SAMPLE / "s1" / "video" / f"{code}.mp4", SAMPLE / "s1" / "align" / f"{code}.align"


def real_clips(n: int) -> list[Path]:
    """First ``n`` GRID clips: the committed sample, else the shared corpus, else skip."""
    for d in (SAMPLE / "s1" / "video", SHARED_GRID / "s1" / "video"):
        clips = sorted(d.glob("*.mp4"))
        if clips:
            return clips[:n]
    pytest.skip("no GRID clips (data/sample/s1/video or ../shared/data/grid/s1/video)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Model tests on one thread: tiny tensors run faster so, and CI's two cores stay free."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A writable corpus of four sample clips in the project layout."""
    root = tmp_path / "grid"
    for sub in ("video", "align"):
        (root / "s1" / sub).mkdir(parents=True)
    for code in ("bbaf2n", "lgaz8p", "pric5a", "bbaf4p"):
        video, align = sample_clip(code)
        shutil.copy(video, root / "s1" / "video" / video.name)
        shutil.copy(align, root / "s1" / "align" / align.name)
    return root


@pytest.fixture
def shared_grid() -> Path:
    if not (SHARED_GRID / "s1" / "video").is_dir():
        pytest.skip("../shared/data/grid is not present")
    return SHARED_GRID


# A model small enough to train for a few epochs inside a test (same code path as the student).
TINY_SPEC = {
    "frontend": "shufflenetv2",
    "frontend_args": {"widths": [16, 32, 64], "repeats": [1, 1, 1], "stem": 8, "out_dim": 32},
    "backend": "mstcn",
    "backend_args": {"width": 48, "blocks": 1},
}


def write_params(root: Path, **sections: dict) -> Path:
    """params.yaml under ``root`` with every output path inside ``root`` and the sample as data."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(
        source=str(SAMPLE), raw_dir=str(root / "grid"), prepared_dir=str(root / "prepared"),
        splits=str(ROOT / "data" / "splits" / "grid_s1.json"),
    )  # fmt: skip
    raw["validate"].update(
        data_docs_dir=str(root / "reports" / "docs"), metrics=str(root / "reports" / "dq.json")
    )
    # the tests' tiny models train on CTC alone unless a test turns the alignment aid on
    raw["train"].update(
        out_dir=str(root / "runs" / "train"), epochs=1, batch_size=4, warmup_epochs=0,
        align_weight=0.0,
    )  # fmt: skip
    raw["model"] = {"name": "tiny", "spec": TINY_SPEC}
    raw["lm"]["dir"] = str(root / "runs" / "lm")
    raw["package"] = {"dir": str(root / "runs" / "package")}
    raw["evaluate"] = {"out_dir": str(root / "reports" / "eval")}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> Path:
    """The 20 committed sample clips imported and prepared once per test session (14 train,
    3 val, 3 test); returns the directory holding their params.yaml."""
    from mouthmap import stages
    from mouthmap.config import load_params

    root = tmp_path_factory.mktemp("prepared_sample")
    params = load_params(write_params(root))
    stages.import_corpus(params)
    stages.prepare_corpus(params, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_package(prepared_sample: Path, tmp_path_factory) -> Path:
    """A tiny model trained for one epoch on the sample and exported as a model package."""
    from mouthmap import stages
    from mouthmap.config import load_params
    from mouthmap.train.trainer import train

    root = tmp_path_factory.mktemp("tiny_package")
    params = load_params(
        write_params(root, data={"prepared_dir": str(prepared_sample / "prepared")})
    )
    result = train(params, progress=False)
    return stages.export_model(params, result.best_checkpoint, root / "package").root
