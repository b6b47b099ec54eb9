"""Mouth localisation and ROI cropping: what the lip-reading models get to see."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import real_clips
from mouthmap.data.media import probe_and_decode_video, to_gray
from mouthmap.data.mouth import LOCALISERS, MouthLocaliser, MouthTrack, get_localiser
from mouthmap.data.mouth.mediapipe_lite import LIP_CORNERS, MediaPipeLocaliser
from mouthmap.data.roi import NoMouthError, crop_rois, extract_mouth_rois, smooth_track


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [probe_and_decode_video(p).frames for p in real_clips(3)]


@pytest.fixture(scope="module")
def mediapipe() -> MediaPipeLocaliser:
    return get_localiser("mediapipe")  # type: ignore[return-value]


def synthetic_frames(kind: str, n: int = 6, h: int = 288, w: int = 360) -> np.ndarray:
    if kind == "blank":
        return np.full((n, h, w, 3), 128, np.uint8)
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# -- localisers ----------------------------------------------------------------------------


def test_localisers_are_chosen_by_name_and_unknown_names_list_the_known_ones() -> None:
    assert {"mediapipe", "haar"} <= set(LOCALISERS)
    with pytest.raises(ValueError, match=r"'dlib'.*haar.*mediapipe"):
        get_localiser("dlib")


def test_mediapipe_finds_the_mouth_in_almost_every_frame_of_real_clips(clips, mediapipe):
    for frames in clips:
        track = mediapipe.locate(frames)
        assert isinstance(mediapipe, MouthLocaliser)
        assert len(track) == len(frames)
        assert track.found_ratio >= 0.98
        assert track.centers.dtype == np.float32 and track.widths.dtype == np.float32


def test_mediapipe_mouth_sits_on_the_lips_below_the_face_centre(clips, mediapipe):
    frames = clips[0]
    det = mediapipe.detect_face(frames[0])
    assert det is not None and det.score > 0.5
    mesh = mediapipe.face_mesh(frames)
    track = mediapipe.locate(frames)
    face_cx, face_cy = (det.box[:2] + det.box[2:]) / 2
    face_w = det.box[2] - det.box[0]
    upper_lip, lower_lip = mesh.points[:, 0, 1], mesh.points[:, 17, 1]
    left, right = mesh.points[:, LIP_CORNERS[0], 0], mesh.points[:, LIP_CORNERS[1], 0]
    cx, cy = track.centers[:, 0], track.centers[:, 1]
    assert (cy > face_cy).all()  # below the face centre (the nose)
    assert ((cy > upper_lip) & (cy < lower_lip)).all()  # between the lips
    assert ((cx > left) & (cx < right)).all()  # between the lip corners
    assert np.abs(cx - face_cx).max() < 0.15 * face_w  # frontal face: mouth under the nose
    # the lip-corner distance of an adult face is about a third of the face box
    assert (0.2 * face_w < track.widths).all() and (track.widths < 0.5 * face_w).all()


def test_mediapipe_tracks_a_steady_face_with_one_detection_per_clip(clips, mediapipe):
    mesh = mediapipe.face_mesh(clips[1])
    assert mesh.found.all()
    assert mesh.detector_runs == 1  # landmarks carry the track: about one network per frame


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_video_without_a_face_finds_no_mouth_and_cannot_be_cropped(kind, mediapipe):
    frames = synthetic_frames(kind)
    track = mediapipe.locate(frames)
    assert not track.found.any()
    with pytest.raises(NoMouthError):
        smooth_track(track, 5)
    with pytest.raises(NoMouthError):
        extract_mouth_rois(frames, mediapipe, 96, 1.8, 5)


def test_haar_fallback_finds_the_face_and_agrees_with_mediapipe(clips, mediapipe):
    frames = clips[0][::8]
    haar = get_localiser("haar").locate(frames)
    assert haar.found_ratio >= 0.9
    mp = mediapipe.locate(frames)
    both = haar.found & mp.found
    dist = np.linalg.norm(haar.centers[both] - mp.centers[both], axis=1)
    assert (dist < 0.5 * mp.widths[both]).all()  # within half a mouth width
    assert np.allclose(haar.widths[both], mp.widths[both], rtol=0.3)


# -- smoothing and cropping ----------------------------------------------------------------


def test_missing_frames_are_filled_from_their_neighbours() -> None:
    track = MouthTrack(
        centers=[[10, 20], [0, 0], [0, 0], [40, 50], [0, 0]],
        widths=[10, 0, 0, 40, 0],
        found=[True, False, False, True, False],
    )
    out = smooth_track(track, window=1)
    np.testing.assert_allclose(out.centers[:, 0], [10, 20, 30, 40, 40])
    np.testing.assert_allclose(out.widths, [10, 20, 30, 40, 40])
    assert out.found.tolist() == track.found.tolist()  # measured vs filled stays visible


def test_smoothing_removes_frame_to_frame_jitter_but_keeps_length() -> None:
    rng = np.random.default_rng(0)
    n = 75
    centers = np.stack([180 + rng.normal(0, 2, n), 220 + rng.normal(0, 2, n)], 1)
    track = MouthTrack(centers=centers, widths=40 + rng.normal(0, 2, n), found=np.ones(n, bool))
    out = smooth_track(track, window=7)
    assert len(out) == n
    assert np.diff(out.centers[:, 0]).std() < 0.5 * np.diff(track.centers[:, 0]).std()
    assert abs(out.centers[:, 0].mean() - track.centers[:, 0].mean()) < 1.0


def test_roi_is_centred_on_the_mouth_and_scaled_by_its_width() -> None:
    gray = np.full((3, 288, 360), 200, np.uint8)
    gray[:, 195:205, 145:155] = 0  # a dark 10x10 "mouth" centred at (150, 200)
    track = MouthTrack(
        centers=np.tile([150.0, 200.0], (3, 1)), widths=np.full(3, 20.0), found=np.ones(3, bool)
    )
    rois = crop_rois(gray, track, size=96, scale=2.0)  # side 40 px -> dark square ~24 px
    assert rois.shape == (3, 96, 96) and rois.dtype == np.uint8
    assert rois[0, 40:56, 40:56].max() < 20  # centre is dark
    assert rois[0, :30].min() > 180 and rois[0, -30:].min() > 180  # margins are not


def test_crop_at_or_beyond_the_image_border_does_not_crash() -> None:
    gray = to_gray(synthetic_frames("noise", n=4, h=60, w=80))
    track = MouthTrack(
        centers=[[0, 0], [80, 60], [-500, 30], [40, 30]],
        widths=[30, 30, 30, 200],  # the last square is larger than the image
        found=np.ones(4, bool),
    )
    rois = crop_rois(gray, track, size=96, scale=1.8)
    assert rois.shape == (4, 96, 96) and rois.dtype == np.uint8


def test_prepare_gives_a_96px_roi_per_frame_of_a_real_clip(clips, mediapipe) -> None:
    frames = clips[2]
    rois, raw = extract_mouth_rois(frames, mediapipe, size=96, scale=1.8, smooth_frames=7)
    assert rois.shape == (len(frames), 96, 96) and rois.dtype == np.uint8
    assert raw.found_ratio >= 0.98
    # lips are darker than the skin around them: the middle band beats the bottom band
    assert rois[:, 40:56, 24:72].mean() < rois[:, 80:, 24:72].mean()


# -- what a user sees on the terminal ------------------------------------------------------

_INTERPRETER_SCRIPT = """
import sys, threading
from mouthmap.data.mouth.mediapipe_lite import DETECTOR_FILE, _interpreter, model_path
if sys.argv[1] == "busy":  # another thread alive, as in a server: fd 2 must stay untouched
    threading.Thread(target=threading.Event().wait, daemon=True).start()
if sys.argv[1] == "closed":  # a daemon without fd 2 must still get its interpreter
    import os
    os.close(2)
    _interpreter(model_path(DETECTOR_FILE), 1)
    print("still here")
    sys.exit(0)
_interpreter(model_path(DETECTOR_FILE), 1)
print("still here", file=sys.stderr)
"""


def test_transcribe_prints_no_litert_info_line() -> None:
    """LiteRT logs its XNNPACK delegate on fd 2 from C++; `mouthmap transcribe` hides it."""
    import subprocess
    import sys

    from conftest import ROOT, SAMPLE

    clip = SAMPLE / "s1/video/bbaf2n.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "mouthmap", "transcribe", str(clip)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{clip}: ") and len(proc.stdout.split(": ")[1].split()) == 6
    assert "XNNPACK" not in proc.stderr and "INFO" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("threads", ["alone", "busy", "closed"])
def test_stderr_is_hidden_only_while_no_other_thread_could_write(threads: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_SCRIPT, threads],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    if threads == "closed":
        assert proc.stdout == "still here\n"
        return
    assert proc.stderr.endswith("still here\n")  # fd 2 restored afterwards
    assert ("XNNPACK" in proc.stderr) == (threads == "busy")
