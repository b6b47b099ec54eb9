"""Data versioned with DVC goes to the stack's S3 and comes back identical in a clone."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from _stack_fixtures import configure_remote, init_repo, run, run_dvc, running_stack, tool_env
from mouthmap.stack import s3_client

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as info:
        yield info


def _clip_source() -> Path:
    for d in (ROOT / "data" / "sample" / "s1", ROOT.parent / "shared" / "data" / "grid" / "s1"):
        if (d / "video").is_dir():
            return d
    pytest.skip("no GRID clips (data/sample or ../shared/data/grid) to version")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dvc_push_then_pull_in_a_fresh_clone_gives_identical_files(tmp_path, s3_stack):
    env = tool_env(s3_stack, tmp_path)
    src = _clip_source()
    prefix = f"roundtrip-{uuid.uuid4().hex[:8]}"

    origin = init_repo(tmp_path / "origin", env)
    configure_remote(origin, s3_stack, prefix, env)
    clips = origin / "data" / "clips"
    for code in ("bbaf2n", "lgaz8p"):
        for sub, ext in (("video", ".mp4"), ("align", ".align")):
            (clips / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / sub / f"{code}{ext}", clips / sub / f"{code}{ext}")
    expected = _files(clips)

    run_dvc(["add", "data/clips"], origin, env)
    run(["git", "add", "-A"], origin, env)
    run(["git", "commit", "-q", "-m", "track clips with DVC"], origin, env)
    run_dvc(["push"], origin, env)

    # the remote holds the objects; the committed config holds no credentials
    listed = s3_client(s3_stack.endpoint_url, s3_stack.credentials).list_objects_v2(
        Bucket="dvc", Prefix=prefix + "/"
    )
    assert listed.get("KeyCount", 0) >= len(expected)
    config = (origin / ".dvc" / "config").read_text()
    assert s3_stack.secret_key not in config and "access_key" not in config

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "data" / "clips").exists()
    run_dvc(["pull"], clone, env)
    assert _files(clone / "data" / "clips") == expected

    # DVC gets its credentials from the environment only: without them the pull fails
    bare = tmp_path / "clone-without-credentials"
    run(["git", "clone", "-q", str(origin), str(bare)], tmp_path, env)
    no_creds = {
        k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    failed = run_dvc(["pull"], bare, no_creds, check=False, timeout=180)
    assert failed.returncode != 0
    assert not (bare / "data" / "clips" / "video" / "bbaf2n.mp4").exists()
