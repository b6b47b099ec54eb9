"""The dashboard's live transcript through a real Triton (the stream model), and its clean
fallback when the server is gone."""

from __future__ import annotations

import pytest

from _serving_fixtures import clip, triton

pytestmark = pytest.mark.integration


def test_the_live_transcript_streams_through_triton_and_ends_with_the_offline_reading(
    tiny_package, tmp_path
):
    from mouthmap.dashboard.analysis import analyse_clip
    from mouthmap.dashboard.live import find_triton, triton_events
    from mouthmap.runtime.transcriber import Transcriber
    from mouthmap.serving.repository import RepoOptions, build_repo

    tr = Transcriber(tiny_package, threads=1)
    a = analyse_clip(clip("pric5a"), tr)
    repo = build_repo(tiny_package, tmp_path / "repo", RepoOptions(ort_threads=1))
    with triton(repo, tmp_path / "state") as ep:
        url, note = find_triton(ep.grpc)
        assert url == ep.grpc and note.startswith("Triton at")
        events = list(triton_events(a.rois, url, fps=None))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "final" and "error" not in kinds
    assert events[-1].text == a.text  # the same package, the same ROIs: the same reading
    assert events[-1].frames == 75
    url, note = find_triton(ep.grpc, timeout=1)  # the server is down now
    assert url is None and "not usable" in note
