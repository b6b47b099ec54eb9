"""MediaPipe face detection + face mesh run directly in LiteRT (no mediapipe package).

The mediapipe releases that bundle these models pin ``protobuf<5``, which breaks
kfp and tritonclient in the same environment; the ``.tflite`` files themselves
(Apache-2.0, see ``assets/mediapipe/NOTICE.md``) need only a TFLite runtime. We
therefore own the small pre/post-processing MediaPipe's graphs would do:

* BlazeFace short-range (128x128, 896 SSD anchors) finds the face, only when
  there is no track yet or the track was lost;
* the 468-point face landmark model (192x192 crop, rotated so the eyes are
  level, 1.5x the face box) runs on every frame, its crop derived from the
  previous frame's landmarks, like MediaPipe's face mesh. That keeps the cost
  at about one small network per frame.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from mouthmap.data.mouth.base import MouthTrack

__all__ = ["FaceDetection", "FaceMeshTrack", "MediaPipeLocaliser", "model_path"]

DETECTOR_FILE = "face_detection_short_range.tflite"
LANDMARK_FILE = "face_landmark.tflite"

# Face-mesh indices (canonical 468-point topology).
LIP_CORNERS = (61, 291)  # outer lip corners: mouth width
LIP_POINTS = (0, 17, 13, 14, 61, 291, 78, 308)  # outer/inner lip midline + corners: mouth centre
EYE_CORNERS = (33, 263)  # outer eye corners: roll of the landmark crop

_DET_SIZE = 128
_LMK_SIZE = 192
_ROI_SCALE = 1.5  # face box -> landmark crop, as in MediaPipe's graphs


def model_path(name: str) -> Path:
    """Path of a bundled model file (shipped as package data under assets/mediapipe)."""
    ref = resources.files("mouthmap").joinpath("assets", "mediapipe", name)
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; run scripts/fetch_mediapipe_models.sh to extract it"
        )
    return path


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration, when it is safe to.

    LiteRT's C++ logger announces "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on
    fd 2 whenever an interpreter is set up, and has no Python switch or environment variable
    to turn it off, so every ``mouthmap transcribe`` printed it. Hiding fd 2 would also hide
    whatever another thread wrote meanwhile (a server's log), so it is done only while this is
    the process's only Python thread; otherwise the line stays."""
    try:
        saved = os.dup(2) if threading.active_count() == 1 else None
    except OSError:  # no fd 2 at all (a daemon): nothing to hide
        saved = None
    if saved is None:
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter(path: Path, num_threads: int):  # -> Interpreter, imported lazily
    from ai_edge_litert.interpreter import Interpreter

    with _native_stderr_hidden():  # errors still reach the caller as exceptions
        interp = Interpreter(model_path=str(path), num_threads=num_threads)
        interp.allocate_tensors()
    return interp


def ssd_anchors() -> np.ndarray:
    """BlazeFace short-range anchor centres (896, 2), normalised x, y.

    SsdAnchorsCalculator with strides 8,16,16,16, one aspect ratio plus the
    interpolated scale (2 anchors per layer and cell) and fixed anchor size, so
    only the centres matter: 16x16x2 + 8x8x6 = 896.
    """
    strides = [8, 16, 16, 16]
    out: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        stride, n_layers = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            n_layers += 1
            i += 1
        cells = _DET_SIZE // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, 2 * n_layers, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class FaceDetection:
    """One BlazeFace detection in image pixels."""

    box: np.ndarray  # (4,) xmin, ymin, xmax, ymax
    keypoints: np.ndarray  # (6, 2): right eye, left eye, nose, mouth, right ear, left ear
    score: float


