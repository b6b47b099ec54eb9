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
