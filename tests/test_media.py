"""Decoding real and broken clips: what the prepare stage and a user's upload go through."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from conftest import real_clips
from mouthmap.data.media import MediaError, decode_audio, probe_and_decode_video, to_gray


@pytest.fixture(scope="module")
def clip_path() -> Path:
    return real_clips(1)[0]


def write_silent_video(path: Path, n_frames: int = 10) -> None:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(n_frames):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


def test_real_clip_decodes_to_75_rgb_frames_at_25_fps(clip_path: Path) -> None:
    clip = probe_and_decode_video(clip_path)
    assert 74 <= clip.n_frames <= 75
    assert clip.fps == pytest.approx(25.0)
    assert clip.frames.shape[1:] == (288, 360, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.path == clip_path


def test_real_clip_audio_is_three_seconds_of_mono_float(clip_path: Path) -> None:
    audio = decode_audio(clip_path, sample_rate=16000)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert len(audio) / 16000 == pytest.approx(3.0, abs=0.1)
    assert np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 0.01  # not silence: the speaker is audible


def test_audio_resamples_to_the_requested_rate(clip_path: Path) -> None:
    audio = decode_audio(clip_path, sample_rate=8000)
    assert len(audio) / 8000 == pytest.approx(3.0, abs=0.1)


def test_truncated_clip_raises_media_error_naming_the_file(clip_path: Path, tmp_path: Path):
    broken = tmp_path / "truncated.mp4"
    broken.write_bytes(clip_path.read_bytes()[:2048])
    with pytest.raises(MediaError, match="truncated.mp4"):
        probe_and_decode_video(broken)


def test_half_downloaded_clip_keeps_the_frames_before_the_break(clip_path: Path, tmp_path: Path):
    data = clip_path.read_bytes()
    partial = tmp_path / "partial.mp4"
    partial.write_bytes(data[: len(data) // 2])
    clip = probe_and_decode_video(partial)
    assert 0 < clip.n_frames < 75


def test_text_file_raises_media_error_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(MediaError, match=r"notes\.mp4.*not a readable"):
        probe_and_decode_video(text)
    with pytest.raises(MediaError, match="notes.mp4"):
        decode_audio(text)


def test_missing_and_empty_files_raise_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="does not exist"):
        probe_and_decode_video(tmp_path / "nope.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(MediaError, match="empty"):
        probe_and_decode_video(empty)


def test_video_without_audio_decodes_but_has_no_audio(tmp_path: Path) -> None:
    silent = tmp_path / "silent.mp4"
    write_silent_video(silent, n_frames=10)
    clip = probe_and_decode_video(silent)
    assert clip.frames.shape == (10, 48, 64, 3)
    assert clip.fps == pytest.approx(25.0)
    with pytest.raises(MediaError, match=r"silent\.mp4.*no audio stream"):
        decode_audio(silent)


def test_gray_conversion_keeps_frames_and_uses_luma_weights() -> None:
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[0, ..., 1] = 255  # pure green is bright in luma
    frames[1, ..., 2] = 255  # pure blue is dark
    gray = to_gray(frames)
    assert gray.shape == (2, 4, 5) and gray.dtype == np.uint8
    assert gray[0].mean() == pytest.approx(150, abs=2)
    assert gray[1].mean() == pytest.approx(29, abs=2)
    with pytest.raises(ValueError):
        to_gray(np.zeros((4, 5, 3), np.uint8))