@dataclass
class FaceMeshTrack:
    """Landmarks of every frame; NaN where no face was found."""

    points: np.ndarray  # (T, 468, 3) float32, x/y in image pixels
    presence: np.ndarray  # (T,) float32 face-presence score of the landmark model
    found: np.ndarray  # (T,) bool
    detector_runs: int  # how often the (re)detector ran: a cost and stability signal


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _roi_to_affine(cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    """2x3 map from crop pixel indices to image pixel indices for a rotated square."""
    c, s = math.cos(angle), math.sin(angle)
    k = side / _LMK_SIZE
    a = np.array([[c * k, -s * k], [s * k, c * k]])
    # continuous coords: image point = centre + R @ ((u + 0.5) * k - side / 2); index = point - 0.5
    offset = np.array([cx, cy]) - a @ np.full(2, side / (2 * k) - 0.5) - 0.5
    return np.hstack([a, offset[:, None]]).astype(np.float64)


class MediaPipeLocaliser:
    """Mouth from MediaPipe's face landmarks: lip-corner width, lip-midline centre."""

    def __init__(
        self,
        min_detection_score: float = 0.5,
        min_presence: float = 0.5,
        num_threads: int = 1,
    ) -> None:
        self.min_detection_score = min_detection_score
        self.min_presence = min_presence
        self._det = _interpreter(model_path(DETECTOR_FILE), num_threads)
        self._lmk = _interpreter(model_path(LANDMARK_FILE), num_threads)
        self._det_in = self._det.get_input_details()[0]["index"]
        outs = {d["name"]: d["index"] for d in self._det.get_output_details()}
        self._det_boxes, self._det_scores = outs["regressors"], outs["classificators"]
        self._lmk_in = self._lmk.get_input_details()[0]["index"]
        # Two outputs: 1404 landmark values and one face-presence logit; tell them by size.
        for d in self._lmk.get_output_details():
            if int(np.prod(d["shape"])) == 468 * 3:
                self._lmk_points = d["index"]
            else:
                self._lmk_flag = d["index"]
        self._anchors = ssd_anchors()

    # -- detector -----------------------------------------------------------------------
    def detect_face(self, frame_rgb: np.ndarray) -> FaceDetection | None:
        """Best face in the frame (highest score, weighted-NMS merged), or None."""
        h, w = frame_rgb.shape[:2]
        scale = _DET_SIZE / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        px, py = (_DET_SIZE - nw) // 2, (_DET_SIZE - nh) // 2
        canvas = np.zeros((_DET_SIZE, _DET_SIZE, 3), np.float32)
        small = cv2.resize(frame_rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        canvas[py : py + nh, px : px + nw] = small.astype(np.float32) / 127.5 - 1.0
        self._det.set_tensor(self._det_in, canvas[None])
        self._det.invoke()
        raw = self._det.get_tensor(self._det_boxes)[0]
        logits = self._det.get_tensor(self._det_scores)[0, :, 0].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
        keep = np.flatnonzero(scores >= self.min_detection_score)
        if keep.size == 0:
            return None
        raw, scores = raw[keep], scores[keep]
        anchors = self._anchors[keep]
        centre = raw[:, 0:2] / _DET_SIZE + anchors
        size = raw[:, 2:4] / _DET_SIZE
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        kps = raw[:, 4:16].reshape(-1, 6, 2) / _DET_SIZE + anchors[:, None, :]
        # Weighted NMS, best cluster only: average the boxes overlapping the top one.
        top = int(np.argmax(scores))
        cluster = _iou(boxes[top], boxes) > 0.3
        weights = scores[cluster] / scores[cluster].sum()
        box = (boxes[cluster] * weights[:, None]).sum(0)
        kp = (kps[cluster] * weights[:, None, None]).sum(0)
        # Undo the letterbox: normalised 128-canvas -> image pixels.
        to_img = np.array([w / nw, h / nh]) * _DET_SIZE
        pad = np.array([px, py]) / _DET_SIZE
        box_xy = (box.reshape(2, 2) - pad) * to_img
        kp_xy = (kp - pad) * to_img
        return FaceDetection(box_xy.reshape(4), kp_xy.astype(np.float32), float(scores[top]))

    # -- landmarks ----------------------------------------------------------------------
    @staticmethod
    def _roi_from_detection(det: FaceDetection) -> tuple[float, float, float, float]:
        (x0, y0, x1, y1), (re, le) = det.box, det.keypoints[:2]
        angle = math.atan2(le[1] - re[1], le[0] - re[0])
        side = _ROI_SCALE * max(x1 - x0, y1 - y0)
        return (x0 + x1) / 2, (y0 + y1) / 2, side, angle

    @staticmethod
    def _roi_from_landmarks(points: np.ndarray) -> tuple[float, float, float, float]:
        lo, hi = points[:, :2].min(0), points[:, :2].max(0)
        re, le = points[EYE_CORNERS[0], :2], points[EYE_CORNERS[1], :2]
        angle = math.atan2(le[1] - re[1], le[0] - re[0])
        side = _ROI_SCALE * float(max(hi - lo))
        return float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, side, angle

    def _landmarks(
        self, frame_rgb: np.ndarray, roi: tuple[float, float, float, float]
    ) -> tuple[np.ndarray, float]:
        """468 landmarks (image pixels) and the face-presence score inside ``roi``."""
        m = _roi_to_affine(*roi)
        crop = cv2.warpAffine(
            frame_rgb,
            m,
            (_LMK_SIZE, _LMK_SIZE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        self._lmk.set_tensor(self._lmk_in, (crop.astype(np.float32) / 255.0)[None])
        self._lmk.invoke()
        pts = self._lmk.get_tensor(self._lmk_points).reshape(468, 3).astype(np.float64)
        logit = float(self._lmk.get_tensor(self._lmk_flag).reshape(-1)[0])
        presence = 1.0 / (1.0 + math.exp(-max(min(logit, 100.0), -100.0)))
        # Output is in continuous 192-crop coordinates; crop index = value - 0.5.
        xy = (m[:, :2] @ (pts[:, :2] - 0.5).T).T + m[:, 2]
        out = np.empty((468, 3), np.float32)
        out[:, :2] = xy + 0.5  # back to continuous image coordinates
        out[:, 2] = pts[:, 2] * roi[2] / _LMK_SIZE
        return out, presence

    def track_frame(
        self, frame_rgb: np.ndarray, roi: tuple[float, float, float, float] | None
    ) -> tuple[np.ndarray | None, float, tuple[float, float, float, float] | None, int]:
        """One step of the face tracker: ``(landmarks or None, presence, next roi, detector
        runs)``. ``roi`` is the previous step's (None: no track yet, so detect). A live stream
        calls this frame by frame; :meth:`face_mesh` calls it over a clip, so both agree."""
        detector_runs = 0
        tracked = roi is not None
        if roi is None:
            detector_runs += 1
            det = self.detect_face(frame_rgb)
            if det is None:
                return None, 0.0, None, detector_runs
            roi = self._roi_from_detection(det)
        pts, score = self._landmarks(frame_rgb, roi)
        if score < self.min_presence and tracked:
            # The track slipped off the face: look for it again in this frame.
            detector_runs += 1
            det = self.detect_face(frame_rgb)
            if det is not None:
                pts, score = self._landmarks(frame_rgb, self._roi_from_detection(det))
        if score < self.min_presence or not np.isfinite(pts).all():
            return None, score, None, detector_runs
        return pts, score, self._roi_from_landmarks(pts), detector_runs

    def face_mesh(self, frames_rgb: np.ndarray) -> FaceMeshTrack:
        """Track the face through a clip: detect once, then follow the landmarks."""
        n = len(frames_rgb)
        points = np.full((n, 468, 3), np.nan, np.float32)
        presence = np.zeros(n, np.float32)
        found = np.zeros(n, bool)
        roi: tuple[float, float, float, float] | None = None
        detector_runs = 0
        for i, frame in enumerate(frames_rgb):
            pts, presence[i], roi, runs = self.track_frame(frame, roi)
            detector_runs += runs
            if pts is not None:
                points[i], found[i] = pts, True
        return FaceMeshTrack(points, presence, found, detector_runs)

    def locate(self, frames_rgb: np.ndarray) -> MouthTrack:
        mesh = self.face_mesh(frames_rgb)
        return mouth_from_landmarks(mesh.points, mesh.found)


def mouth_from_landmarks(points: np.ndarray, found: np.ndarray) -> MouthTrack:
    """Mouth centre = mean of the lip midline/corner points; width = lip-corner distance."""
    lips = points[:, list(LIP_POINTS), :2]
    corners = points[:, list(LIP_CORNERS), :2]
    track = MouthTrack.empty(len(points))
    track.found = found.copy()
    track.centers[found] = lips[found].mean(1)
    track.widths[found] = np.linalg.norm(corners[found, 1] - corners[found, 0], axis=-1)
    return track
